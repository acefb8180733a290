"""The one thread that runs every model job of a pipeline.

Why one thread. On a CPU, PyTorch runs each op on an OpenMP team owned by the thread that called it,
and the team's helper threads live as long as that thread. A web app calls the model from a pool of
worker threads (Gradio's), so each of them grew a team of its own; once libgomp manages more threads
than there are cores, it stops spinning between parallel regions and every forward pass slows down
(on this project's two cores a denoising loop took 1.3x as long once a pool of four threads had each
run one). And `torch.set_num_threads` called in one thread sets the count that every thread started
*later* gets, so a one-thread generation thread used to hand later request threads one-thread teams.
Here every job runs on one long-lived thread with one team of the caller's thread count, which chat
streaming shares with denoising and embedding.

ZeroGPU runs request handlers in a forked process, where no thread of the parent exists: the first
job in a new process starts a new thread there.
"""

from __future__ import annotations

import contextvars
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, TypeVar

import torch

Result = TypeVar("Result")


class ModelThread:
    def __init__(self, torch_threads: int | None = None):
        """`torch_threads`: the thread's OpenMP team size (None: leave torch's setting alone, as on a GPU)."""
        self.torch_threads = torch_threads
        self._ident: int | None = None
        self._pid: int | None = None
        self._executor: ThreadPoolExecutor | None = None

    @classmethod
    def for_device(cls, device: torch.device) -> "ModelThread":
        """On a CPU the team keeps the size torch has in the creating thread; elsewhere, torch's setting."""
        return cls(torch.get_num_threads() if device.type == "cpu" else None)

    def _on_start(self) -> None:
        self._ident = threading.get_ident()
        if self.torch_threads:
            torch.set_num_threads(self.torch_threads)

    def _current_executor(self) -> ThreadPoolExecutor:
        if self._executor is None or self._pid != os.getpid():  # first use, or a forked child
            self._pid, self._ident = os.getpid(), None
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="omnibridge-model",
                                                initializer=self._on_start)
        return self._executor

    def is_current(self) -> bool:
        return self._pid == os.getpid() and threading.get_ident() == self._ident

    def submit(self, work: Callable[..., Result], *args, **kwargs) -> Future:
        """Queue `work` on the thread; jobs run one after another in the order they were submitted.

        A job runs in a copy of the caller's context variables, as `asyncio.to_thread` does: a step
        callback that reports progress to Gradio finds its request there.
        """
        caller = contextvars.copy_context()
        return self._current_executor().submit(caller.run, work, *args, **kwargs)

    def run(self, work: Callable[..., Result], *args, **kwargs) -> Result:
        """Run `work` on the thread and return its result (inline when called from the thread itself,
        which would otherwise wait for itself)."""
        if self.is_current():
            return work(*args, **kwargs)
        return self.submit(work, *args, **kwargs).result()
