"""Fewer steps: Shapes generation accuracy per sampler and step count (the training scheduler is DDPM)."""

from __future__ import annotations

import time

from omnibridge.evaluation.generation import evaluate_generation, generation_cases

from .harness import Result

# The goal compares with DDPM@100 at <= 1/3 of its steps, so every sampler gets a 33-step row.
SETTINGS = (("dpm++", 10), ("dpm++", 20), ("dpm++", 33), ("unipc", 33), ("ddim", 33), ("ddpm", 33),
            ("dpm++sde", 33), ("ddpm", 100))


def run(pipe, per_category: int = 10, settings: tuple[tuple[str, int], ...] = SETTINGS) -> Result:
    """`settings`: (sampler, steps) pairs to score; the last reference must be ddpm@100."""
    cases = generation_cases(per_category)
    original = pipe.config.generation.sampler
    rows = {}
    try:
        for sampler, steps in settings:
            pipe.decoder.set_sampler(sampler)

            def generate(prompts, seeds):
                return pipe.generate_batch(prompts, seeds, num_inference_steps=steps)[0]

            start = time.perf_counter()
            scores = evaluate_generation(generate, cases)
            rows[f"{sampler}@{steps}"] = {"overall": scores["overall"], "seconds_per_image":
                                          round((time.perf_counter() - start) / len(cases), 4)}
    finally:
        pipe.decoder.set_sampler(original)
    reference = rows["ddpm@100"]["overall"]
    best = max(rows, key=lambda k: (rows[k]["overall"] >= reference - 0.02, -int(k.split("@")[1])))
    summary = "steps: " + ", ".join(f"{k} {v['overall']:.2f}" for k, v in rows.items()) + f" -> best cheap: {best}"
    return Result("steps", {"per_setting": rows, "prompts": len(cases), "cheapest_within_2_points_of_ddpm100": best},
                  summary, goal="same accuracy within 2 points at <= 1/3 of the steps")
