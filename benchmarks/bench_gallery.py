"""Gallery: ingest cost over embedding alone, and Chroma search latency and recall vs exact numpy search."""

from __future__ import annotations

import random
import tempfile
import time

import numpy as np

from omnibridge.gallery.store import GalleryStore
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


def _percentiles(latencies: list[float]) -> dict:
    return {"p50_ms": round(float(np.percentile(latencies, 50)) * 1000, 2),
            "p99_ms": round(float(np.percentile(latencies, 99)) * 1000, 2)}


def search_latency(pipe, sizes=(10_000, 100_000), queries: int = 200) -> dict:
    """The gallery's own search (exact, in memory) and Chroma's HNSW query on the same random unit
    vectors, both against exact numpy search: random vectors are the hardest case for a graph index."""
    rng = np.random.default_rng(0)
    dim = pipe.embedding_dim
    out = {}
    for size in sizes:
        vectors = rng.standard_normal((size, dim)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        probes = rng.standard_normal((queries, dim)).astype(np.float32)
        probes /= np.linalg.norm(probes, axis=1, keepdims=True)
        ids = [f"{j:032x}" for j in range(size)]
        exact = [set(ids[i] for i in np.argsort(-(vectors @ probe))[:10]) for probe in probes]
        with tempfile.TemporaryDirectory() as folder:
            store = GalleryStore(folder, pipe)
            step = store.client.get_max_batch_size()
            start = time.perf_counter()
            for i in range(0, size, step):
                chunk = slice(i, min(size, i + step))
                store.images.add(ids=ids[chunk], embeddings=vectors[chunk],
                                 metadatas=[{"source": "seed", "created_at": 0.0}] * len(ids[chunk]))
            add_s = time.perf_counter() - start
            start = time.perf_counter()
            store.search(probes[0], "images", k=10)  # the first search loads the vectors into memory
            load_s = time.perf_counter() - start
            rows = {}
            for name, search in (
                ("gallery", lambda probe: [hit.id for hit in store.search(probe, "images", k=10)]),
                ("chroma_hnsw", lambda probe: store.images.query(query_embeddings=[probe.tolist()], n_results=10,
                                                                 include=[])["ids"][0]),
            ):
                latencies, recalls = [], []
                for probe, truth in zip(probes, exact):
                    start = time.perf_counter()
                    found = search(probe)
                    latencies.append(time.perf_counter() - start)
                    recalls.append(len(truth & set(found)) / 10)
                rows[name] = {**_percentiles(latencies), "recall_at_10": round(float(np.mean(recalls)), 4)}
        exact_times = []
        for probe in probes[:50]:
            start = time.perf_counter()
            np.argpartition(-(vectors @ probe), 10)[:10]
            exact_times.append(time.perf_counter() - start)
        out[str(size)] = {"add_s": round(add_s, 1), "first_search_load_s": round(load_s, 2), **rows,
                          "exact_numpy_p50_ms": round(float(np.median(exact_times)) * 1000, 2)}
    return out


def run(pipe, sizes=(10_000, 100_000)) -> Result:
    figures = {"ingest": ingest(pipe), "search": search_latency(pipe, sizes)}
    largest = figures["search"][str(max(sizes))]
    gallery, hnsw = largest["gallery"], largest["chroma_hnsw"]
    summary = (f"gallery: ingest adds x{figures['ingest']['writing_overhead']} over embedding; search at "
               f"{max(sizes)}: p50 {gallery['p50_ms']} ms, p99 {gallery['p99_ms']} ms, recall@10 "
               f"{gallery['recall_at_10']} (Chroma HNSW {hnsw['p50_ms']} ms, recall {hnsw['recall_at_10']}; "
               f"exact numpy {largest['exact_numpy_p50_ms']} ms)")
    return Result("gallery", figures, summary,
                  goal="writing adds <= 20%; p50 <= 10 ms at 100k; recall@10 >= 0.98 vs exact")
