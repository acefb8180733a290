"""Fewer steps: Shapes generation accuracy per sampler and step count (the training scheduler is DDPM)."""

from __future__ import annotations

import time

from omnibridge.evaluation.generation import (VALIDATION_SEED, draw_cases, generation_cases, judge_images,
                                              score_judged)

from .harness import Result

# The goal compares with DDPM@100 at <= 1/3 of its steps, so every sampler gets a 33-step row.
SETTINGS = (("dpm++", 10), ("dpm++", 20), ("dpm++", 33), ("unipc", 33), ("ddim", 33), ("ddpm", 33),
            ("dpm++sde", 33), ("ddpm", 100))


def run(pipe, per_category: int = 10, settings: tuple[tuple[str, int], ...] = SETTINGS) -> Result:
    """`settings`: (sampler, steps) pairs to score on the same prompts and seeds; the last must be the
    reference, ddpm@100. The model's default setting runs first whether listed or not, and each other row
    counts the prompts it won and lost against it (paired: with 150 prompts a difference in accuracy has a
    standard error of about 4.5 points). The prompts are validation prompts, not the evaluation's: this
    study chooses settings, and the held-out evaluation then measures the choice."""
    cases = generation_cases(per_category, seed=VALIDATION_SEED)
    original = pipe.config.generation.sampler
    default_setting = (original, pipe.config.generation.num_inference_steps)
    default = f"{original}@{default_setting[1]}"
    settings = (default_setting, *(s for s in settings if s != default_setting))
    rows, passed = {}, {}
    try:
        for sampler, steps in settings:
            pipe.set_sampler(sampler)

            def generate(prompts, seeds):
                return pipe.generate_batch(prompts, seeds, num_inference_steps=steps)[0]

            start = time.perf_counter()
            key = f"{sampler}@{steps}"
            verdicts = judge_images(cases, draw_cases(generate, cases))
            passed[key] = [verdict is None for verdict in verdicts]
            rows[key] = {"overall": score_judged(cases, verdicts)["overall"],
                         "seconds_per_image": round((time.perf_counter() - start) / len(cases), 4)}
    finally:
        pipe.set_sampler(original)
    for key, row in rows.items():
        if key != default:
            pairs = list(zip(passed[key], passed[default]))
            row["won_vs_default"] = sum(mine and not theirs for mine, theirs in pairs)
            row["lost_vs_default"] = sum(theirs and not mine for mine, theirs in pairs)
    reference = rows["ddpm@100"]["overall"]
    best = max(rows, key=lambda k: (rows[k]["overall"] >= reference - 0.02, -int(k.split("@")[1])))
    summary = "steps: " + ", ".join(f"{k} {v['overall']:.2f}" for k, v in rows.items()) + f" -> best cheap: {best}"
    return Result("steps", {"per_setting": rows, "prompts": len(cases), "prompt_seed": VALIDATION_SEED,
                            "default": default,
                            "cheapest_within_2_points_of_ddpm100": best},
                  summary, goal="same accuracy within 2 points at <= 1/3 of the steps")
