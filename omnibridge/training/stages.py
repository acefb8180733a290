"""Run the training stages in order; each reads what the previous ones wrote to the work dir.

    <work_dir>/decoder/     stage 0 output (diffusers layout)
    <work_dir>/model/       the whole model in our layout, rewritten after stages 1-3
    <work_dir>/<stage>/     each stage's resumable state.pt and log.jsonl
    <work_dir>/commands.jsonl  every training command run on this work dir, in order

Stage order: decoder, llm (stage 1), vision (stage 1b: the vision tower alone), align (stage 2),
retrieval (stage 3), package.

The decoder is frozen from stage 1 on, but a decoder trained further (a later `--resume` of stage
0) changes the T5 targets, so stages 2 and 3 must then run again; `stages.json` records which
decoder each alignment was trained against. A DiT trained with `--decoder-from` keeps the text
encoders frozen, so the targets, and the alignment, stay as they were.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import torch

from ..modeling.config import OmniBridgeConfig
from ..modeling.decoder import HunyuanDecoder
from ..modeling.devices import Placement
from ..modeling.loading import LoadedModel, load_our_layout, save_our_layout
from .align_stage import train_alignment
from .assemble import build_untrained_model
from .builders import build_decoder, decoder_for_new_dit_training
from .decoder_stage import train_dit, train_vae, vae_fidelity
from .llm_stage import train_llm
from .presets import TrainPreset
from .retrieval_stage import train_retrieval
from .vision_stage import train_vision

CPU = Placement(torch.device("cpu"), torch.float32, torch.float32)


COMMANDS_FILE = "commands.jsonl"


def record_command(work_dir: Path, argv: list[str]) -> None:
    """Append this run's command line to the work dir's history: a checkpoint is usually several
    resumed runs with different step counts, and its model card lists them as its recipe."""
    entry = {"command": shlex.join(["python", "-m", "omnibridge.train", *argv]),
             "started": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    with (Path(work_dir) / COMMANDS_FILE).open("a") as handle:
        handle.write(json.dumps(entry) + "\n")


def decoder_dir(work_dir: Path) -> Path:
    return Path(work_dir) / "decoder"


def model_dir(work_dir: Path) -> Path:
    return Path(work_dir) / "model"


@dataclass
class DecoderRunOptions:
    """How this run trains stage 0 (none of it changes the model's shape)."""

    minutes: float | None = None  # None: the preset's budget
    start_from: Path | None = None  # a trained decoder: its VAE and text encoders frozen, its DiT trained on
    data_workers: int = 0  # processes rendering batches ahead (worth it on a GPU)


def run_decoder_stage(preset: TrainPreset, work_dir: Path, resume: bool, seed: int, device: torch.device,
                      options: DecoderRunOptions) -> dict:
    if options.start_from:
        decoder, kept_dit = decoder_for_new_dit_training(options.start_from, preset.decoder)
        vae_report = {"kept_from": str(options.start_from), "dit_trained_on": kept_dit, **vae_fidelity(decoder)}
    else:
        decoder = build_decoder(preset.decoder)
        vae_report = train_vae(decoder, preset.decoder, work_dir, seed, resume)
    decoder.to(device)
    decoder, dit_report = train_dit(decoder, preset.decoder, work_dir, seed, resume, options.minutes,
                                    freeze_text_encoders=options.start_from is not None,
                                    data_workers=options.data_workers,
                                    trained_before=bool(options.start_from and kept_dit))
    decoder.to("cpu").save_pretrained(decoder_dir(work_dir))
    return {"vae": vae_report, "dit": dit_report}


def load_trained_decoder(work_dir: Path) -> HunyuanDecoder:
    path = decoder_dir(work_dir)
    if not (path / "model_index.json").exists():
        raise FileNotFoundError(f"no trained decoder in {path}: run the 'decoder' stage first")
    return HunyuanDecoder.from_pretrained(path)


def _stage_record(work_dir: Path) -> dict:
    path = model_dir(work_dir) / "stages.json"
    return json.loads(path.read_text()) if path.exists() else {}


def _load_model(preset: TrainPreset, work_dir: Path, seed: int, need_decoder: bool) -> LoadedModel:
    """The model so far, around the newest trained decoder.

    Stage 1 does not touch the decoder, so it may run before (or beside) stage 0 around an
    untrained decoder of the right shape; the later stages swap in the trained one.
    """
    if need_decoder or (decoder_dir(work_dir) / "model_index.json").exists():
        decoder = load_trained_decoder(work_dir)
    else:
        decoder = build_decoder(preset.decoder)
    if (model_dir(work_dir) / "omnibridge_config.json").exists():
        model = load_our_layout(model_dir(work_dir), CPU)
        model.decoder = decoder
        return model
    return build_untrained_model(preset, decoder, seed)


def _save_model(model: LoadedModel, work_dir: Path, finished: str, report: dict) -> None:
    record = _stage_record(work_dir)
    dit = training_summary(work_dir).get("dit", {})
    record[finished] = {**report, "decoder_dit_steps": dit.get("steps")}
    save_our_layout(model, model_dir(work_dir))
    (model_dir(work_dir) / "stages.json").write_text(json.dumps(record, indent=2))


def run_stages(preset: TrainPreset, out: Path, work_dir: Path, stages: list[str], resume: bool, seed: int,
               device: torch.device, decoder_options: DecoderRunOptions | None = None,
               fresh_align: bool = False) -> dict:
    report: dict = {"preset": preset.name}
    if "decoder" in stages:
        report["decoder"] = run_decoder_stage(preset, work_dir, resume, seed, device,
                                              decoder_options or DecoderRunOptions())
    trainers = {
        "llm": lambda model: train_llm(model, preset.llm, work_dir, seed, resume,
                                       keep_eye="vision" in _stage_record(work_dir)),
        "vision": lambda model: train_vision(model, preset.llm, work_dir, seed, resume),
        "align": lambda model: train_alignment(model, preset.align, work_dir, seed, resume, fresh_align),
        "retrieval": lambda model: train_retrieval(model, preset.align, work_dir, seed, resume),
    }
    for stage, trainer in trainers.items():
        if stage in stages:
            model = _load_model(preset, work_dir, seed, need_decoder=stage not in ("llm", "vision"))
            report[stage] = trainer(model)
            _save_model(model, work_dir, stage, report[stage])
    if "package" in stages:
        report["package"] = package(work_dir, out, half=preset.package_half)
    return report


def training_summary(work_dir: Path) -> dict:
    """Each stage's steps, training seconds, images seen, loss first -> last, and the decoder's eval curve,
    read back from the stage logs (so it covers every resumed run); and the commands run in the work dir."""
    summary = {}
    for stage in ("vae", "dit", "distill", "llm", "vision", "align", "retrieval"):
        path = Path(work_dir) / stage / "log.jsonl"
        if not path.exists():
            continue
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        losses = [r["loss"] for r in rows if "loss" in r]
        last = rows[-1]
        entry = {"steps": last["step"], "seconds": last["seconds"], "images_seen": last["images_seen"]}
        if losses:
            window = max(1, min(5, len(losses) // 4))
            entry["first_loss"] = round(sum(losses[:window]) / window, 5)
            entry["last_loss"] = round(sum(losses[-window:]) / window, 5)
        # a resumed run re-evaluates the step it stopped at: keep one entry per step
        evals = list({r["step"]: r for r in rows if r.get("event") == "eval"}.values())
        if evals:
            entry["eval_curve"] = [{"step": r["step"], "seconds": r["seconds"], "overall": r["overall"],
                                    "right_object_count": r.get("right_object_count"),
                                    "n_prompts": r.get("n_prompts")} for r in evals]
        done = [r for r in rows if r.get("event") == "done"]
        if done:
            entry.update({k: v for k, v in done[-1].items() if k not in ("stage", "step", "seconds", "images_seen",
                                                                          "event")})
        summary[stage] = entry
    commands = Path(work_dir) / COMMANDS_FILE
    if commands.exists():
        summary["commands"] = [json.loads(line) for line in commands.read_text().splitlines() if line.strip()]
    return summary


def store_half(path: Path, keep: Callable[[str], bool] = lambda key: False) -> None:
    """Rewrite a safetensors file with its floating-point tensors in float16 (any beyond float16's range kept,
    and any whose key `keep` accepts)."""
    from safetensors.torch import load_file, save_file

    def halved(key: str, tensor: torch.Tensor) -> torch.Tensor:
        if not tensor.is_floating_point() or keep(key) or (
                tensor.numel() and tensor.abs().max() >= torch.finfo(torch.float16).max):
            return tensor
        return tensor.to(torch.float16)

    save_file({key: halved(key, tensor).contiguous() for key, tensor in load_file(path).items()}, path,
              metadata={"format": "pt"})


def frozen_trunk(feature_layers: int | None) -> Callable[[str], bool]:
    """Which language-model tensors an answer-layer model keeps exactly: all but its answer layers. The BiLM and
    the retrieval heads were trained on the frozen layers' states, so rounding those would move them."""
    if feature_layers is None:
        return lambda key: False

    def frozen(key: str) -> bool:
        layer = re.search(r"(?:^|\.)layers\.(\d+)\.", key)
        return layer is None or int(layer.group(1)) < feature_layers

    return frozen


def package(work_dir: Path, out: Path, half: bool = False) -> dict:
    """Copy the finished model to `out`, with its training summary (the model card comes from evaluation);
    `half` stores the language model's and decoder's weights in float16 (the alignment stays float32, and so
    do the frozen layers under answer layers)."""
    source = model_dir(work_dir)
    if not (source / "omnibridge_config.json").exists():
        raise FileNotFoundError(f"nothing to package in {source}: run the llm/align/retrieval stages first")
    out = Path(out)
    tmp = out.with_name(out.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    shutil.copytree(source, tmp, ignore=shutil.ignore_patterns("stages.json"))
    (tmp / "training_report.json").write_text(json.dumps(training_summary(work_dir), indent=2))
    if half:
        frozen = frozen_trunk(OmniBridgeConfig.load(tmp / "omnibridge_config.json").feature_layers)
        for weights in tmp.glob("llm/*.safetensors"):
            store_half(weights, keep=frozen)
        for weights in tmp.glob("decoder/*/*.safetensors"):
            store_half(weights)
    if out.exists():
        for kept in ("README.md", "evaluation.json"):
            if (out / kept).exists():
                shutil.copy(out / kept, tmp / kept)
        shutil.rmtree(out)
    tmp.rename(out)
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    return {"out": str(out), "megabytes": round(size / 2**20, 2)}
