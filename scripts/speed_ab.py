"""One image at the shipped model's defaults against the same pipeline with a candidate's DiT and generation
defaults, interleaved in one process (the machine's noise between processes is as large as the gap measured).

The candidate is a folder that scripts/swap_dit.py built: it differs from the model in its DiT and, for a
distilled DiT, in its sampler, steps and guidance. One pipeline is loaded, so both run on the same model thread
and OpenMP team; each round swaps the DiT and the sampler in before its call.

    PYTHONPATH=. HF_HUB_OFFLINE=1 python scripts/speed_ab.py --candidate runs/distill-cand --repeats 12
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from diffusers import HunyuanDiT2DModel

from benchmarks.bench_generate import PROMPT
from benchmarks.harness import RequestThreads, Timing, machine_info, ratio
from omnibridge.pipeline import OmniBridgePipeline


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=Path("assets/omnibridge-shapes"))
    parser.add_argument("--candidate", type=Path, required=True)
    parser.add_argument("--repeats", type=int, default=12)
    args = parser.parse_args()

    pipe = OmniBridgePipeline.from_pretrained(args.model)
    decoder = pipe.decoder
    shipped = {"transformer": decoder.transformer,
               **_settings(json.loads((args.model / "omnibridge_config.json").read_text())["generation"])}
    transformer = pipe.run_job(lambda: HunyuanDiT2DModel.from_pretrained(  # torch ops on the model thread only
        args.candidate / "decoder", subfolder="transformer", torch_dtype=decoder.dtype).to(decoder.device).eval())
    candidate = {"transformer": transformer,
                 **_settings(json.loads((args.candidate / "omnibridge_config.json").read_text())["generation"])}

    def one_image(setup: dict):
        def call():
            decoder.transformer = setup["transformer"]
            if decoder.sampler_kind != setup["sampler"]:
                pipe.set_sampler(setup["sampler"])
            return pipe.generate(PROMPT, seed=0, num_inference_steps=setup["steps"],
                                 guidance_scale=setup["guidance"])
        return call

    requests = RequestThreads()
    timings = Timing.interleaved({"shipped": requests(one_image(shipped)),
                                  "candidate": requests(one_image(candidate))}, args.repeats)
    report = {name: {"median_s": t.median_s, "spread_s": [t.min_s, t.max_s],
                     **{k: v for k, v in setup.items() if k != "transformer"}}
              for (name, t), setup in zip(timings.items(), (shipped, candidate))}
    report["candidate_vs_shipped"] = ratio(timings["candidate"].median_s, timings["shipped"].median_s)
    report["machine"] = machine_info()
    print(json.dumps(report, indent=2))


def _settings(generation: dict) -> dict:
    return {"sampler": generation["sampler"], "steps": generation["num_inference_steps"],
            "guidance": generation["guidance_scale"]}


if __name__ == "__main__":
    main()
