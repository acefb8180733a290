"""The real app as a separate process: 16 concurrent users, and a SIGKILL in the middle of an import.

Figures (requests served, refusals, peak memory, records before/after the crash) are printed and
written to the test's tmp dir as resilience.json.
"""

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import psutil
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

from tests.conftest import free_port

EXAMPLE = "assets/examples/scene_1.png"


@contextlib.contextmanager
def app_process(model_dir: Path, data_dir: Path, seed_gallery: int = 16):
    port = free_port()
    log = data_dir.parent / f"server-{port}.log"
    env = {**os.environ, "OMNIBRIDGE_SEED_GALLERY": str(seed_gallery), "OMNIBRIDGE_QUEUE_SIZE": "32"}
    with open(log, "w") as handle:
        process = subprocess.Popen([sys.executable, "app.py", "--model", str(model_dir), "--data-dir", str(data_dir),
                                    "--port", str(port)], stdout=handle, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.time() + 180
        while time.time() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"the app exited early:\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(url, timeout=2):
                    break
            except OSError:
                time.sleep(0.5)
        else:
            raise TimeoutError("the app did not start")
        yield process, url, log
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()


def _count_once_seeded(client) -> int:
    """The gallery's size once the built-in scenes, indexed behind the running app, are all in."""
    deadline = time.time() + 120
    while (report := client.predict("all", api_name="/gallery_count"))["indexing"] is not None:
        assert time.time() < deadline, f"still indexing the built-in gallery: {report['indexing']}"
        time.sleep(0.2)
    return report["count"]


def test_sixteen_concurrent_users(tiny_model_dir, tmp_path):
    figures = {"users": 16, "served": {}, "refused": 0, "errors": []}
    lock = threading.Lock()
    feedback_ok = []
    added_ok = []
    with app_process(tiny_model_dir, tmp_path / "data") as (process, url, log):
        peak = [0]
        stop = threading.Event()

        def watch_memory():
            proc = psutil.Process(process.pid)
            while not stop.is_set():
                peak[0] = max(peak[0], proc.memory_info().rss)
                time.sleep(0.25)

        def user(index: int):
            rng = random.Random(index)
            client = Client(url, verbose=False)
            deadline = time.time() + 25
            while time.time() < deadline:
                action = rng.choice(["chat", "generate", "search", "feedback", "add"])
                try:
                    if action == "chat":
                        client.predict("How many circles are there?", [handle_file(EXAMPLE)], [], "answer", 6, 0.0,
                                       1.0, api_name="/chat")
                    elif action == "generate":
                        client.predict("a red circle", False, rng.randrange(1000), False, 2, 2.0, 1,
                                       api_name="/generate")
                    elif action == "search":
                        client.predict("a blue square", None, "Text → images", 5, "all", api_name="/search")
                    elif action == "feedback":
                        record = client.predict("like", "api", str(index), "", {}, {}, {}, api_name="/feedback")
                        with lock:
                            feedback_ok.append(record["id"])
                    else:
                        path = tmp_path / f"u{index}-{time.time_ns()}.png"
                        Image.fromarray(np.random.default_rng(time.time_ns() % 2**32).integers(
                            0, 255, (32, 32, 3), dtype=np.uint8)).save(path)
                        report = client.predict([handle_file(str(path))], "random pixels", api_name="/add_to_gallery")
                        with lock:
                            added_ok.extend(report["added"])
                    with lock:
                        figures["served"][action] = figures["served"].get(action, 0) + 1
                except AppError as error:
                    with lock:
                        if "queue" in str(error).lower() and "full" in str(error).lower():
                            figures["refused"] += 1
                        else:
                            figures["errors"].append(f"{action}: {error}")
                except Exception as error:  # noqa: BLE001 - every failure is recorded
                    with lock:
                        figures["errors"].append(f"{action}: {type(error).__name__}: {error}")

        watcher = threading.Thread(target=watch_memory, daemon=True)
        watcher.start()
        users = [threading.Thread(target=user, args=(i,)) for i in range(16)]
        for thread in users:
            thread.start()
        for thread in users:
            thread.join()
        stop.set()
        client = Client(url, verbose=False)
        info = client.predict(api_name="/info")
        feedback_rows = client.predict("api", "like", api_name="/list_feedback")
        gallery_count = client.predict("upload", api_name="/gallery_count")["count"]
        server_log = log.read_text()
    figures["requests_served"] = sum(figures["served"].values())
    figures["peak_rss_mb"] = round(peak[0] / 2**20, 1)
    figures["model_jobs_at_once"] = info["jobs"]["most_at_once"]
    figures["feedback_written"], figures["feedback_found"] = len(feedback_ok), len(feedback_rows)
    figures["gallery_added"], figures["gallery_found"] = len(set(added_ok)), gallery_count
    print(json.dumps(figures, indent=2))
    (tmp_path / "resilience.json").write_text(json.dumps(figures, indent=2))
    assert figures["errors"] == []
    assert figures["requests_served"] > 16
    assert figures["model_jobs_at_once"] == 1  # one resident model: never two jobs at once
    assert figures["feedback_found"] == figures["feedback_written"]
    assert figures["gallery_found"] == figures["gallery_added"]
    assert "Traceback" not in server_log, server_log[-3000:]


def _consistency(data_dir: Path, pipeline) -> dict:
    from omnibridge.gallery.store import GalleryStore

    store = GalleryStore(data_dir, pipeline)
    ids = store.images.get(include=[])["ids"]
    missing = [i for i in ids if not (store.image_dir / f"{i}.png").exists()
               or not (store.image_dir / f"{i}.thumb.png").exists()]
    files = {p.name.split(".")[0] for p in store.image_dir.glob("*.png")}
    captions = set(store.captions.get(include=[])["ids"])
    vectors = store.images.get(ids=ids, include=["embeddings"])["embeddings"] if ids else []
    return {"records": len(ids), "missing_files": len(missing), "orphan_files": len(files - set(ids)),
            "stray_captions": len(captions - set(ids)), "records_without_vectors": sum(v is None for v in vectors)}


def test_sigkill_during_a_500_image_import_then_resume(tiny_model_dir, tiny_pipeline, tmp_path):
    data_dir = tmp_path / "data"
    files = []
    rng = np.random.default_rng(0)
    for index in range(500):
        path = tmp_path / "import" / f"{index:03d}.png"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)).save(path)
        files.append(handle_file(str(path)))
    with app_process(tiny_model_dir, data_dir) as (process, url, _):
        client = Client(url, verbose=False)
        seeded = _count_once_seeded(client)
        feedback_ids = [client.predict("like", "api", str(i), "", {}, {}, {}, api_name="/feedback")["id"]
                        for i in range(5)]
        job = client.submit(files, "", api_name="/add_to_gallery")
        deadline = time.time() + 120
        while time.time() < deadline:
            count = client.predict("all", api_name="/gallery_count")["count"]
            if count > seeded:  # some of the import has landed: pull the plug now
                os.kill(process.pid, signal.SIGKILL)
                break
            time.sleep(0.05)
        process.wait(timeout=30)
        with contextlib.suppress(Exception):
            job.result(timeout=5)
    with app_process(tiny_model_dir, data_dir) as (_, url, log):
        client = Client(url, verbose=False)
        after_crash = client.predict("all", api_name="/gallery_count")["count"]
        found_feedback = {r["id"] for r in client.predict("api", "like", api_name="/list_feedback")}
        report = client.predict(files, "", api_name="/add_to_gallery")  # resume: the same 500 files
        resumed = report["count"]
    consistency = _consistency(data_dir, tiny_pipeline)
    figures = {"seeded": seeded, "records_after_crash": after_crash, "records_after_resume": resumed,
               "feedback_written": len(feedback_ids), "feedback_found": len(found_feedback), **consistency}
    print(json.dumps(figures, indent=2))
    (tmp_path / "crash.json").write_text(json.dumps(figures, indent=2))
    assert seeded < after_crash < seeded + 500, "the kill should land in the middle of the import"
    assert resumed == seeded + 500  # the resume adds the rest, no duplicates
    assert set(feedback_ids) <= found_feedback
    assert consistency == {"records": seeded + 500, "missing_files": 0, "orphan_files": 0, "stray_captions": 0,
                           "records_without_vectors": 0}
