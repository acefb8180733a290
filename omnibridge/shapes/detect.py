"""A detector for Shapes images, and the check that a generated image shows what a caption asks.

Nearest-palette colour segmentation, connected components, then shape by the fill ratio of each
component's bounding box (circle ~0.79, square ~1.0, triangle ~0.5). It is exact on renders, so
every error it reports on a generated image is the generator's.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from itertools import combinations, permutations

import numpy as np
from PIL import Image

from .captions import CaptionSpec
from .world import BACKGROUND, COLOR_NAMES, COLORS, SIZES, relation_holds

_PALETTE = np.array([BACKGROUND] + [COLORS[name] for name in COLOR_NAMES], dtype=np.float32)
MIN_AREA = 14  # smaller components are noise: the smallest object (an 8 px triangle) covers ~36 px
MAX_ASPECT = 1.45  # wider or taller boxes are merged blobs, not one of the three shapes
SMALL_MAX_SIDE = (SIZES["small"][1] + SIZES["large"][0]) // 2  # 12: the midpoint between the classes


@dataclass(frozen=True)
class DetectedObject:
    shape: str  # "circle", "square", "triangle" or "unknown"
    color: str
    size: str
    cx: float  # bounding-box centre, as the contract's relations use
    cy: float
    side: int  # the larger side of the bounding box
    fill: float


def segment(image: Image.Image | np.ndarray) -> np.ndarray:
    """[H, W] palette index per pixel: 0 is the background, i > 0 is COLOR_NAMES[i - 1]."""
    pixels = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image, dtype=np.float32)
    distances = ((pixels[:, :, None, :] - _PALETTE[None, None]) ** 2).sum(-1)
    return distances.argmin(-1)


def _components(mask: np.ndarray) -> list[np.ndarray]:
    """8-connected components of a boolean mask, each as an [N, 2] array of (y, x)."""
    seen = np.zeros_like(mask, dtype=bool)
    height, width = mask.shape
    components = []
    for start_y, start_x in zip(*np.nonzero(mask)):
        if seen[start_y, start_x]:
            continue
        stack, members = [(start_y, start_x)], []
        seen[start_y, start_x] = True
        while stack:
            y, x = stack.pop()
            members.append((y, x))
            for ny in (y - 1, y, y + 1):
                for nx in (x - 1, x, x + 1):
                    if 0 <= ny < height and 0 <= nx < width and mask[ny, nx] and not seen[ny, nx]:
                        seen[ny, nx] = True
                        stack.append((ny, nx))
        components.append(np.array(members))
    return components


def classify_shape(fill: float) -> str:
    if fill < 0.64:
        return "triangle"
    if fill < 0.9:
        return "circle"
    return "square"


def detect(image: Image.Image | np.ndarray) -> list[DetectedObject]:
    labels = segment(image)
    found = []
    for index, color in enumerate(COLOR_NAMES, start=1):
        for members in _components(labels == index):
            if len(members) < MIN_AREA:
                continue
            y0, x0 = members.min(0)
            y1, x1 = members.max(0) + 1
            height, width = y1 - y0, x1 - x0
            fill = len(members) / float(height * width)
            blob = max(height, width) / min(height, width) > MAX_ASPECT
            side = int(max(height, width))
            found.append(
                DetectedObject(
                    shape="unknown" if blob else classify_shape(fill),
                    color=color,
                    size="small" if side <= SMALL_MAX_SIDE else "large",
                    cx=(x0 + x1) / 2,
                    cy=(y0 + y1) / 2,
                    side=side,
                    fill=fill,
                )
            )
    return found


def _assign(spec: CaptionSpec, objects: list[DetectedObject]) -> list[list[DetectedObject]] | None:
    """Split detections among the caption's groups so that each group gets exactly its count."""
    groups = spec.groups

    def solve(index: int, remaining: list[DetectedObject]) -> list[list[DetectedObject]] | None:
        if index == len(groups):
            return [] if not remaining else None
        group = groups[index]
        candidates = [o for o in remaining if group.accepts(o)]
        if len(candidates) < group.count:
            return None
        for chosen in combinations(range(len(candidates)), group.count):
            picked = [candidates[i] for i in chosen]
            rest = [o for o in remaining if all(o is not p for p in picked)]
            tail = solve(index + 1, rest)
            if tail is not None:
                return [picked] + tail
        return None

    return solve(0, list(objects))


def matches_spec(objects: list[DetectedObject], spec: CaptionSpec) -> bool:
    """True when the detections are exactly the caption's objects (and its relation holds)."""
    if len(objects) != spec.n_objects:
        return False

    def check(assignment: list[list[DetectedObject]]) -> bool:
        if spec.relation is None:
            return True
        first, relation, second = spec.relation
        return relation_holds(assignment[first][0], assignment[second][0], relation)

    # Try every assignment when a relation is asked: two groups may accept the same detections.
    if spec.relation is None:
        return _assign(spec, objects) is not None
    for ordering in permutations(objects):
        assignment = _assign(spec, list(ordering))
        if assignment is not None and check(assignment):
            return True
    return False


MISMATCHES = ("count", "shape", "colour", "size", "relation")


def mismatch(objects: list[DetectedObject], spec: CaptionSpec) -> str | None:
    """What is wrong with the detections against the caption, the first of MISMATCHES that fails (None: they
    match). Each check adds one attribute to the last, so "colour" means the shapes were right."""
    if len(objects) != spec.n_objects:
        return "count"
    for reason, keep in (("shape", dict(color=None, size=None)), ("colour", dict(size=None)), ("size", {})):
        loosened = CaptionSpec(tuple(replace(group, **keep) for group in spec.groups))
        if _assign(loosened, objects) is None:
            return reason
    return None if matches_spec(objects, spec) else "relation"


def image_matches(image: Image.Image | np.ndarray, spec: CaptionSpec) -> bool:
    return matches_spec(detect(image), spec)
