"""App cold start to the first answered request, against importing the libraries alone; peak RSS."""

from __future__ import annotations

import socket
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


def run(model: str) -> Result:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", IMPORTS], check=True)
    imports_s = time.perf_counter() - start
    port = _free_port()
    with tempfile.TemporaryDirectory() as data_dir:
        start = time.perf_counter()
        process = subprocess.Popen([sys.executable, "app.py", "--model", model, "--port", str(port),
                                    "--data-dir", data_dir], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            from gradio_client import Client

            while True:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1):
                        break
                except OSError:
                    if process.poll() is not None:
                        raise RuntimeError("the app exited during start-up")
                    time.sleep(0.1)
            client = Client(f"http://127.0.0.1:{port}/", verbose=False)
            client.predict("all", api_name="/gallery_count")
            first_request_s = time.perf_counter() - start
            client.predict("two red circles", True, 1, False, 20, 2.0, 1, api_name="/generate")
            rss = psutil.Process(process.pid).memory_info().rss
            client.close()
        finally:
            process.terminate()
            process.wait(timeout=30)
    figures = {"imports_alone_s": round(imports_s, 2), "cold_start_to_first_request_s": round(first_request_s, 2),
               "ratio_to_imports": ratio(first_request_s, imports_s), "app_rss_mb": round(rss / 2**20, 1),
               "note": "a fresh data dir: includes indexing the 300-scene seed gallery"}
    summary = (f"startup: first answered request after {first_request_s:.1f} s (imports alone {imports_s:.1f} s), "
               f"app RSS {figures['app_rss_mb']} MB")
    return Result("startup", figures, summary, goal="<= 10 s; report peak memory")
