"""The pipeline's one model thread: order, errors, no self-deadlock, and a fresh thread after a fork."""

import contextvars
import os
import select
import threading

import pytest

from omnibridge.model_thread import ModelThread


def test_jobs_run_in_order_on_one_other_thread():
    thread = ModelThread()
    results = [thread.submit(lambda i=i: (i, threading.get_ident())) for i in range(5)]
    values = [future.result() for future in results]
    assert [i for i, _ in values] == list(range(5))
    assert len({ident for _, ident in values}) == 1
    assert values[0][1] != threading.get_ident()


def test_jobs_see_the_callers_context_variables():
    # Gradio finds the request a progress update belongs to in context variables.
    request = contextvars.ContextVar("request")
    request.set("request 1")
    assert ModelThread().run(request.get) == "request 1"


def test_errors_reach_the_caller():
    def fail():
        raise ValueError("bad input")

    with pytest.raises(ValueError, match="bad input"):
        ModelThread().run(fail)


def test_a_job_that_runs_another_job_does_not_wait_for_itself():
    thread = ModelThread()
    assert thread.run(lambda: thread.run(lambda: threading.get_ident())) == thread.run(threading.get_ident)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_process_gets_a_thread_of_its_own():
    # ZeroGPU runs handlers in a forked process, where the parent's thread does not exist: a job
    # queued for it would wait forever.
    thread = ModelThread()
    thread.run(threading.get_ident)  # the parent's thread is started (and idle) before the fork
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            ran_elsewhere = thread.run(threading.get_ident) != threading.get_ident()
            os.write(write, b"ok" if ran_elsewhere else b"inline")
        finally:
            os._exit(0)
    os.close(write)
    try:
        ready, _, _ = select.select([read], [], [], 30)
        answer = os.read(read, 16) if ready else b"timed out"
    finally:
        if not ready:
            os.kill(pid, 9)
        os.waitpid(pid, 0)
        os.close(read)
    assert answer == b"ok"
