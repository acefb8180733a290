"""Median and spread of repeated runs, alone or interleaved round after round.

Lives in the package because the evaluator times the model card's speed figures with it; the
benchmarks (`benchmarks/harness.py`) use the same class.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
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
