"""Median and spread of repeated runs, alone or interleaved round after round.

Lives in the package because the evaluator times the model card's speed figures with it; the
benchmarks (`benchmarks/harness.py`) use the same class.
"""

from __future__ import annotations

import platform
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable


@dataclass
class Timing:
    median_s: float
    min_s: float
    max_s: float
    repeats: int

    @classmethod
    def of(cls, fn: Callable[[], object], repeats: int = 5, warmup: int = 1) -> "Timing":
        for _ in range(warmup):
            fn()
        samples = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            samples.append(time.perf_counter() - start)
        return cls.from_samples(samples)

    @classmethod
    def interleaved(cls, runs: dict[str, Callable[[], object]], repeats: int = 5,
                    warmup: int = 1) -> dict[str, "Timing"]:
        """Time several functions in turn, round after round, so that a slow minute of a shared machine
        falls on all of them alike rather than on whichever ran then. A function that returns a float
        has timed its own part of the work (seconds): that is its sample."""
        for fn in runs.values():
            for _ in range(warmup):
                fn()
        samples: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(repeats):
            for name, fn in runs.items():
                start = time.perf_counter()
                value = fn()
                elapsed = time.perf_counter() - start
                samples[name].append(value if isinstance(value, float) else elapsed)
        return {name: cls.from_samples(values) for name, values in samples.items()}

    @classmethod
    def from_samples(cls, samples: list[float]) -> "Timing":
        return cls(round(statistics.median(samples), 6), round(min(samples), 6), round(max(samples), 6),
                   len(samples))


# The vector units that decide which kernels torch and ONNX Runtime pick: the same code ran an image x0.67 under
# ONNX Runtime on an AMD EPYC without AVX-512 and x0.95 on a Xeon with it (docs/performance-notes.md).
VECTOR_FLAGS = {"avx512f": "AVX-512", "avx512_vnni": "VNNI", "amx_tile": "AMX"}


def cpu_name(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The processor's model and its wide vector units, e.g. "Intel(R) Xeon(R) Processor (AVX-512, VNNI, AMX)":
    timings from different sessions are comparable only on the same kind of CPU."""
    try:
        text = cpuinfo.read_text()
    except OSError:  # not Linux
        return platform.processor() or platform.machine()
    fields = dict(line.split(":", 1) for line in text.split("\n\n")[0].splitlines() if ":" in line)
    fields = {key.strip(): value.strip() for key, value in fields.items()}
    model = fields.get("model name") or platform.processor() or platform.machine()
    flags = set(fields.get("flags", "").split())
    units = [name for flag, name in VECTOR_FLAGS.items() if flag in flags]
    return f"{model} ({', '.join(units) if units else 'no AVX-512'})"
