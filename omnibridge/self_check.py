"""Self-check: draw several candidates per image and keep the one the model itself rates closest.

A unified model can judge its own drawings: the retrieval embeddings come from the same LLM that
wrote the caption, so the cosine between a candidate's image vector and the caption's text vector
says how well the candidate shows the caption. Drawing `candidates` images per image asked for and
keeping the best one trades time (one batched denoising loop, `candidates` times as wide) for
accuracy, as best-of-N reranking with CLIP did for DALL-E. Nothing outside the model decides.

Seeds stay reproducible: candidate j of image i (of n asked for) draws seed `seeds[i] + j * n`, so
candidate 0 is the image a call without the self-check would have drawn, and the seed written back
for a kept image redraws it on its own.
"""

from __future__ import annotations

import numpy as np

MAX_CANDIDATES = 8


def candidate_seeds(seeds: list[int], candidates: int, max_seed: int) -> list[int]:
    """The seeds of every draw, image-major: image 0's candidates first."""
    n = len(seeds)
    return [(seed + j * n) % (max_seed + 1) for seed in seeds for j in range(candidates)]


def best_candidates(scores: np.ndarray, candidates: int) -> list[int]:
    """Indices (into the image-major draws) of each image's best-scoring candidate."""
    grouped = np.asarray(scores, dtype=np.float64).reshape(-1, candidates)
    return [row * candidates + int(best) for row, best in enumerate(grouped.argmax(axis=1))]
