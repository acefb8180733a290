"""Build a candidate model folder that differs from a shipped one only in its DiT, and evaluate what a DiT can move.

A DiT trained on with `--decoder-from` (the VAE and both text encoders frozen) can replace the shipped one
without retraining anything else: the alignment was trained against the frozen text encoders, not the DiT.
This script copies the model folder, puts the new transformer in (float16, as the shipped one is stored),
checks that every other file is byte-identical to the shipped one (so understanding and retrieval cannot have
moved), records the DiT's training in training_report.json, evaluates generation and editing on the held-out
sets, and writes evaluation.json and the model card with the shipped understanding, retrieval and speed rows
kept.

    PYTHONPATH=. python scripts/swap_dit.py --model assets/omnibridge-shapes --work-dir runs/ditcool/W \
        --out runs/ditcool/cand --stage dit_cooldown --note "..." --command "python -m omnibridge.train ..."
"""

from __future__ import annotations

import argparse
import filecmp
import json
import shutil
from pathlib import Path

from omnibridge.evaluation.evaluate import format_table, run_evaluation
from omnibridge.evaluation.model_card import write_model_card
from omnibridge.pipeline import OmniBridgePipeline
from omnibridge.training.stages import decoder_dir, store_half, training_summary

TRANSFORMER = Path("decoder") / "transformer"
# Written by this script, so they may differ from the shipped folder's.
REWRITTEN = {"README.md", "evaluation.json", "training_report.json"}


def build_candidate(model: Path, work_dir: Path, out: Path) -> None:
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(model, out)
    new_transformer = decoder_dir(work_dir) / "transformer"
    if not (new_transformer / "config.json").exists():
        raise FileNotFoundError(f"no trained transformer in {new_transformer}")
    shutil.rmtree(out / TRANSFORMER)
    shutil.copytree(new_transformer, out / TRANSFORMER)
    for weights in (out / TRANSFORMER).glob("*.safetensors"):
        store_half(weights)


def changed_files(model: Path, candidate: Path) -> list[str]:
    """Files outside the transformer and the rewritten reports that differ between the two folders."""
    changed = []
    for path in sorted(model.rglob("*")):
        relative = path.relative_to(model)
        if not path.is_file() or relative.parts[:2] == TRANSFORMER.parts or str(relative) in REWRITTEN:
            continue
        if not filecmp.cmp(path, candidate / relative, shallow=False):
            changed.append(str(relative))
    return changed


def record_training(candidate: Path, work_dir: Path, stage: str, note: str, command: str) -> None:
    path = candidate / "training_report.json"
    report = json.loads(path.read_text()) if path.exists() else {}
    entry = training_summary(work_dir)["dit"]
    report[stage] = {**entry, "note": note}
    report.setdefault("commands", []).append({"command": command, "note": note})
    path.write_text(json.dumps(report, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=Path("assets/omnibridge-shapes"))
    parser.add_argument("--work-dir", type=Path, required=True, help="the decoder stage's work dir")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--stage", required=True, help="the name of the DiT's row in training_report.json")
    parser.add_argument("--note", required=True)
    parser.add_argument("--command", required=True, help="the training command, as the card lists it")
    args = parser.parse_args()

    build_candidate(args.model, args.work_dir, args.out)
    changed = changed_files(args.model, args.out)
    if changed:
        raise SystemExit(f"the candidate differs from {args.model} beyond its DiT: {changed}")
    record_training(args.out, args.work_dir, args.stage, args.note, args.command)

    pipe = OmniBridgePipeline.from_pretrained(args.out)
    measured = run_evaluation(pipe, parts=("generation", "editing"))
    shipped = json.loads((args.model / "evaluation.json").read_text())
    report = {**shipped, **measured}  # understanding, retrieval and speed cannot move: kept from the shipped model
    write_model_card(args.out, report)
    print(format_table(report))
    size = sum(f.stat().st_size for f in args.out.rglob("*") if f.is_file())
    print(f"candidate: {args.out} ({size / 2**20:.1f} MiB), every file but the DiT identical to {args.model}")


if __name__ == "__main__":
    main()
