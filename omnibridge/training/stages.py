"""Run the training stages in order; each reads what the previous ones wrote to the work dir."""

from __future__ import annotations

from pathlib import Path

import torch

from ..modeling.decoder import HunyuanDecoder
from .builders import build_decoder
from .decoder_stage import train_dit, train_vae
from .presets import TrainPreset


def decoder_dir(work_dir: Path) -> Path:
    return Path(work_dir) / "decoder"


def run_decoder_stage(preset: TrainPreset, work_dir: Path, resume: bool, seed: int, device: torch.device,
                      minutes: float | None) -> dict:
    decoder = build_decoder(preset.decoder)
    vae_report = train_vae(decoder, preset.decoder, work_dir, seed, resume)
    decoder.to(device)
    decoder, dit_report = train_dit(decoder, preset.decoder, work_dir, seed, resume, minutes)
    decoder.to("cpu").save_pretrained(decoder_dir(work_dir))
    return {"vae": vae_report, "dit": dit_report}


def load_trained_decoder(work_dir: Path) -> HunyuanDecoder:
    path = decoder_dir(work_dir)
    if not (path / "model_index.json").exists():
        raise FileNotFoundError(f"no trained decoder in {path}: run the 'decoder' stage first")
    return HunyuanDecoder.from_pretrained(path)


def run_stages(preset: TrainPreset, out: Path, work_dir: Path, stages: list[str], resume: bool, seed: int,
               device: torch.device, decoder_minutes: float | None = None) -> dict:
    report: dict = {"preset": preset.name}
    if "decoder" in stages:
        report["decoder"] = run_decoder_stage(preset, work_dir, resume, seed, device, decoder_minutes)
    return report
