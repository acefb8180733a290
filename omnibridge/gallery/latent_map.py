"""A 2-D map of the shared latent space: images and captions projected together.

OmniBridge's claim is one space for both modalities; the map makes it visible: PCA fitted on the
gallery's image and caption vectors, each image joined to its caption by a line, the current query
drawn among them. Large galleries are subsampled for drawing (the response says how many).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class MapPoint:
    id: str
    kind: str  # "image" or "caption"
    source: str
    x: float
    y: float
    caption: str


@dataclass
class LatentMap:
    points: list[MapPoint]
    query: tuple[float, float] | None
    total_items: int
    drawn_items: int
    explained_variance: tuple[float, float]

    def to_dict(self) -> dict:
        return {"points": [vars(p) for p in self.points], "query": self.query, "total_items": self.total_items,
                "drawn_items": self.drawn_items, "explained_variance": self.explained_variance}


def fit_pca(vectors: np.ndarray, components: int = 2) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean, components [k, D], explained variance ratios) by SVD of the centred vectors."""
    mean = vectors.mean(0)
    centred = vectors - mean
    _, singular, vt = np.linalg.svd(centred, full_matrices=False)
    variance = singular**2
    ratios = variance / max(float(variance.sum()), 1e-12)
    basis = vt[:components]
    if basis.shape[0] < components:  # fewer items than dimensions asked: pad with zeros
        basis = np.vstack([basis, np.zeros((components - basis.shape[0], vectors.shape[1]))])
        ratios = np.concatenate([ratios, np.zeros(components)])
    return mean, basis, ratios[:components]


def build_latent_map(store, limit: int = 800, query: np.ndarray | None = None) -> LatentMap:
    data = store.all_vectors(limit=limit)
    images, captions = data["image_vectors"], data["caption_vectors"]
    if len(images) == 0:
        return LatentMap([], None, 0, 0, (0.0, 0.0))
    stacked = images if len(captions) == 0 else np.vstack([images, captions])
    mean, basis, ratios = fit_pca(stacked)
    project = lambda v: (np.asarray(v, dtype=np.float32) - mean) @ basis.T  # noqa: E731
    image_xy, caption_xy = project(images), project(captions) if len(captions) else np.zeros((0, 2))
    caption_by_id = dict(zip(data["caption_ids"], data["captions"]))
    points = [MapPoint(item_id, "image", meta.get("source", ""), float(x), float(y),
                       caption_by_id.get(item_id, ""))
              for item_id, meta, (x, y) in zip(data["ids"], data["metadatas"], image_xy)]
    source_by_id = {p.id: p.source for p in points}
    points += [MapPoint(item_id, "caption", source_by_id.get(item_id, ""), float(x), float(y), text)
               for item_id, text, (x, y) in zip(data["caption_ids"], data["captions"], caption_xy)]
    query_xy = tuple(float(v) for v in project(query)) if query is not None else None
    return LatentMap(points, query_xy, data["total"], len(data["ids"]), (float(ratios[0]), float(ratios[1])))
