"""Gallery: ingest cost over embedding alone, and Chroma search latency and recall vs exact numpy search."""

from __future__ import annotations

import random
import tempfile
import time

import numpy as np

from omnibridge.gallery.store import HNSW_INDEX, GalleryStore
from omnibridge.shapes.captions import describe, format_caption
from omnibridge.shapes.render import render
from omnibridge.shapes.world import sample_scene

from .harness import Result, ratio


def ingest(pipe, n: int = 1000) -> dict:
    rng = random.Random(1)
    scenes = [sample_scene(rng) for _ in range(n)]
    images = [render(s) for s in scenes]
    captions = [format_caption(describe(s)) for s in scenes]
    start = time.perf_counter()
    pipe.embed_images(images)
    pipe.embed_texts(captions)
    embed_only = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as folder:
        store = GalleryStore(folder, pipe)
        start = time.perf_counter()
        store.add(images, captions, source="upload")
        end_to_end = time.perf_counter() - start
    return {"items": n, "embedding_s": round(embed_only, 3), "end_to_end_s": round(end_to_end, 3),
            "writing_overhead": ratio(end_to_end - embed_only, embed_only)}


def search_latency(sizes=(10_000, 100_000), dim: int = 128, queries: int = 200) -> dict:
    import chromadb
    from chromadb.config import Settings

    rng = np.random.default_rng(0)
    out = {}
    for size in sizes:
        vectors = rng.standard_normal((size, dim)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        probes = rng.standard_normal((queries, dim)).astype(np.float32)
        probes /= np.linalg.norm(probes, axis=1, keepdims=True)
        with tempfile.TemporaryDirectory() as folder:
            client = chromadb.PersistentClient(folder, Settings(anonymized_telemetry=False))
            collection = client.create_collection("bench", embedding_function=None,
                                                  configuration={"hnsw": dict(HNSW_INDEX)})
            step = client.get_max_batch_size()
            start = time.perf_counter()
            for i in range(0, size, step):
                collection.add(ids=[str(j) for j in range(i, min(size, i + step))], embeddings=vectors[i:i + step])
            add_s = time.perf_counter() - start
            latencies, recalls = [], []
            for probe in probes:
                start = time.perf_counter()
                found = collection.query(query_embeddings=[probe.tolist()], n_results=10, include=[])["ids"][0]
                latencies.append(time.perf_counter() - start)
                exact = set(map(str, np.argsort(-(vectors @ probe))[:10]))
                recalls.append(len(exact & set(found)) / 10)
        exact_times = []
        for probe in probes[:50]:
            start = time.perf_counter()
            np.argpartition(-(vectors @ probe), 10)[:10]
            exact_times.append(time.perf_counter() - start)
        out[str(size)] = {"add_s": round(add_s, 1), "p50_ms": round(float(np.percentile(latencies, 50)) * 1000, 2),
                          "p99_ms": round(float(np.percentile(latencies, 99)) * 1000, 2),
                          "exact_numpy_p50_ms": round(float(np.median(exact_times)) * 1000, 2),
                          "recall_at_10": round(float(np.mean(recalls)), 4)}
    return out


def run(pipe, sizes=(10_000, 100_000)) -> Result:
    figures = {"ingest": ingest(pipe), "search": search_latency(sizes, dim=pipe.embedding_dim)}
    largest = figures["search"][str(max(sizes))]
    summary = (f"gallery: ingest adds x{figures['ingest']['writing_overhead']} over embedding; search at "
               f"{max(sizes)}: p50 {largest['p50_ms']} ms, p99 {largest['p99_ms']} ms (exact numpy "
               f"{largest['exact_numpy_p50_ms']} ms), recall@10 {largest['recall_at_10']}")
    return Result("gallery", figures, summary,
                  goal="writing adds <= 20%; p50 <= 10 ms at 100k; recall@10 >= 0.98 vs exact")
