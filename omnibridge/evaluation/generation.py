"""GenEval-style generation evaluation on the Shapes world.

Six categories of prompts; an image passes when the detector finds exactly the objects the prompt
asks for (count, colour, shape, and the relation by the contract's rule).
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Callable

from PIL import Image

from ..shapes.captions import CaptionSpec, Group, format_caption
from ..shapes.detect import MISMATCHES, detect, mismatch
from ..shapes.world import COLOR_NAMES, RELATIONS, SHAPES

CATEGORIES = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
EVAL_SEED = 7_000_000  # held out: training derives its data from (seed, stage, step) strings instead
# Prompts and noise for choosing among checkpoints or settings (the decoder stage's checks, the seventeenth
# session's sampler screen), so that the evaluation's own cases never pick what they then measure.
VALIDATION_SEED = 7_654_321


@dataclass(frozen=True)
class GenerationCase:
    category: str
    prompt: str
    spec: CaptionSpec
    seed: int


def _case(rng: random.Random, category: str) -> CaptionSpec:
    if category == "single_object":
        return CaptionSpec((Group(1, rng.choice(SHAPES)),))
    if category == "two_object":
        a, b = rng.sample(SHAPES, 2)
        return CaptionSpec((Group(1, a), Group(1, b)))
    if category == "counting":
        return CaptionSpec((Group(rng.randint(2, 4), rng.choice(SHAPES)),))
    if category == "colors":
        return CaptionSpec((Group(1, rng.choice(SHAPES), rng.choice(COLOR_NAMES)),))
    if category == "position":
        a, b = rng.sample(SHAPES, 2)
        return CaptionSpec((Group(1, a), Group(1, b)), relation=(0, rng.choice(RELATIONS), 1))
    if category == "color_attr":
        a, b = rng.sample(SHAPES, 2)
        ca, cb = rng.sample(COLOR_NAMES, 2)
        return CaptionSpec((Group(1, a, ca), Group(1, b, cb)))
    raise ValueError(category)


def generation_cases(per_category: int, seed: int = EVAL_SEED) -> list[GenerationCase]:
    rng = random.Random(seed)
    cases = []
    for category in CATEGORIES:
        for _ in range(per_category):
            spec = _case(rng, category)
            cases.append(GenerationCase(category, format_caption(spec), spec, rng.randrange(2**31)))
    return cases


def judge_images(cases: list[GenerationCase], images: list[Image.Image]) -> list[str | None]:
    """Per case, from one detection of its image: None when it shows what the prompt asks, else the first
    thing that is wrong (detect.MISMATCHES: "count", "shape", "colour", "size" or "relation"). Studies pair
    these verdicts across settings."""
    return [mismatch(detect(image), case.spec) for case, image in zip(cases, images, strict=True)]


def score_judged(cases: list[GenerationCase], verdicts: list[str | None]) -> dict:
    """Per-category accuracy, overall (mean of categories, as GenEval reports), object-count accuracy, and
    per category how many images failed for each reason (what a better decoder has to fix)."""
    by_category = {c: [] for c in CATEGORIES}
    for case, verdict in zip(cases, verdicts, strict=True):
        by_category[case.category].append(verdict)
    per_category = {c: v.count(None) / len(v) for c, v in by_category.items() if v}
    failures = {c: {reason: v.count(reason) for reason in MISMATCHES if reason in v} for c, v in by_category.items()}
    return {
        **{c: round(a, 4) for c, a in per_category.items()},
        "overall": round(sum(per_category.values()) / len(per_category), 4),
        "right_object_count": round(1 - verdicts.count("count") / len(verdicts), 4),
        "n_prompts": len(cases),
        "failures": {c: reasons for c, reasons in failures.items() if reasons},
    }


def score_images(cases: list[GenerationCase], images: list[Image.Image]) -> dict:
    return score_judged(cases, judge_images(cases, images))


def draw_cases(
    generate: Callable[[list[str], list[int]], list[Image.Image]], cases: list[GenerationCase], batch: int = 60
) -> list[Image.Image]:
    """One image per case, `batch` prompts per call of `generate(prompts, seeds)`."""
    images: list[Image.Image] = []
    for start in range(0, len(cases), batch):
        chunk = cases[start : start + batch]
        images.extend(generate([c.prompt for c in chunk], [c.seed for c in chunk]))
    return images


def evaluate_generation(
    generate: Callable[[list[str], list[int]], list[Image.Image]], cases: list[GenerationCase], batch: int = 60
) -> dict:
    return score_images(cases, draw_cases(generate, cases, batch))


def paired_generation_row(pipe, cases: list[GenerationCase], reference: list[bool] | None) -> tuple[dict, list[bool]]:
    """A study's row for one setting: the full path's score on `cases`, the minutes it took, and, against the
    reference setting's per-case passes (same prompts, same seeds), the prompts won and lost. Returns the row
    and this setting's passes (the reference's, when it is the first)."""
    start = time.perf_counter()
    verdicts = judge_images(cases, draw_cases(lambda prompts, seeds: pipe.generate_batch(prompts, seeds)[0], cases))
    passed = [verdict is None for verdict in verdicts]
    row = {"generation": score_judged(cases, verdicts),
           "generation_minutes": round((time.perf_counter() - start) / 60, 1)}
    if reference is not None:
        row["prompts_won"] = sum(p and not r for p, r in zip(passed, reference))
        row["prompts_lost"] = sum(r and not p for p, r in zip(passed, reference))
    return row, passed
