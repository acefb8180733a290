"""A tiny benchmark harness: warm-up, repeated runs, median and spread, ratios to a baseline.

Benchmarks are not tests: they measure, they never assert. Every figure is reported next to a
baseline measured in the same run, so a busy or different machine changes both alike.
"""

from __future__ import annotations

import itertools
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch

from omnibridge.timing import Timing, cpu_name  # noqa: F401  (the benchmarks import Timing from here)


class RequestThreads:
    """Calls a function from a pool of long-lived threads in turn, as the app's requests arrive (Gradio
    runs each event on a thread of its worker pool), so the pipeline is timed where users meet it."""

    def __init__(self, count: int = 4):
        self._threads = itertools.cycle([ThreadPoolExecutor(max_workers=1) for _ in range(count)])

    def __call__(self, fn: Callable[[], object]) -> Callable[[], object]:
        return lambda: next(self._threads).submit(fn).result()


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
    info = {"cpu": cpu_name(), "threads": torch.get_num_threads(),
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
