"""The Shapes world: objects, scenes, relations and a seeded scene sampler.

Everything here follows `shared/design/shapes-world.md` (the data contract of the built-in model):
a 64 x 64 canvas, three shapes, six colours, two sizes, 1-4 non-overlapping objects, and relations
decided between object centres by a fixed rule.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

CANVAS = 64
BACKGROUND = (24, 24, 24)
SHAPES = ("circle", "square", "triangle")
COLORS = {
    "red": (220, 40, 40),
    "green": (40, 180, 70),
    "blue": (50, 90, 230),
    "yellow": (235, 215, 40),
    "purple": (150, 70, 200),
    "white": (235, 235, 235),
}
COLOR_NAMES = tuple(COLORS)
SIZES = {"small": (8, 11), "large": (14, 18)}  # bounding-box side in pixels, inclusive
SIZE_NAMES = tuple(SIZES)
RELATIONS = ("left", "right", "above", "below")
MIN_GAP = 2  # pixels between bounding boxes
MARGIN = 1  # objects never touch the canvas border
MAX_OBJECTS = 4
RELATION_OFFSET = 6  # a relation needs the centres this many pixels apart on its axis


@dataclass(frozen=True)
class ShapeObject:
    """One flat-coloured object; (x0, y0) is its top-left pixel and `side` its bounding-box side."""

    shape: str
    color: str
    size: str
    x0: int
    y0: int
    side: int

    @property
    def x1(self) -> int:  # exclusive
        return self.x0 + self.side

    @property
    def y1(self) -> int:  # exclusive
        return self.y0 + self.side

    @property
    def cx(self) -> float:
        return self.x0 + self.side / 2

    @property
    def cy(self) -> float:
        return self.y0 + self.side / 2


@dataclass(frozen=True)
class Scene:
    objects: tuple[ShapeObject, ...]

    def __len__(self) -> int:
        return len(self.objects)


def grid_cell(centre: float, cells_per_side: int) -> int:
    """The row (from a y) or column (from an x) of the square grid cell that holds a centre."""
    return min(int(centre * cells_per_side / CANVAS), cells_per_side - 1)


def centre_cell_index(obj: "ShapeObject", cells_per_side: int) -> int:
    """The row-major index of the grid cell that holds an object's centre (on the eye's grid: its token)."""
    return grid_cell(obj.cy, cells_per_side) * cells_per_side + grid_cell(obj.cx, cells_per_side)


def relation_holds(a: ShapeObject, b: ShapeObject, relation: str) -> bool:
    """The contract's rule between object centres: `a <relation> b`."""
    dx, dy = a.cx - b.cx, a.cy - b.cy
    if relation == "left":
        return dx < -RELATION_OFFSET and abs(dy) < abs(dx)
    if relation == "right":
        return dx > RELATION_OFFSET and abs(dy) < abs(dx)
    if relation == "above":
        return dy < -RELATION_OFFSET and abs(dx) < abs(dy)
    if relation == "below":
        return dy > RELATION_OFFSET and abs(dx) < abs(dy)
    raise ValueError(f"unknown relation {relation!r}")


def relation_between(a: ShapeObject, b: ShapeObject) -> str | None:
    """The relation of `a` to `b` that holds, or None when none does."""
    for relation in RELATIONS:
        if relation_holds(a, b, relation):
            return relation
    return None


def _boxes_clear(a: ShapeObject, b: ShapeObject) -> bool:
    return (
        a.x1 + MIN_GAP <= b.x0
        or b.x1 + MIN_GAP <= a.x0
        or a.y1 + MIN_GAP <= b.y0
        or b.y1 + MIN_GAP <= a.y0
    )


def fits(scene_objects: tuple[ShapeObject, ...] | list[ShapeObject], candidate: ShapeObject) -> bool:
    inside = (
        candidate.x0 >= MARGIN
        and candidate.y0 >= MARGIN
        and candidate.x1 <= CANVAS - MARGIN
        and candidate.y1 <= CANVAS - MARGIN
    )
    return inside and all(_boxes_clear(candidate, other) for other in scene_objects)


@dataclass(frozen=True)
class ObjectSpec:
    """What to place: any field left None is drawn at random."""

    shape: str | None = None
    color: str | None = None
    size: str | None = None


def _draw_object(rng: random.Random, spec: ObjectSpec) -> ShapeObject:
    size = spec.size or rng.choice(SIZE_NAMES)
    side = rng.randint(*SIZES[size])
    x0 = rng.randint(MARGIN, CANVAS - MARGIN - side)
    y0 = rng.randint(MARGIN, CANVAS - MARGIN - side)
    return ShapeObject(
        shape=spec.shape or rng.choice(SHAPES),
        color=spec.color or rng.choice(COLOR_NAMES),
        size=size,
        x0=x0,
        y0=y0,
        side=side,
    )


def place_objects(
    rng: random.Random,
    specs: list[ObjectSpec],
    relation: tuple[int, str, int] | None = None,
    existing: tuple[ShapeObject, ...] = (),
    attempts: int = 200,
) -> Scene:
    """Place new objects at random beside `existing` ones, without overlap.

    `relation=(i, rel, j)` indexes the resulting scene (existing objects first) and demands that
    `i rel j` holds. Rejection sampling succeeds quickly for at most four objects on this canvas,
    and a demanded relation holds for a good share of random placements, so 200 attempts are ample.
    """
    for _ in range(attempts):
        placed: list[ShapeObject] = list(existing)
        for spec in specs:
            for _ in range(50):
                candidate = _draw_object(rng, spec)
                if fits(placed, candidate):
                    placed.append(candidate)
                    break
            else:
                break
        if len(placed) != len(existing) + len(specs):
            continue
        if relation is not None and not relation_holds(placed[relation[0]], placed[relation[2]], relation[1]):
            continue
        return Scene(tuple(placed))
    raise RuntimeError(f"could not place {specs} beside {len(existing)} objects with relation {relation}")


def sample_scene(rng: random.Random, n_objects: int | None = None) -> Scene:
    """A random scene of 1-4 objects (all attributes uniform)."""
    n = n_objects or rng.randint(1, MAX_OBJECTS)
    return place_objects(rng, [ObjectSpec() for _ in range(n)])


def with_object(scene: Scene, index: int, **changes) -> Scene:
    objects = list(scene.objects)
    objects[index] = replace(objects[index], **changes)
    return Scene(tuple(objects))
