"""App start to the first answered request, against importing the libraries alone; the app's RSS.

Two starts on one data dir: the first computes the negative-prompt embeddings and indexes the 300-scene
seed gallery behind the running app (timed too); the restart finds both cached, which is what a user who
restarts the app meets. Both are repeated in rounds, each against the imports timed just before it.
"""

from __future__ import annotations

import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

import psutil

from .harness import Result, ratio

IMPORTS = "import torch, transformers, diffusers, gradio, chromadb"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_and_ask(model: str, data_dir: str) -> tuple[float, float, float]:
    """Seconds from launch to the first answered request and to a fully indexed built-in gallery (it is
    indexed behind the running app on a first start), and the RSS after one generation."""
    from gradio_client import Client

    port = _free_port()
    start = time.perf_counter()
    process = subprocess.Popen([sys.executable, "app.py", "--model", model, "--port", str(port),
                                "--data-dir", data_dir], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1):
                    break
            except OSError:
                if process.poll() is not None:
                    raise RuntimeError("the app exited during start-up") from None
                time.sleep(0.1)
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        report = client.predict("all", api_name="/gallery_count")
        first_request_s = time.perf_counter() - start
        while report["indexing"] is not None:
            time.sleep(0.05)
            report = client.predict("all", api_name="/gallery_count")
        gallery_ready_s = time.perf_counter() - start
        client.predict("two red circles", True, 1, False, 20, 2.0, 1, api_name="/generate")
        rss = psutil.Process(process.pid).memory_info().rss
        client.close()
    finally:
        process.terminate()
        process.wait(timeout=30)
    return first_request_s, gallery_ready_s, rss


def _time_imports() -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", IMPORTS], check=True)
    return time.perf_counter() - start


def run(model: str, rounds: int = 3) -> Result:
    """`rounds` rounds, each: the imports alone, a first start on a fresh data dir, a restart on it. One
    start reads anywhere from 9 to 13 s from one minute to the next on the shared 2-core machine, so the
    ratios are taken round by round, against the imports timed just before, and the median reported."""
    imports, firsts, galleries, restarts, rss = [], [], [], [], 0
    for _ in range(rounds):
        imports.append(_time_imports())
        with tempfile.TemporaryDirectory() as data_dir:
            first_start_s, first_gallery_s, _ = _start_and_ask(model, data_dir)
            restart_s, _, rss = _start_and_ask(model, data_dir)
        firsts.append(first_start_s)
        galleries.append(first_gallery_s)
        restarts.append(restart_s)
    median = statistics.median
    figures = {"rounds": rounds, "imports_alone_s": round(median(imports), 2),
               "first_start_to_first_request_s": round(median(firsts), 2),
               "first_start_to_indexed_gallery_s": round(median(galleries), 2),
               "restart_to_first_request_s": round(median(restarts), 2),
               "first_start_ratio_to_imports": round(median(f / i for f, i in zip(firsts, imports)), 3),
               "restart_ratio_to_imports": round(median(r / i for r, i in zip(restarts, imports)), 3),
               "spread_s": {"imports": [round(min(imports), 2), round(max(imports), 2)],
                            "first_start": [round(min(firsts), 2), round(max(firsts), 2)],
                            "restart": [round(min(restarts), 2), round(max(restarts), 2)]},
               "app_rss_mb": round(rss / 2**20, 1)}
    summary = (f"startup ({rounds} rounds, medians): first answered request after {figures['first_start_to_first_request_s']:.1f} s "
               f"on a fresh data dir (x{figures['first_start_ratio_to_imports']:.2f} the imports; built-in gallery "
               f"indexed at {figures['first_start_to_indexed_gallery_s']:.1f} s), {figures['restart_to_first_request_s']:.1f} s "
               f"on a restart (x{figures['restart_ratio_to_imports']:.2f}); imports alone {figures['imports_alone_s']:.1f} s; "
               f"app RSS {figures['app_rss_mb']} MB")
    return Result("startup", figures, summary, goal="<= 10 s; report peak memory")
