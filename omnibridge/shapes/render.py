"""Rasterise a scene into a 64 x 64 RGB image (hard edges, flat colours, no anti-aliasing)."""

from __future__ import annotations

import numpy as np
from PIL import Image

from .world import BACKGROUND, CANVAS, COLORS, Scene, ShapeObject


def object_mask(obj: ShapeObject) -> np.ndarray:
    """Boolean [side, side] footprint of an object inside its bounding box."""
    side = obj.side
    centre = (np.arange(side) + 0.5) - side / 2  # pixel centres relative to the box centre
    ys, xs = np.meshgrid(centre, centre, indexing="ij")
    if obj.shape == "square":
        return np.ones((side, side), dtype=bool)
    if obj.shape == "circle":
        return xs**2 + ys**2 <= (side / 2) ** 2
    if obj.shape == "triangle":
        # Upright isosceles triangle: apex at the top centre, base on the bottom row.
        depth = (ys + side / 2) / side  # 0 at the top edge, 1 at the bottom edge
        return np.abs(xs) <= depth * side / 2
    raise ValueError(f"unknown shape {obj.shape!r}")


def render_array(scene: Scene) -> np.ndarray:
    canvas = np.empty((CANVAS, CANVAS, 3), dtype=np.uint8)
    canvas[:] = BACKGROUND
    for obj in scene.objects:
        region = canvas[obj.y0 : obj.y1, obj.x0 : obj.x1]
        region[object_mask(obj)] = COLORS[obj.color]
    return canvas


def render(scene: Scene) -> Image.Image:
    return Image.fromarray(render_array(scene), mode="RGB")
