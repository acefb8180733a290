"""Study: how many of the denoising steps need classifier-free guidance, and what dropping it costs.

Guidance doubles every guided step's batch (the negative prompt's branch), and on the built-in model the DiT
is 90% of an image's time, so guiding only the first share of the steps (`guidance_cutoff`) is the cheapest
speed-up left on a CPU. For each cutoff this scores the full OmniBridge path on the evaluation's held-out
generation prompts (the same prompts and seeds for every setting, so the comparison is paired: prompts won
and lost against the first setting are counted), and optionally the standard held-out edits, and times one
image at the model's defaults. Settings run in the order given; the first is the reference.

    PYTHONPATH=. python scripts/guidance_cutoff_study.py --model assets/omnibridge-shapes --cutoffs 1 0.5 0.3 0
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from omnibridge.evaluation.editing import evaluate_editing
from omnibridge.evaluation.generation import draw_cases, generation_cases, judge_images, score_judged
from omnibridge.pipeline import OmniBridgePipeline


def seconds_per_image(pipe, repeats: int) -> float:
    pipe.generate("a red circle", seed=0)  # warm-up
    times = []
    for i in range(repeats):
        start = time.perf_counter()
        pipe.generate("a red circle left of a blue square", seed=i)
        times.append(time.perf_counter() - start)
    return round(statistics.median(times), 4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="assets/omnibridge-shapes")
    parser.add_argument("--cutoffs", type=float, nargs="+", default=[1.0, 0.5, 0.3, 0.0])
    parser.add_argument("--per-category", type=int, default=50, help="50 = the evaluation's 300 prompts")
    parser.add_argument("--edits-per-type", type=int, default=0, help="15 = the evaluation's 60 edits; 0 skips")
    parser.add_argument("--repeats", type=int, default=7, help="single-image timings per setting")
    parser.add_argument("--out", default="guidance_cutoff_study.json")
    args = parser.parse_args()

    pipe = OmniBridgePipeline.from_pretrained(args.model)
    cases = generation_cases(args.per_category)
    rows, reference = [], None
    for cutoff in args.cutoffs:
        pipe.config.generation.guidance_cutoff = cutoff
        start = time.perf_counter()
        images = draw_cases(lambda prompts, seeds: pipe.generate_batch(prompts, seeds)[0], cases)
        verdicts = judge_images(cases, images)
        passed = [verdict is None for verdict in verdicts]
        row = {"guidance_cutoff": cutoff, "generation_overall": score_judged(cases, verdicts)["overall"],
               "generation_seconds": round(time.perf_counter() - start),
               "seconds_per_image": seconds_per_image(pipe, args.repeats)}
        if reference is None:
            reference = passed
        else:
            row["prompts_won"] = sum(p and not r for p, r in zip(passed, reference))
            row["prompts_lost"] = sum(r and not p for p, r in zip(passed, reference))
        if args.edits_per_type:
            row["editing"] = evaluate_editing(pipe, per_type=args.edits_per_type)["overall"]
        rows.append(row)
        print(json.dumps(row), flush=True)
    with open(args.out, "w") as handle:
        json.dump({"model": args.model, "prompts": len(cases), "rows": rows}, handle, indent=2)


if __name__ == "__main__":
    main()
