"""Embeddings: images/s and texts/s batched vs one at a time."""

from __future__ import annotations

import random

from omnibridge.shapes.captions import describe, format_caption
from omnibridge.shapes.render import render
from omnibridge.shapes.world import sample_scene

from .harness import Result, Timing, ratio


def run(pipe, n: int = 256, single: int = 32, repeats: int = 3) -> Result:
    rng = random.Random(0)
    scenes = [sample_scene(rng) for _ in range(n)]
    images = [render(s) for s in scenes]
    texts = [format_caption(describe(s)) for s in scenes]
    timings = Timing.interleaved({
        "batched_images": lambda: pipe.embed_images(images),
        "batched_texts": lambda: pipe.embed_texts(texts),
        "one_images": lambda: [pipe.embed_images([i]) for i in images[:single]],
        "one_texts": lambda: [pipe.embed_texts([t]) for t in texts[:single]],
    }, repeats)
    batched_images, batched_texts, one_images, one_texts = (
        timings[k] for k in ("batched_images", "batched_texts", "one_images", "one_texts"))
    figures = {
        "images_per_s": round(n / batched_images.median_s, 1),
        "images_per_s_one_at_a_time": round(single / one_images.median_s, 1),
        "texts_per_s": round(n / batched_texts.median_s, 1),
        "texts_per_s_one_at_a_time": round(single / one_texts.median_s, 1),
    }
    figures["image_batching_speedup"] = ratio(figures["images_per_s"], figures["images_per_s_one_at_a_time"])
    figures["text_batching_speedup"] = ratio(figures["texts_per_s"], figures["texts_per_s_one_at_a_time"])
    summary = (f"embed: {figures['images_per_s']} images/s (x{figures['image_batching_speedup']} vs one at a "
               f"time), {figures['texts_per_s']} texts/s (x{figures['text_batching_speedup']})")
    return Result("embed", figures, summary, goal="batching >= 5x faster; >= 300 images/s")
