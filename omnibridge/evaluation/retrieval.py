"""Retrieval: R@1/5/10 text->image, image->text and text->text (the Flickr30K protocol).

Each image has several equivalent captions; image->text hits when any of its captions is in the
top K, text->image when its image is, text->text when another caption of the same image is.

That protocol queries with a scene's whole description. A gallery user types less ("a red circle"),
which many scenes answer, so short queries are scored apart: precision of the top 1 and top 5 images
(P@5 over the queries that at least 5 scenes answer).
"""

from __future__ import annotations

import random

import numpy as np

from ..rerank import RERANK_TOP, rerank_order
from ..shapes.captions import describe, equivalent_captions, format_caption, partial_spec, query_holds
from ..shapes.render import render
from ..shapes.world import sample_scene

EVAL_SEED = 7_400_000
KS = (1, 5, 10)


def retrieval_dataset(n_scenes: int = 1000, seed: int = EVAL_SEED):
    """Held-out scenes with pairwise distinct descriptions, and their captions."""
    rng = random.Random(seed)
    scenes, seen = [], set()
    while len(scenes) < n_scenes:
        scene = sample_scene(rng)
        key = format_caption(describe(scene))
        if key not in seen:
            seen.add(key)
            scenes.append(scene)
    captions, owners = [], []
    for index, scene in enumerate(scenes):
        for caption in equivalent_captions(scene):
            captions.append(caption)
            owners.append(index)
    return scenes, captions, np.array(owners)


def recall_at_k(image_vectors: np.ndarray, text_vectors: np.ndarray, owners: np.ndarray) -> dict:
    sims = image_vectors @ text_vectors.T  # [images, texts]
    results = {}
    i2t_rank = np.argsort(-sims, axis=1)
    t2i_rank = np.argsort(-sims.T, axis=1)
    text_sims = text_vectors @ text_vectors.T
    np.fill_diagonal(text_sims, -np.inf)
    t2t_rank = np.argsort(-text_sims, axis=1)
    has_sibling = np.array([(owners == o).sum() > 1 for o in owners])
    for k in KS:
        results[f"i2t_R@{k}"] = float(np.mean((owners[i2t_rank[:, :k]] == np.arange(len(sims))[:, None]).any(1)))
        results[f"t2i_R@{k}"] = float(np.mean((t2i_rank[:, :k] == owners[:, None]).any(1)))
        hits = (owners[t2t_rank[:, :k]] == owners[:, None]).any(1)
        results[f"t2t_R@{k}"] = float(hits[has_sibling].mean())
    return {k: round(v, 4) for k, v in results.items()}


def partial_queries(scenes, seed: int = EVAL_SEED) -> tuple[list[str], np.ndarray]:
    """Distinct short queries, one drawn from each scene, and which scenes answer each: [queries, scenes]."""
    rng = random.Random(f"{seed}/partial")
    specs = {}
    for scene in scenes:
        spec = partial_spec(scene, rng)
        specs.setdefault(format_caption(spec), spec)
    answers = np.array([[query_holds(spec, scene) for scene in scenes] for spec in specs.values()])
    return list(specs), answers


def precision_at_k(query_vectors: np.ndarray, image_vectors: np.ndarray, answers: np.ndarray) -> dict:
    top = np.argsort(-(query_vectors @ image_vectors.T), axis=1)[:, :5]
    hits = np.take_along_axis(answers, top, axis=1)
    enough = answers.sum(1) >= 5  # a query with fewer answering scenes could not fill its top 5
    return {"partial_P@1": round(float(hits[:, 0].mean()), 4),
            "partial_P@5": round(float(hits[enough].mean()), 4) if enough.any() else None}


def evaluate_retrieval(pipe, n_scenes: int = 1000) -> dict:
    scenes, captions, owners = retrieval_dataset(n_scenes)
    images = [render(s) for s in scenes]
    image_vectors = pipe.embed_images(images)
    text_vectors = pipe.embed_texts(captions)
    queries, answers = partial_queries(scenes)
    partial = precision_at_k(pipe.embed_texts(queries), image_vectors, answers)
    report = {**recall_at_k(image_vectors, text_vectors, owners), **partial,
              "n_images": len(scenes), "n_texts": len(captions), "n_partial_queries": len(queries)}
    weight = pipe.config.retrieval.caption_rerank_weight
    if weight > 0:  # what the gallery's image -> captions search returns; the heads' own rows stay above
        report["i2t_R@1_reranked"] = reranked_i2t_recall(pipe, images, captions, owners,
                                                         image_vectors @ text_vectors.T, weight)
    return report


def reranked_i2t_recall(pipe, images, captions: list[str], owners: np.ndarray, sims: np.ndarray,
                        weight: float) -> float:
    """Image -> text R@1 once each image's top RERANK_TOP captions by cosine are re-ranked as the gallery does
    (rerank.py)."""
    top = np.argsort(-sims, axis=1)[:, :RERANK_TOP]
    likelihoods = pipe.description_log_likelihoods([images[i] for i, row in enumerate(top) for _ in row],
                                                   [captions[c] for row in top for c in row],
                                                   batch_size=64).reshape(top.shape)
    scale = pipe.retrieval_logit_scale
    firsts = [row[rerank_order(sims[i, row], likelihoods[i], scale, weight)[0]] for i, row in enumerate(top)]
    return round(float(np.mean(owners[firsts] == np.arange(len(images)))), 4)
