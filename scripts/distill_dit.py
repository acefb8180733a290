"""Distil the shipped DiT into a few-step student (omnibridge/training/distill_stage.py) and save it where
scripts/swap_dit.py looks for a new DiT (`<work-dir>/decoder/transformer`).

    PYTHONPATH=. HF_HUB_OFFLINE=1 python scripts/distill_dit.py --work-dir runs/distill --minutes 60
    PYTHONPATH=. HF_HUB_OFFLINE=1 python scripts/distill_dit.py --work-dir runs/distill --minutes 30 --resume
"""

from __future__ import annotations

import argparse
import json
from dataclasses import fields
from pathlib import Path

from omnibridge.modeling.decoder import HunyuanDecoder
from omnibridge.training.distill_stage import DistillConfig, distill_dit
from omnibridge.training.stages import decoder_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=Path("assets/omnibridge-shapes"))
    parser.add_argument("--work-dir", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=31)
    parser.add_argument("--resume", action="store_true")
    for field in fields(DistillConfig):
        parser.add_argument(f"--{field.name.replace('_', '-')}", type=type(field.default), default=field.default)
    args = parser.parse_args()
    config = DistillConfig(**{field.name: getattr(args, field.name) for field in fields(DistillConfig)})

    teacher = HunyuanDecoder.from_pretrained(args.model / "decoder")
    student, summary = distill_dit(teacher, config, args.work_dir, args.seed, args.resume)
    out = decoder_dir(args.work_dir) / "transformer"
    student.save_pretrained(out)
    (args.work_dir / "distill" / "config.json").write_text(json.dumps(vars(config), indent=2))
    print(json.dumps({**summary, "student": str(out)}))


if __name__ == "__main__":
    main()
