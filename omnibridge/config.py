"""Runtime settings of the app, from command-line flags and environment variables (flags win)."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from pathlib import Path

from .modeling.devices import QUANTIZATIONS

DEFAULT_MODEL = "assets/omnibridge-shapes"


def _env_bool(name: str, default: bool = False) -> bool:
    value = os.environ.get(name)
    return default if value is None else value.strip().lower() in ("1", "true", "yes", "on")


def _env_float(name: str) -> float | None:
    value = os.environ.get(name)
    return float(value) if value else None


@dataclass
class AppSettings:
    model: str = DEFAULT_MODEL  # our folder, the official release folder or a hub id
    decoder: str | None = None  # HunyuanDiT-v1.2 diffusers folder/id, for the official release
    device: str | None = None  # cuda, mps or cpu (default: the best available)
    dtype: str | None = None
    host: str = "127.0.0.1"  # local only unless told otherwise
    port: int = 7860
    share: bool = False
    data_dir: Path = Path("data")
    chroma_url: str | None = None  # a Chroma server (`chroma run`) instead of the embedded store
    feedback_repo: str | None = None  # a HF dataset to push feedback to (on Spaces)
    hf_token: str | None = field(default=None, repr=False)
    max_file_size: str = "10mb"
    max_image_pixels: int = 40_000_000
    queue_size: int = 32
    seed_gallery: int = 300  # built-in scenes indexed on first start
    compare_model: str | None = None  # a second checkpoint for the Compare tab
    compile: bool = False  # torch.compile the DiT's blocks (off by default; not on ZeroGPU)
    onnx_dit: bool = True  # on a CPU, the DiT under ONNX Runtime
    dit_int8: bool = True  # ... its matrix products in int8 (x0.69 an image; float32 gives PyTorch's pixels)
    max_gpu_memory: float | None = None  # GiB of weights kept on the GPU (model offload); None: the whole model
    quantize: str | None = None  # "8bit" or "4bit": the LLM's weights in bitsandbytes formats

    @classmethod
    def from_env(cls) -> "AppSettings":
        return cls(
            model=os.environ.get("OMNIBRIDGE_MODEL", DEFAULT_MODEL),
            decoder=os.environ.get("OMNIBRIDGE_DECODER") or None,
            device=os.environ.get("OMNIBRIDGE_DEVICE") or None,
            dtype=os.environ.get("OMNIBRIDGE_DTYPE") or None,
            host=os.environ.get("OMNIBRIDGE_HOST", os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1")),
            port=int(os.environ.get("OMNIBRIDGE_PORT", os.environ.get("GRADIO_SERVER_PORT", 7860))),
            share=_env_bool("OMNIBRIDGE_SHARE"),
            data_dir=Path(os.environ.get("OMNIBRIDGE_DATA_DIR", "data")),
            chroma_url=os.environ.get("OMNIBRIDGE_CHROMA_URL") or None,
            feedback_repo=os.environ.get("OMNIBRIDGE_FEEDBACK_REPO") or None,
            hf_token=os.environ.get("HF_TOKEN") or None,
            max_file_size=os.environ.get("OMNIBRIDGE_MAX_FILE_SIZE", "10mb"),
            max_image_pixels=int(os.environ.get("OMNIBRIDGE_MAX_IMAGE_PIXELS", 40_000_000)),
            queue_size=int(os.environ.get("OMNIBRIDGE_QUEUE_SIZE", 32)),
            seed_gallery=int(os.environ.get("OMNIBRIDGE_SEED_GALLERY", 300)),
            compare_model=os.environ.get("OMNIBRIDGE_COMPARE_MODEL") or None,
            compile=_env_bool("OMNIBRIDGE_COMPILE"),
            onnx_dit=_env_bool("OMNIBRIDGE_ONNX_DIT", default=True),
            dit_int8=_env_bool("OMNIBRIDGE_DIT_INT8", default=True),
            max_gpu_memory=_env_float("OMNIBRIDGE_MAX_GPU_MEMORY"),
            quantize=os.environ.get("OMNIBRIDGE_QUANTIZE") or None,
        )

    @classmethod
    def from_args(cls, argv: list[str] | None = None) -> "AppSettings":
        settings = cls.from_env()
        parser = argparse.ArgumentParser(description="OmniBridge Studio")
        parser.add_argument("--model", default=settings.model, help="model folder or hub id (OMNIBRIDGE_MODEL)")
        parser.add_argument("--decoder", default=settings.decoder, help="HunyuanDiT folder/id for the official model")
        parser.add_argument("--device", default=settings.device, help="cuda, mps or cpu (OMNIBRIDGE_DEVICE)")
        parser.add_argument("--dtype", default=settings.dtype, help="float32, bfloat16 or float16")
        parser.add_argument("--host", default=settings.host, help="bind address (default 127.0.0.1)")
        parser.add_argument("--port", type=int, default=settings.port)
        parser.add_argument("--data-dir", default=str(settings.data_dir), help="gallery, feedback and caches")
        parser.add_argument("--share", action="store_true", default=settings.share, help="public Gradio link")
        parser.add_argument("--seed-gallery", type=int, default=settings.seed_gallery)
        parser.add_argument("--compare-model", default=settings.compare_model)
        parser.add_argument("--compile", action="store_true", default=settings.compile,
                            help="torch.compile the DiT's blocks (the first image waits for the compiler, then faster images)")
        parser.add_argument("--no-onnx-dit", dest="onnx_dit", action="store_false", default=settings.onnx_dit,
                            help="on a CPU, keep the DiT in PyTorch instead of ONNX Runtime (OMNIBRIDGE_ONNX_DIT=0)")
        parser.add_argument("--float32-dit", dest="dit_int8", action="store_false", default=settings.dit_int8,
                            help="under ONNX Runtime, keep the DiT's matrix products in float32 instead of int8: "
                                 "PyTorch's pixels, about 1.45x the time (OMNIBRIDGE_DIT_INT8=0)")
        parser.add_argument("--max-gpu-memory", type=float, default=settings.max_gpu_memory, metavar="GB",
                            help="for a GPU smaller than the model: keep at most GB GiB of weights on it, moving "
                                 "each part there as it runs (OMNIBRIDGE_MAX_GPU_MEMORY)")
        parser.add_argument("--quantize", default=settings.quantize, choices=QUANTIZATIONS,
                            help="for a GPU smaller than the model: the language model's weights in 8-bit or "
                                 "4-bit (NF4) with bitsandbytes (OMNIBRIDGE_QUANTIZE)")
        args = parser.parse_args(argv)
        settings.model, settings.decoder, settings.device, settings.dtype = args.model, args.decoder, args.device, args.dtype
        settings.host, settings.port, settings.share = args.host, args.port, args.share
        settings.data_dir, settings.seed_gallery = Path(args.data_dir), args.seed_gallery
        settings.compare_model, settings.compile, settings.onnx_dit = args.compare_model, args.compile, args.onnx_dit
        settings.max_gpu_memory, settings.quantize = args.max_gpu_memory, args.quantize
        settings.dit_int8 = args.dit_int8
        return settings
