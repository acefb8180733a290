"""`python -m benchmarks.run`: every benchmark on the built-in model, JSON out, one line each.

    python -m benchmarks.run --out benchmarks/results.json
    python -m benchmarks.run --only chat,generate,embed
    python -m benchmarks.run --only compile    # opt-in: `--compile` against the same model uncompiled
"""

from __future__ import annotations

import argparse
import os
import random

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

NAMES = ("chat", "generate", "steps", "embed", "gallery", "startup", "quantize")
OPT_IN = ("compile",)  # only with --only: a first compile on a CPU takes about a minute


def main(argv: list[str] | None = None) -> list:
    from omnibridge import DEFAULT_MODEL, OmniBridgePipeline
    from omnibridge.shapes.render import render
    from omnibridge.shapes.world import sample_scene

    from . import (bench_chat, bench_compile, bench_embed, bench_gallery, bench_generate, bench_quantize,
                   bench_startup, bench_steps)
    from .harness import write

    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__)
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--only", default=",".join(NAMES))
    parser.add_argument("--out", default="benchmarks/results.json")
    parser.add_argument("--steps-prompts-per-category", type=int, default=10,
                        help="the fewer-steps study's prompts per category (six categories; 25 for a 2-point comparison)")
    parser.add_argument("--quick", action="store_true", help="fewer repeats and a 10k-only search benchmark")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed rounds of chat, generate, embed, quantize and compile (default 5, 2 with --quick), and of "
                             "start-up (default 3, 1 with --quick; about 35 s each); more for a noisy hour")
    args = parser.parse_args(argv)
    chosen = args.only.split(",")
    unknown = set(chosen) - set(NAMES + OPT_IN)
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(sorted(unknown))}; choose from {', '.join(NAMES + OPT_IN)}")
    pipe = OmniBridgePipeline.from_pretrained(args.model)
    image = render(sample_scene(random.Random(3), 2))
    repeats = args.repeats or (2 if args.quick else 5)
    runners = {
        "chat": lambda: bench_chat.run(pipe, image, repeats),
        "generate": lambda: bench_generate.run(pipe, repeats),
        "steps": lambda: bench_steps.run(pipe, 4 if args.quick else args.steps_prompts_per_category),
        "embed": lambda: bench_embed.run(pipe, repeats=repeats),
        "gallery": lambda: bench_gallery.run(pipe, (10_000,) if args.quick else (10_000, 100_000)),
        "startup": lambda: bench_startup.run(args.model, rounds=args.repeats or (1 if args.quick else 3)),
        "quantize": lambda: bench_quantize.run(pipe, args.model, image, repeats),
        "compile": lambda: bench_compile.run(pipe, args.model, repeats),
    }
    results = []
    for name in NAMES + OPT_IN:
        if name in chosen:
            result = runners[name]()
            print(result.summary, flush=True)
            results.append(result)
    write(results, args.out)
    return results


if __name__ == "__main__":
    main()
