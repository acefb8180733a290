"""OmniBridge Studio: `python app.py` serves the demo on http://127.0.0.1:7860.

One OmniBridgePipeline is built once, on the best device (CUDA, else MPS, else CPU), and every tab
uses it. Options: --model/OMNIBRIDGE_MODEL (default: the built-in assets/omnibridge-shapes),
--device, --max-gpu-memory, --quantize, --host, --port, --data-dir, --share (off by default); see README.md.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home (set before importing gradio)
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from omnibridge import ModelFolderError, OffloadError, OmniBridgePipeline, PlacementError  # noqa: E402
from omnibridge.config import AppSettings  # noqa: E402
from omnibridge.ui.app import build_demo, launch  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    settings = AppSettings.from_args(argv)
    try:
        pipeline = OmniBridgePipeline.from_pretrained(settings.model, device=settings.device, dtype=settings.dtype,
                                                      decoder=settings.decoder, quantization=settings.quantize,
                                                      max_gpu_memory_gb=settings.max_gpu_memory)
        demo = build_demo(pipeline, settings)  # loads --compare-model, if given
    except (ModelFolderError, OffloadError, PlacementError) as error:
        print(f"OmniBridge Studio cannot start: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    launch(demo, settings)


if __name__ == "__main__":
    main()
