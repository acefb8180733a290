"""A tiny benchmark harness: warm-up, repeated runs, median and spread, ratios to a baseline.

Benchmarks are not tests: they measure, they never assert. Every figure is reported next to a
baseline measured in the same run, so a busy or different machine changes both alike.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch


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
    def of_samples(cls, fn: Callable[[], float], repeats: int = 5, warmup: int = 1) -> "Timing":
        """Like `of`, for a function that times its own part of the work and returns seconds."""
        for _ in range(warmup):
            fn()
        return cls.from_samples([fn() for _ in range(repeats)])

    @classmethod
    def from_samples(cls, samples: list[float]) -> "Timing":
        return cls(round(statistics.median(samples), 6), round(min(samples), 6), round(max(samples), 6),
                   len(samples))


@dataclass
class Result:
    name: str
    figures: dict
    summary: str
    goal: str = ""
    machine: dict = field(default_factory=lambda: machine_info())

    def to_dict(self) -> dict:
        return asdict(self)


def machine_info() -> dict:
    info = {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def ratio(value: float, baseline: float) -> float:
    return round(value / baseline, 3) if baseline else float("nan")


def write(results: list[Result], path: str) -> None:
    """Write `results` into `path`, replacing earlier results of the same benchmarks (`--only` runs)."""
    kept = {}
    if os.path.exists(path):
        with open(path) as handle:
            kept = {entry["name"]: entry for entry in json.load(handle)}
    kept.update({r.name: r.to_dict() for r in results})
    with open(path, "w") as handle:
        json.dump(list(kept.values()), handle, indent=2)
