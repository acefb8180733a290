"""Build a candidate model folder that differs from a shipped one only in its DiT, and evaluate what a DiT can move.

A DiT trained on with `--decoder-from` (the VAE and both text encoders frozen) can replace the shipped one
without retraining anything else: the alignment was trained against the frozen text encoders, not the DiT.
This script copies the model folder, puts the new transformer in (float16, as the shipped one is stored),
checks that every other file is byte-identical to the shipped one (so understanding and retrieval cannot have
moved), records the DiT's training in training_report.json, evaluates generation and editing on the held-out
sets, and writes evaluation.json and the model card with the shipped understanding, retrieval and speed rows
kept. `--blend a` puts in (1 - a) * shipped + a * new instead, tensor by tensor: two DiTs trained from the same
weights can be averaged (WiSE-FT, Wortsman et al. 2022), which often keeps what the first did well and most of
what the training added. `--screen` only prints the decoder-alone check that the decoder stage runs after its
last step (the 150 validation prompts), for choosing `a` without touching the held-out sets.
A DiT that samples differently (a distilled one: scripts/distill_dit.py) brings its own defaults: `--generation
sampler=ddim --generation num_inference_steps=8 --generation guidance_scale=1` writes them into the candidate's
`omnibridge_config.json`, and that file may then differ from the shipped one in those keys alone.

    PYTHONPATH=. python scripts/swap_dit.py --model assets/omnibridge-shapes --work-dir runs/ditcool/W \
        --out runs/ditcool/cand --stage dit_cooldown --note "..." --command "python -m omnibridge.train ..."
"""

from __future__ import annotations

import argparse
import filecmp
import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from omnibridge.evaluation.evaluate import format_table, run_evaluation
from omnibridge.evaluation.generation import VALIDATION_SEED, evaluate_generation, generation_cases
from omnibridge.evaluation.model_card import write_model_card
from omnibridge.modeling.decoder import HunyuanDecoder
from omnibridge.pipeline import OmniBridgePipeline
from omnibridge.training.decoder_stage import decoder_alone_generator
from omnibridge.training.presets import get_preset
from omnibridge.training.stages import decoder_dir, store_half, training_summary

TRANSFORMER = Path("decoder") / "transformer"
# Written by this script, so they may differ from the shipped folder's.
REWRITTEN = {"README.md", "evaluation.json", "training_report.json"}
CONFIG = "omnibridge_config.json"


def build_candidate(model: Path, work_dir: Path, out: Path, blend: float = 1.0) -> None:
    """`out` = `model` with the work dir's DiT in, or (1 - blend) * the model's DiT + blend * the new one."""
    if not 0.0 <= blend <= 1.0:
        raise ValueError(f"--blend is the new DiT's share, from 0 to 1, not {blend}")
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(model, out)
    new_transformer = decoder_dir(work_dir) / "transformer"
    if not (new_transformer / "config.json").exists():
        raise FileNotFoundError(f"no trained transformer in {new_transformer}")
    if _architecture(new_transformer) == _architecture(model / TRANSFORMER):
        # the same DiT retrained: its weights alone, so the shipped config (free of the work dir's
        # "_name_or_path") stays as it was
        for weights in new_transformer.glob("*.safetensors"):
            shutil.copyfile(weights, out / TRANSFORMER / weights.name)
    else:
        shutil.rmtree(out / TRANSFORMER)
        shutil.copytree(new_transformer, out / TRANSFORMER)
    for weights in (out / TRANSFORMER).glob("*.safetensors"):
        if blend < 1.0:
            blend_weights(model / TRANSFORMER / weights.name, weights, blend)
        store_half(weights)


def _architecture(transformer: Path) -> dict:
    """The config's settings, without the bookkeeping keys (`_name_or_path`, `_diffusers_version`)."""
    config = json.loads((transformer / "config.json").read_text())
    return {key: value for key, value in config.items() if not key.startswith("_")}


def blend_weights(shipped_path: Path, new_path: Path, blend: float) -> None:
    """Rewrite `new_path` as (1 - blend) * shipped + blend * new, computed in float32."""
    shipped, new = load_file(shipped_path), load_file(new_path)
    if shipped.keys() != new.keys() or any(shipped[k].shape != new[k].shape for k in new):
        raise ValueError(f"{new_path} and {shipped_path} hold different tensors: not the same DiT to average")
    blended = {key: torch.lerp(shipped[key].float(), tensor.float(), blend) if tensor.is_floating_point() else tensor
               for key, tensor in new.items()}
    save_file(blended, new_path, metadata={"format": "pt"})


def screen(candidate: Path) -> dict:
    """The decoder stage's own check on a candidate folder: decoder alone, the validation prompts."""
    decoder = HunyuanDecoder.from_pretrained(candidate / "decoder")
    per_category = get_preset("shapes").decoder.eval_prompts_per_category  # as the shapes stage checks
    cases = generation_cases(per_category, seed=VALIDATION_SEED)
    return evaluate_generation(decoder_alone_generator(decoder), cases)


def set_generation_defaults(candidate: Path, settings: dict[str, str]) -> None:
    """Write `settings` (from `--generation key=value`) into the candidate config's generation defaults."""
    path = candidate / CONFIG
    config = json.loads(path.read_text())
    for key, text in settings.items():
        if key not in config["generation"]:
            raise ValueError(f"{key} is not a generation setting ({', '.join(config['generation'])})")
        try:
            value = json.loads(text)
        except json.JSONDecodeError:  # a bare word: sampler=ddim
            value = text
        config["generation"][key] = type(config["generation"][key])(value)
    path.write_text(json.dumps(config, indent=2))


def _config_without(path: Path, generation_keys) -> dict:
    config = json.loads(path.read_text())
    for key in generation_keys:
        config["generation"].pop(key, None)
    return config


def changed_files(model: Path, candidate: Path, generation_keys=()) -> list[str]:
    """Files outside the transformer and the rewritten reports that differ between the two folders; the
    config may differ in `generation_keys` (the DiT's own sampling defaults) alone."""
    changed = []
    for path in sorted(model.rglob("*")):
        relative = path.relative_to(model)
        if not path.is_file() or relative.parts[:2] == TRANSFORMER.parts or str(relative) in REWRITTEN:
            continue
        if str(relative) == CONFIG and generation_keys:
            same = _config_without(path, generation_keys) == _config_without(candidate / relative, generation_keys)
        else:
            same = filecmp.cmp(path, candidate / relative, shallow=False)
        if not same:
            changed.append(str(relative))
    return changed


def record_training(candidate: Path, work_dir: Path, stage: str, note: str, command: str,
                    log_stage: str = "dit") -> None:
    path = candidate / "training_report.json"
    report = json.loads(path.read_text()) if path.exists() else {}
    entry = training_summary(work_dir)[log_stage]
    report[stage] = {**entry, "note": note}
    report.setdefault("commands", []).append({"command": command, "note": note})
    path.write_text(json.dumps(report, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=Path("assets/omnibridge-shapes"))
    parser.add_argument("--work-dir", type=Path, required=True, help="the decoder stage's work dir")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--blend", type=float, default=1.0, help="the new DiT's share of an average with the shipped one")
    parser.add_argument("--screen", action="store_true", help="print the validation check alone, then stop")
    parser.add_argument("--stage", help="the name of the DiT's row in training_report.json")
    parser.add_argument("--note")
    parser.add_argument("--command", help="the training command, as the card lists it")
    parser.add_argument("--log-stage", default="dit", help="the work dir's stage log that trained it (distill: a "
                                                          "distilled DiT)")
    parser.add_argument("--generation", action="append", default=[], metavar="KEY=VALUE",
                        help="a generation default the new DiT samples with (repeatable)")
    args = parser.parse_args()
    if not args.screen and not (args.stage and args.note and args.command):
        parser.error("--stage, --note and --command are needed unless --screen")

    settings = dict(item.split("=", 1) for item in args.generation)
    build_candidate(args.model, args.work_dir, args.out, args.blend)
    set_generation_defaults(args.out, settings)
    changed = changed_files(args.model, args.out, settings)
    if changed:
        raise SystemExit(f"the candidate differs from {args.model} beyond its DiT: {changed}")
    if args.screen:
        print(json.dumps({"blend": args.blend, "validation_decoder_alone": screen(args.out)}))
        return
    record_training(args.out, args.work_dir, args.stage, args.note, args.command, args.log_stage)

    pipe = OmniBridgePipeline.from_pretrained(args.out)
    measured = run_evaluation(pipe, parts=("generation", "editing"))
    shipped = json.loads((args.model / "evaluation.json").read_text())
    report = {**shipped, **measured}  # understanding, retrieval and speed cannot move: kept from the shipped model
    write_model_card(args.out, report)
    print(format_table(report))
    size = sum(f.stat().st_size for f in args.out.rglob("*") if f.is_file())
    beyond = f" and the generation defaults {settings}" if settings else ""
    print(f"candidate: {args.out} ({size / 2**20:.1f} MiB), every file but the DiT{beyond} identical to {args.model}")


if __name__ == "__main__":
    main()
