"""The model card (README.md) of a trained Shapes model, written from its evaluation report."""

from __future__ import annotations

import json
from pathlib import Path

from .evaluate import format_table

CARD = """---
license: apache-2.0
tags: [omnibridge, multimodal, text-to-image, retrieval, synthetic]
---
# {model_id}

A small OmniBridge (arXiv 2509.19018) trained from scratch by this project on its synthetic
Shapes world (64 x 64 scenes of circles, squares and triangles in six colours). It uses the same
classes as the full-size model: a tiny Qwen2-VL LLM, the BiLM with learned queries, retrieval
heads, and a tiny HunyuanDiT + AutoencoderKL decoder with BERT and T5 text encoders.

**What it is trained to do:** answer questions about Shapes images (counts, colours, shapes,
existence, relations, descriptions, and where one object is: "top left" ... "centre", trained as a
stepping stone to relations but not evaluated), draw scenes from prompts (after rewriting them into its caption
grammar), edit a scene by regenerating it from a rewritten caption, and embed images and captions into
one space for retrieval. How well it does each is measured below: trust the numbers, not this list.
**What it cannot do:** anything outside the Shapes world. Photos are resized to 64 x 64 and
described as shapes; words outside its grammar are ignored or misread.

## Evaluation (held-out seeds)
```
{table}
```
Full numbers: `evaluation.json` beside this card.

### Against the project's goals
{goals}

## Training
{training}

{reproduce}
"""

PLAIN_RECIPE = "python -m omnibridge.train --preset shapes --out assets/omnibridge-shapes"


def _goal_rows(report: dict) -> list[tuple[str, str, bool]]:
    """(goal, measured, met) for every goal of the built-in model that the report measured."""
    rows = []
    if "understanding" in report:
        u = report["understanding"]
        types = {k: v for k, v in u.items() if isinstance(v, float) and k != "overall"}
        weakest = min(types, key=types.get)
        rows.append(("understanding >= 0.95 overall", f"{u['overall']:.2f}", u["overall"] >= 0.95))
        rows.append(("no question type below 0.90", f"{weakest} {types[weakest]:.2f}", types[weakest] >= 0.90))
    if "retrieval" in report:
        r = report["retrieval"]
        for k in ("t2i", "i2t"):
            rows.append((f"{k} R@1 >= 0.80", f"{r[f'{k}_R@1']:.3f}", r[f"{k}_R@1"] >= 0.80))
            rows.append((f"{k} R@5 >= 0.95", f"{r[f'{k}_R@5']:.3f}", r[f"{k}_R@5"] >= 0.95))
    if "generation" in report:
        full, alone = report["generation"]["omnibridge"], report["generation"]["decoder_alone"]
        rows.append(("generation (full path) >= 0.60 overall", f"{full['overall']:.2f}", full["overall"] >= 0.60))
        for k in ("single_object", "colors"):
            rows.append((f"generation {k} >= 0.90", f"{full[k]:.2f}", full[k] >= 0.90))
        gap = alone["overall"] - full["overall"]
        side = "below" if gap > 0 else "above"
        rows.append(("full path within 0.05 of the decoder alone", f"{abs(gap):.2f} {side}", gap <= 0.05))
    if "editing" in report:
        editing = report["editing"]
        measured = f"{editing['overall']:.2f}"
        choices = []
        if editing.get("caption_beams", 1) > 1:
            choices.append(f"caption: the least change of {editing['caption_beams']} beams")
        if editing.get("candidates", 1) > 1:
            choices.append(f"self-check: best of {editing['candidates']} candidates")
        if choices:
            measured += f" ({'; '.join(choices)})"
        rows.append(("editing >= 0.50", measured, editing["overall"] >= 0.50))
    if "speed" in report:
        speed = report["speed"]
        measured = f"{speed['image_s']:.3f} s"
        if report.get("guidance_cutoff", 1.0) < 1.0:
            measured += f" (guidance on the first {report['guidance_cutoff']:.0%} of the steps"
            if speed.get("every_step_guided_image_s"):  # the machine is shared: the same run's ratio says more
                ratio = _defaults_same_run(speed, "guidance_cutoff") / speed["every_step_guided_image_s"]
                measured += f": x{ratio:.2f} the time of guiding every step, in the same run"
            if report.get("cache_interval", 1) > 1:
                measured += f"; every DiT block on 1 unguided step in {report['cache_interval']}"
                if speed.get("every_block_image_s"):
                    ratio = _defaults_same_run(speed, "block_reuse") / speed["every_block_image_s"]
                    measured += f": x{ratio:.2f} the time of every block on every step, in the same run"
            measured += ")"
        if speed.get("pytorch_dit_image_s"):
            ratio = _defaults_same_run(speed, "onnx_dit") / speed["pytorch_dit_image_s"]
            int8 = " in int8" if speed.get("dit_runtime") == "onnxruntime-int8" else ""
            measured += f"; the DiT under ONNX Runtime{int8}: x{ratio:.2f} the time of PyTorch's DiT, in the same run"
        if speed.get("runs_image_s"):  # the machine is shared: say how much the same measurement moved
            measured += "; runs in a row: " + ", ".join(f"{s:.3f} s" for s in speed["runs_image_s"])
        rows.append(("one 64x64 image <= 0.5 s", measured, speed["image_s"] <= 0.5))
        rows.append(("a short answer <= 0.3 s", f"{speed['short_answer_s']:.3f} s", speed["short_answer_s"] <= 0.3))
    return rows


def _defaults_same_run(speed: dict, saving: str) -> float:
    """The defaults' seconds per image from the run that timed a saving turned off. Reports written before
    the evaluator timed every saving in one run kept a copy per saving (`block_reuse_image_s_same_run`)."""
    return speed.get("defaults_image_s_same_run") or speed[f"{saving}_image_s_same_run"]


def _goals(report: dict) -> str:
    rows = _goal_rows(report)
    table = ["| goal | measured | met |", "|---|---|---|"]
    table += [f"| {goal} | {measured} | {'yes' if met else '**no**'} |" for goal, measured, met in rows]
    missed = sum(not met for _, _, met in rows)
    table.append(f"\n{len(rows) - missed} of {len(rows)} goals met. The training curves below show where each "
                 "stage stopped; the project README says what limits each missed goal and what is trained next."
                 if missed else f"\nAll {len(rows)} goals met.")
    return "\n".join(table)


def _training_summary(training: dict | None) -> str:
    if training is None:
        return "No training report in this folder."
    stages = {k: v for k, v in training.items() if k != "commands"}
    rows = ["| stage | steps | training time | images seen | loss first -> last |", "|---|---|---|---|---|"]
    cpu_seconds, accelerated = 0.0, {}  # a stage trained on a GPU names its device
    for name, stage in stages.items():
        seconds = stage.get("seconds", 0)
        device = stage.get("device")
        if device:
            accelerated[device] = accelerated.get(device, 0.0) + seconds
        else:
            cpu_seconds += seconds
        loss = f"{stage.get('first_loss', '-')} -> {stage.get('last_loss', '-')}"
        where = f" on {device}" if device else ""
        rows.append(f"| {name} | {stage.get('steps')} | {seconds / 60:.1f} min{where} | "
                    f"{stage.get('images_seen')} | {loss} |")
    total = f"\nTotal training time: **{cpu_seconds / 3600:.2f} h** on a 2-core CPU (stages 0 and 1 ran side by side)"
    total += "".join(f", plus **{seconds / 60:.1f} min** on one {device}" for device, seconds in accelerated.items())
    rows.append(total + ".")
    for name, stage in stages.items():
        if stage.get("note"):
            rows.append(f"\n{name}: {stage['note']}")
    curve = stages.get("dit", {}).get("eval_curve")
    if curve:
        where = f" on {stages['dit']['device']}" if stages["dit"].get("device") else ""
        prompts = curve[0].get("n_prompts") or 60  # curves recorded before the count was kept: 60
        rows.append(f"\nDecoder-alone generation accuracy during stage 0{where} ({prompts} prompts, EMA weights):\n")
        rows.append("| step | training minutes | overall | right object count |\n|---|---|---|---|")
        rows += [f"| {c['step']} | {c['seconds'] / 60:.0f} | {c['overall']:.3f} | {c['right_object_count']:.2f} |"
                 for c in curve]
    if "vae_exact_reconstruction" in stages.get("vae", {}):
        rows.append(f"\nVAE: {stages['vae']['vae_exact_reconstruction']:.0%} of held-out scenes reconstruct to "
                    "exactly the same detected objects (the ceiling for generation).")
    return "\n".join(rows)


def _reproduce(folder: Path, training: dict | None) -> str:
    """The training commands that made this checkpoint, in order (from its work dir's history)."""
    commands = (training or {}).get("commands", [])
    lines = [c["command"] + (f"  # {c['note']}" if c.get("note") else "") for c in commands] or [PLAIN_RECIPE]
    intro = ("The commands that trained this checkpoint, in the order they ran (each `--resume` continues the "
             "stages it names from their saved state):" if commands else "Reproduce:")
    evaluate = f"python -m omnibridge.evaluate --model {folder} --out report.json --write-card"
    return intro + "\n```\n" + "\n".join(lines + [evaluate]) + "\n```"


def write_model_card(folder: Path, report: dict) -> None:
    (folder / "evaluation.json").write_text(json.dumps(report, indent=2))
    path = folder / "training_report.json"
    training = json.loads(path.read_text()) if path.exists() else None
    card = CARD.format(model_id=report["model"], table=format_table(report), goals=_goals(report),
                       training=_training_summary(training), reproduce=_reproduce(folder, training))
    (folder / "README.md").write_text(card)
