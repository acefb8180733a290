"""Study: the DiT's graphs with int8 weights under ONNX Runtime, against the float32 graphs the app runs.

The float32 DiT on this CPU is bound by its matrix products (docs/performance-notes.md, "Twenty-first
session"), and ONNX Runtime's dynamic quantization runs them in int8 (VNNI): one call x0.64-0.67 the time.
The price is a prediction about 1.7% off (relative to its largest value), and 15 steps compound it, so the
images change. This study measures what that costs, paired on the same prompts, seeds and edits.

The rule, written before any result: int8 becomes the CPU default only if, on the validation prompts and
edits, the full path's generation accuracy falls by at most 1 point and editing's by at most 2 points against
float32, and one image takes at most x0.85 the time; the held-out evaluation must then show the same.

    PYTHONPATH=. HF_HUB_OFFLINE=1 python scripts/int8_dit_study.py --per-category 50 --edits-per-type 25
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from benchmarks.bench_generate import PROMPT
from benchmarks.harness import RequestThreads, Timing, machine_info, ratio
from omnibridge.evaluation.editing import evaluate_editing
from omnibridge.evaluation.generation import EVAL_SEED, VALIDATION_SEED, generation_cases, paired_generation_row
from omnibridge.pipeline import OmniBridgePipeline

VARIANTS = {"float32": None, "int8": {"per_channel": False}, "int8_per_channel": {"per_channel": True}}


def quantized_sessions(float_sessions: dict, graph_files: dict[str, Path], options: dict, folder: Path) -> dict:
    """The same graphs with int8 MatMul/Gemm weights (activations quantized per call), as sessions set up
    like the float ones."""
    import onnxruntime as ort
    from onnxruntime.quantization import QuantType, quantize_dynamic

    sessions = {}
    for kind, path in graph_files.items():
        out = folder / f"{kind}-{'pc' if options['per_channel'] else 'pt'}.onnx"
        quantize_dynamic(path, out, weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm"],
                         per_channel=options["per_channel"])
        float_session = float_sessions[kind]
        sessions[kind] = ort.InferenceSession(str(out), float_session.get_session_options(),
                                              providers=["CPUExecutionProvider"])
    return sessions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="assets/omnibridge-shapes")
    parser.add_argument("--per-category", type=int, default=50, help="50 = 300 prompts")
    parser.add_argument("--prompts", choices=("validation", "evaluation"), default="validation")
    parser.add_argument("--edits-per-type", type=int, default=25, help="25 = 100 edits")
    parser.add_argument("--repeats", type=int, default=12, help="interleaved single-image timings per variant")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS),
                        help="float32 (the reference) is always run")
    parser.add_argument("--out", default="int8_dit_study.json")
    args = parser.parse_args()
    variants = {name: VARIANTS[name] for name in VARIANTS if name == "float32" or name in args.variants}

    pipe = OmniBridgePipeline.from_pretrained(args.model)
    folder = Path(tempfile.mkdtemp())
    reason = pipe.run_job(lambda: pipe.use_onnxruntime(folder))
    if reason is not None:
        raise SystemExit(f"the DiT could not run under ONNX Runtime: {reason}")
    runner = pipe.decoder.onnx_dit
    graph_files = {path.stem.rsplit("-", 1)[1]: path for path in folder.glob("dit-*.onnx")}
    sessions = {name: runner.sessions if options is None else
                pipe.run_job(lambda o=options: quantized_sessions(runner.sessions, graph_files, o, folder))
                for name, options in variants.items()}

    validation = args.prompts == "validation"
    cases = generation_cases(args.per_category, seed=VALIDATION_SEED if validation else EVAL_SEED)
    edit_seed = VALIDATION_SEED if validation else EVAL_SEED
    rows, reference = {}, None
    for name in variants:
        runner.sessions = sessions[name]
        row, passed = paired_generation_row(pipe, cases, reference)
        reference = reference or passed
        if args.edits_per_type:
            row["editing"] = evaluate_editing(pipe, per_type=args.edits_per_type, seed=edit_seed)
        rows[name] = row
        print(name, json.dumps(row), flush=True)

    def one_image(name: str):
        def call():
            runner.sessions = sessions[name]
            return pipe.generate(PROMPT, seed=0)
        return call

    requests = RequestThreads()
    timings = Timing.interleaved({name: requests(one_image(name)) for name in variants}, args.repeats)
    first = timings["float32"].median_s
    for name, timing in timings.items():
        rows[name].update(image_median_s=timing.median_s, image_spread_s=[timing.min_s, timing.max_s],
                          time_vs_float32=ratio(timing.median_s, first))
        print(name, f"one image {timing.median_s:.3f} s (x{ratio(timing.median_s, first)})", flush=True)
    runner.sessions = sessions["float32"]
    with open(args.out, "w") as handle:
        json.dump({"model": args.model, "prompts": f"{len(cases)} {args.prompts}", "rows": rows,
                   "machine": machine_info()}, handle, indent=2)


if __name__ == "__main__":
    main()
