"""`python -m omnibridge.evaluate --model assets/omnibridge-shapes --out report.json`

Held-out evaluation of a Shapes model on every task (seeds disjoint from training's):
generation through the full OmniBridge path and through the decoder alone, understanding, editing,
retrieval, and the speed of one image and one short answer on this machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from ..modeling.decoder import SAMPLERS
from ..modeling.devices import QUANTIZATIONS
from ..shapes.detect import MISMATCHES
from ..timing import Timing, cpu_name
from .editing import EVAL_SEED as EDITING_SEED
from .editing import evaluate_editing
from .generation import EVAL_SEED as GENERATION_SEED
from .generation import evaluate_generation, generation_cases
from .retrieval import evaluate_retrieval
from .understanding import QUESTIONS_PER_TYPE, evaluate_understanding

PARTS = ("generation", "understanding", "editing", "retrieval", "speed")


def evaluate_generation_paths(pipe, per_category: int, steps: int | None, guidance: float | None,
                              seed: int = GENERATION_SEED) -> dict:
    cases = generation_cases(per_category, seed)

    def through(rewrite: bool, learned_queries: bool):
        # The reference is the decoder alone: no self-check by the LLM's embeddings
        candidates = None if learned_queries else 1

        def generate(prompts, seeds):
            images, _ = pipe.generate_batch(prompts, seeds, rewrite=rewrite, use_learned_queries=learned_queries,
                                            num_inference_steps=steps, guidance_scale=guidance,
                                            candidates=candidates)
            return images
        return generate

    omnibridge = evaluate_generation(through(True, True), cases)
    decoder_alone = evaluate_generation(through(False, False), cases)
    _, captions = pipe.generate_batch([c.prompt for c in cases[:60]], [0] * min(60, len(cases)),
                                      num_inference_steps=1, guidance_scale=1.0)
    rewrite_exact = sum(c == case.prompt for c, case in zip(captions, cases)) / len(captions)
    defaults = pipe.config.generation
    return {"omnibridge": omnibridge, "decoder_alone": decoder_alone,
            "gap": round(decoder_alone["overall"] - omnibridge["overall"], 4),
            "rewrite_keeps_canonical_prompt": round(rewrite_exact, 4),
            "settings": {"num_inference_steps": steps or defaults.num_inference_steps,
                         "guidance_scale": guidance if guidance is not None else defaults.guidance_scale,
                         "candidates": defaults.candidates,
                         "prompts_per_category": per_category}}


def measure_speed(pipe, repeats: int = 5, same_run_repeats: int = 12) -> dict:
    """Median seconds for one image at the defaults and for one short answer (after a warm-up). When the
    defaults guide only the first steps or reuse DiT blocks, or the DiT runs under ONNX Runtime, one image is
    also timed with each saving turned off, interleaved with the defaults round after round in this process: on
    a shared machine a ratio from one run says more than seconds from two (the model card shows it)."""
    from ..shapes.render import render
    from ..shapes.world import sample_scene
    import random

    image = render(sample_scene(random.Random(1)))
    messages = [{"role": "user", "content": "How many circles are there?"}]
    speed = {"image_s": round(Timing.of(lambda: pipe.generate("two red circles", seed=0), repeats).median_s, 4),
             "short_answer_s": round(Timing.of(lambda: pipe.chat(messages, images=[image], max_new_tokens=8),
                                               repeats).median_s, 4),
             "threads": torch.get_num_threads(), "machine": cpu_name(),
             "dit_runtime": pipe.decoder.dit_runtime}
    defaults, onnx_dit = pipe.config.generation, pipe.decoder.onnx_dit
    savings_off = {}
    if defaults.guidance_cutoff < 1.0:
        savings_off["every_step_guided_image_s"] = (dataclasses.replace(defaults, guidance_cutoff=1.0), onnx_dit)
    if defaults.cache_interval > 1:
        savings_off["every_block_image_s"] = (dataclasses.replace(defaults, cache_interval=1), onnx_dit)
    if onnx_dit is not None:
        savings_off["pytorch_dit_image_s"] = (defaults, None)
    if not savings_off:
        return speed

    def one_image(generation, dit_graphs):
        def call():
            pipe.config.generation, pipe.decoder.onnx_dit = generation, dit_graphs
            pipe.generate("two red circles", seed=0)
        return call

    runs = {"defaults_image_s_same_run": one_image(defaults, onnx_dit),
            **{key: one_image(*setting) for key, setting in savings_off.items()}}
    try:
        timings = Timing.interleaved(runs, repeats=same_run_repeats)
    finally:
        pipe.config.generation, pipe.decoder.onnx_dit = defaults, onnx_dit
    speed.update({key: round(timing.median_s, 4) for key, timing in timings.items()})
    speed["same_run_rounds"] = same_run_repeats
    return speed


def _block_reuse(report: dict) -> str:
    """How often the unguided steps ran every DiT block (block_cache.py), when they did not always."""
    new_images, edits = report.get("cache_interval", 1), report.get("edit_cache_interval", 1)
    if new_images == 1 and edits == 1:
        return ""
    return (f"; after them every block ran on 1 unguided step in {new_images}, the rest reused the middle "
            f"blocks (edits: 1 in {edits})")


def run_evaluation(pipe, parts=PARTS, per_category: int = 50, per_type: int = QUESTIONS_PER_TYPE,
                   edits_per_type: int = 15, retrieval_scenes: int = 1000, steps: int | None = None,
                   guidance: float | None = None, seed: int | None = None) -> dict:
    """`seed`, when given, draws generation's prompts and the edits (a fresh set confirms a candidate that the
    standard cases helped choose); None keeps each part's own held-out seed."""
    report: dict = {"model": pipe.model_id, "source": pipe.model.source,
                    "sampler": pipe.decoder.sampler_kind,
                    "candidates": pipe.config.generation.candidates,
                    "edit_candidates": pipe.config.generation.edit_candidates,
                    "guidance_cutoff": pipe.config.generation.guidance_cutoff,
                    "cache_interval": pipe.config.generation.cache_interval,
                    "edit_cache_interval": pipe.config.generation.edit_cache_interval,
                    "dit_runtime": pipe.decoder.dit_runtime,
                    "evaluated_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    generation_seed, editing_seed = (GENERATION_SEED, EDITING_SEED) if seed is None else (seed, seed)
    if seed is not None:
        report["cases_seed"] = seed
    runners = {
        "generation": lambda: evaluate_generation_paths(pipe, per_category, steps, guidance, generation_seed),
        "understanding": lambda: evaluate_understanding(pipe, per_type),
        "editing": lambda: evaluate_editing(pipe, edits_per_type, steps, editing_seed),
        "retrieval": lambda: evaluate_retrieval(pipe, retrieval_scenes),
        "speed": lambda: measure_speed(pipe),
    }
    for part in parts:
        start = time.perf_counter()
        report[part] = runners[part]()
        report[part]["eval_seconds"] = round(time.perf_counter() - start, 1)
    return report


def format_table(report: dict) -> str:
    lines = [f"model: {report['model']}"]
    generation = report.get("generation")
    if generation:
        header = ["path", "single", "two_obj", "counting", "colors", "position", "color_attr", "overall"]
        keys = ["single_object", "two_object", "counting", "colors", "position", "color_attr", "overall"]
        lines.append("generation    " + " | ".join(header))
        for path in ("omnibridge", "decoder_alone"):
            lines.append(f"  {path:<12} " + " | ".join(f"{generation[path][k]:.2f}" for k in keys))
        failures = generation["omnibridge"].get("failures")
        if failures is not None:  # reports from before the breakdown lack it
            totals = {reason: sum(f.get(reason, 0) for f in failures.values()) for reason in MISMATCHES}
            lines.append("  full path's failed images, by the first thing wrong: "
                         + (", ".join(f"{reason} {n}" for reason, n in totals.items() if n) or "none"))
        settings = generation.get("settings")
        if settings:  # accuracy depends on them: say which were measured
            lines.append(f"  sampler {report.get('sampler', '?')}, {settings['num_inference_steps']} steps, "
                         f"guidance {settings['guidance_scale']} on the first "
                         f"{report.get('guidance_cutoff', 1.0):.0%} of the steps{_block_reuse(report)}")
    for part in ("understanding", "editing"):
        if part in report:
            values = {k: v for k, v in report[part].items() if isinstance(v, float)}
            lines.append(f"{part:<14}" + "  ".join(f"{k} {v:.2f}" for k, v in values.items()))
        missing = report.get(part, {}).get("missing_object")
        if missing and missing["n_questions"]:  # understanding only; reports from before this row lack it
            lines.append(f"  beyond the contract, not in the overall: a relation about an absent object answered "
                         f"\"no\" {missing['answered_no']:.2f} ({missing['n_questions']} questions)")
    if "retrieval" in report:
        values = {k: v for k, v in report["retrieval"].items() if "@" in k}
        lines.append("retrieval     " + "  ".join(f"{k} {v:.3f}" if v is not None else f"{k} n/a"
                                                  for k, v in values.items()))
    if "speed" in report:
        lines.append(f"speed         image {report['speed']['image_s']:.3f} s, "
                     f"short answer {report['speed']['short_answer_s']:.3f} s"
                     + (f", the DiT in {report['speed']['dit_runtime']}" if "dit_runtime" in report['speed'] else ""))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    from ..pipeline import OmniBridgePipeline
    from .model_card import write_model_card

    parser = argparse.ArgumentParser(prog="python -m omnibridge.evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="assets/omnibridge-shapes")
    parser.add_argument("--out", default="report.json")
    parser.add_argument("--parts", default=",".join(PARTS))
    parser.add_argument("--prompts-per-category", type=int, default=50)
    parser.add_argument("--questions-per-type", type=int, default=QUESTIONS_PER_TYPE)
    parser.add_argument("--edits-per-type", type=int, default=15)
    parser.add_argument("--retrieval-scenes", type=int, default=1000)
    parser.add_argument("--steps", type=int, help="denoising steps (default: the model's)")
    parser.add_argument("--guidance", type=float, help="guidance scale (default: the model's)")
    parser.add_argument("--guidance-cutoff", type=float,
                        help="share of the steps that are guided, from the first (default: the model's)")
    parser.add_argument("--sampler", choices=SAMPLERS, help="denoising sampler (default: the model's)")
    parser.add_argument("--candidates", type=int,
                        help="self-check: images drawn per image kept, generation's full path (default: the model's)")
    parser.add_argument("--edit-candidates", type=int, help="the same for editing (default: the model's)")
    parser.add_argument("--seed", type=int,
                        help="draw generation's prompts and the edits from this seed (a fresh set, to confirm a "
                             "candidate the standard one helped choose; understanding and retrieval keep theirs)")
    parser.add_argument("--device", default=None)
    parser.add_argument("--quantize", choices=QUANTIZATIONS,
                        help="load the language model's weights in 8-bit or 4-bit (bitsandbytes), to measure what "
                             "quantization costs")
    parser.add_argument("--no-onnx-dit", dest="onnx_dit", action="store_false",
                        help="keep the DiT in PyTorch (the app runs it under ONNX Runtime on a CPU)")
    parser.add_argument("--float32-dit", dest="dit_int8", action="store_false",
                        help="under ONNX Runtime, keep the DiT in float32 (the app runs its matrix products in int8)")
    parser.add_argument("--write-card", action="store_true", help="also write README.md into the model folder")
    args = parser.parse_args(argv)
    pipe = OmniBridgePipeline.from_pretrained(args.model, device=args.device, quantization=args.quantize)
    if args.onnx_dit:  # as the app does: the speed part then measures what a user gets
        unavailable = pipe.run_job(lambda: pipe.use_onnxruntime(int8=args.dit_int8))
        if unavailable:
            print(f"the DiT stays in PyTorch: {unavailable}")
    if args.sampler:
        pipe.set_sampler(args.sampler)
    if args.guidance_cutoff is not None:
        pipe.config.generation.guidance_cutoff = args.guidance_cutoff
    if args.candidates:
        pipe.config.generation.candidates = args.candidates
    if args.edit_candidates:
        pipe.config.generation.edit_candidates = args.edit_candidates
    report = run_evaluation(pipe, args.parts.split(","), args.prompts_per_category, args.questions_per_type,
                            args.edits_per_type, args.retrieval_scenes, args.steps, args.guidance, args.seed)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(format_table(report))
    if args.write_card:
        write_model_card(Path(args.model), report)
    return report
