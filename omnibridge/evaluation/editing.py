"""Editing: the share of edits whose resulting image shows the instruction's target scene."""

from __future__ import annotations

import random

from ..shapes.detect import image_matches
from ..shapes.edits import EDIT_TYPES, sample_edit
from ..shapes.render import render
from ..shapes.world import sample_scene

EVAL_SEED = 7_300_000


def edit_cases(per_type: int, seed: int = EVAL_SEED):
    rng = random.Random(seed)
    cases = []
    for etype in EDIT_TYPES:
        while sum(c.etype == etype for c in cases) < per_type:
            example = sample_edit(rng, sample_scene(rng, rng.randint(1, 3) if etype != "move" else 2), etype)
            if example is not None:
                cases.append(example)
    return cases


def evaluate_editing(pipe, per_type: int = 15, num_inference_steps: int | None = None,
                     seed: int = EVAL_SEED) -> dict:
    passed: dict[str, list[bool]] = {t: [] for t in EDIT_TYPES}
    caption_right: list[bool] = []
    for index, example in enumerate(edit_cases(per_type, seed)):
        result = pipe.edit(render(example.source), example.instruction, seed=index,
                           num_inference_steps=num_inference_steps)
        passed[example.etype].append(image_matches(result.images[0], example.target_spec))
        caption_right.append(result.caption == example.target_caption)
    scores = {t: round(sum(v) / len(v), 4) for t, v in passed.items()}
    total = [ok for v in passed.values() for ok in v]
    return {**scores, "overall": round(sum(total) / len(total), 4),
            "target_caption_exact": round(sum(caption_right) / len(caption_right), 4), "n_edits": len(total),
            "candidates": pipe.config.generation.edit_candidates,
            "caption_beams": pipe.config.generation.edit_caption_beams}
