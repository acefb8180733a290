"""`--compile`: seconds per image with the DiT's blocks compiled, against the same model uncompiled in the
same run, and what the compiler costs the first image, with an empty and with a filled compiler cache.

Opt-in (`python -m benchmarks.run --only compile`): on a CPU the first compile builds C++ kernels for about a
minute. The cold and warm first images are timed in fresh processes on one temporary cache folder (inductor's
cache, `TORCHINDUCTOR_CACHE_DIR`), the per-image ratio in this process, both pipelines on one model thread.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

import numpy as np

from .bench_generate import PROMPT
from .harness import RequestThreads, Result, Timing, ratio

FIRST_IMAGE = """
import sys, time
from omnibridge import OmniBridgePipeline
pipe = OmniBridgePipeline.from_pretrained(sys.argv[1])
pipe.generate(sys.argv[2], seed=0)  # the process's own warm-up, so that only the compiler is counted
pipe.compile()
start = time.perf_counter()
pipe.generate(sys.argv[2], seed=0)
print(time.perf_counter() - start)
"""


def _first_compiled_image_s(model: str, cache_dir: str) -> float:
    """Seconds of the first image after `compile()` in a fresh process: tracing, compiling (or loading
    from the cache) and the image itself."""
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache_dir, "PYTHONPATH": os.getcwd()}
    done = subprocess.run([sys.executable, "-c", FIRST_IMAGE, model, PROMPT], env=env, check=True,
                          capture_output=True, text=True)
    return float(done.stdout.strip().splitlines()[-1])


def run(eager, model: str, repeats: int = 5) -> Result:
    """`eager` is the run's pipeline of `model`; the compiled one shares its model thread (a second thread's
    OpenMP team would slow both: omnibridge/model_thread.py)."""
    from omnibridge import OmniBridgePipeline

    cache_dir_before = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    with tempfile.TemporaryDirectory() as cache_dir:
        cold_s = _first_compiled_image_s(model, cache_dir)
        warm_s = _first_compiled_image_s(model, cache_dir)
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache_dir  # this process then compiles from the filled cache
        compiled = OmniBridgePipeline.from_pretrained(model, model_thread=eager.model_thread)
        compiled.compile()
        requests = RequestThreads()
        images = {}

        def one_image(name, pipe):
            def call():
                images[name] = np.asarray(pipe.generate(PROMPT, seed=0).images[0], dtype=np.int16)
            return requests(call)

        try:
            timings = Timing.interleaved({"eager": one_image("eager", eager),
                                          "compiled": one_image("compiled", compiled)}, repeats=repeats)
        finally:  # the folder is about to go: later compiles in this process must not look there
            if cache_dir_before is None:
                del os.environ["TORCHINDUCTOR_CACHE_DIR"]
            else:
                os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache_dir_before
    difference = np.abs(images["compiled"] - images["eager"])
    figures = {"image_s": timings["compiled"].median_s, "uncompiled_image_s": timings["eager"].median_s,
               "ratio_to_uncompiled": ratio(timings["compiled"].median_s, timings["eager"].median_s),
               "first_image_empty_cache_s": round(cold_s, 2), "first_image_filled_cache_s": round(warm_s, 2),
               "pixels_differing": int((difference > 0).sum()), "largest_pixel_difference": int(difference.max()),
               "repeats": repeats, "cache_interval": eager.config.generation.cache_interval}
    summary = (f"compile: one image {figures['image_s']:.3f} s against {figures['uncompiled_image_s']:.3f} s "
               f"uncompiled (x{figures['ratio_to_uncompiled']:.3f}); the first image after compile() "
               f"{cold_s:.1f} s with an empty compiler cache, {warm_s:.1f} s with a filled one; "
               f"{figures['pixels_differing']} pixels differ, by at most {figures['largest_pixel_difference']}")
    return Result("compile", figures, summary, goal="report (a flag, off by default)")
