"""Study: what a change to the generation settings costs in accuracy and buys in time.

Each setting is a comma-separated list of `field=value` overrides of the model's generation defaults
(`GenerationDefaults`: sampler, num_inference_steps, guidance_cutoff, cache_interval, ...); the first
setting is the reference. Every setting draws the full OmniBridge path for the same prompts and seeds, so
the comparison is paired (prompts won and lost against the reference are counted), on the validation
prompts by default: a study chooses settings, and the held-out evaluation then measures the choice.
Then one image at each setting is timed, interleaved round after round in this one process (the machine's
noise between processes is as large as the gaps measured).

    PYTHONPATH=. HF_HUB_OFFLINE=1 python scripts/generation_settings_study.py \\
        --settings cache_interval=1 cache_interval=2 sampler=ddpm,num_inference_steps=100
"""

from __future__ import annotations

import argparse
import dataclasses
import json

from benchmarks.bench_generate import PROMPT
from benchmarks.harness import RequestThreads, Timing, machine_info, ratio
from omnibridge.evaluation.editing import evaluate_editing
from omnibridge.evaluation.generation import EVAL_SEED, VALIDATION_SEED, generation_cases, paired_generation_row
from omnibridge.pipeline import OmniBridgePipeline


def parse_setting(text: str, defaults) -> dict:
    """'sampler=ddpm,num_inference_steps=100' -> {'sampler': 'ddpm', 'num_inference_steps': 100}, each value
    cast to the type of the default it overrides."""
    overrides = {}
    for part in filter(None, text.split(",")):
        name, _, value = part.partition("=")
        if not hasattr(defaults, name):
            raise SystemExit(f"unknown generation setting {name!r}")
        overrides[name] = type(getattr(defaults, name))(value)
    return overrides


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="assets/omnibridge-shapes")
    parser.add_argument("--settings", nargs="+", required=True, help="the first is the reference")
    parser.add_argument("--per-category", type=int, default=25, help="25 = 150 prompts")
    parser.add_argument("--prompts", choices=("validation", "evaluation"), default="validation")
    parser.add_argument("--edits-per-type", type=int, default=0, help="15 = 60 edits; 0 skips editing")
    parser.add_argument("--repeats", type=int, default=12, help="interleaved single-image timings per setting")
    parser.add_argument("--out", default="generation_settings_study.json")
    args = parser.parse_args()

    pipe = OmniBridgePipeline.from_pretrained(args.model)
    shipped = dataclasses.replace(pipe.config.generation)
    settings = {text: parse_setting(text, shipped) for text in args.settings}

    def use(overrides: dict) -> None:
        pipe.config.generation = dataclasses.replace(shipped, **overrides)
        pipe.set_sampler(pipe.config.generation.sampler)

    validation = args.prompts == "validation"
    cases = generation_cases(args.per_category, seed=VALIDATION_SEED if validation else EVAL_SEED)
    edit_seed = {"seed": VALIDATION_SEED} if validation else {}  # else the evaluation's own edits
    rows, reference = {}, None
    for text, overrides in settings.items():
        use(overrides)
        row, passed = paired_generation_row(pipe, cases, reference)
        reference = reference or passed
        if args.edits_per_type:
            row["editing"] = evaluate_editing(pipe, per_type=args.edits_per_type, **edit_seed)["overall"]
        rows[text] = row
        print(text, json.dumps(row), flush=True)

    def one_image(overrides: dict):
        def call():
            use(overrides)
            return pipe.generate(PROMPT, seed=0)
        return call

    requests = RequestThreads()
    timings = Timing.interleaved({text: requests(one_image(o)) for text, o in settings.items()}, args.repeats)
    first = timings[args.settings[0]].median_s
    for text, timing in timings.items():
        rows[text].update(image_median_s=timing.median_s, image_spread_s=[timing.min_s, timing.max_s],
                          time_vs_reference=ratio(timing.median_s, first))
        print(text, f"one image {timing.median_s:.3f} s (x{ratio(timing.median_s, first)})", flush=True)
    use({})
    with open(args.out, "w") as handle:
        json.dump({"model": args.model, "prompts": f"{len(cases)} {args.prompts}", "rows": rows,
                   "machine": machine_info()}, handle, indent=2)


if __name__ == "__main__":
    main()
