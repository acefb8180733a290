"""Editing instructions with the scene they should produce.

OmniBridge edits by regenerating from a rewritten caption, so an edit is judged by the content of
the resulting scene (its target caption), never by pixels.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from .captions import CaptionSpec, describe, format_caption, relation_spec
from .world import (
    COLOR_NAMES,
    SHAPES,
    SIZE_NAMES,
    ObjectSpec,
    Scene,
    ShapeObject,
    place_objects,
    relation_holds,
    with_object,
)

EDIT_TYPES = ("recolor", "remove", "add", "move")
_MOVE_WORDS = {"left": "to the left", "right": "to the right", "above": "up", "below": "down"}


@dataclass(frozen=True)
class EditExample:
    etype: str
    instruction: str
    source: Scene
    target: Scene
    target_spec: CaptionSpec

    @property
    def target_caption(self) -> str:
        return format_caption(self.target_spec)


def _reference(scene: Scene, obj: ShapeObject) -> str | None:
    """The shortest unambiguous name of an object: "the circle" or "the red circle"."""
    if sum(o.shape == obj.shape for o in scene.objects) == 1:
        return f"the {obj.shape}"
    if sum(o.shape == obj.shape and o.color == obj.color for o in scene.objects) == 1:
        return f"the {obj.color} {obj.shape}"
    return None


def _nameable(scene: Scene) -> list[int]:
    return [i for i, o in enumerate(scene.objects) if _reference(scene, o)]


def _recolor(rng: random.Random, scene: Scene) -> EditExample | None:
    indices = _nameable(scene)
    if not indices:
        return None
    index = rng.choice(indices)
    obj = scene.objects[index]
    new_color = rng.choice([c for c in COLOR_NAMES if c != obj.color])
    target = with_object(scene, index, color=new_color)
    return EditExample("recolor", f"make {_reference(scene, obj)} {new_color}", scene, target, describe(target))


def _remove(rng: random.Random, scene: Scene) -> EditExample | None:
    indices = _nameable(scene) if len(scene) > 1 else []
    if not indices:
        return None
    index = rng.choice(indices)
    target = Scene(tuple(o for i, o in enumerate(scene.objects) if i != index))
    return EditExample(
        "remove", f"remove {_reference(scene, scene.objects[index])}", scene, target, describe(target)
    )


def _add(rng: random.Random, scene: Scene) -> EditExample | None:
    if len(scene) >= 4:
        return None
    spec = ObjectSpec(rng.choice(SHAPES), rng.choice(COLOR_NAMES), rng.choice(SIZE_NAMES))
    try:
        target = place_objects(rng, [spec], existing=scene.objects)
    except RuntimeError:  # a crowded canvas may have no room left
        return None
    instruction = f"add a {spec.size} {spec.color} {spec.shape}"
    return EditExample("add", instruction, scene, target, describe(target))


def _move(rng: random.Random, scene: Scene) -> EditExample | None:
    """Move one of two objects so that it ends up on the named side of the other."""
    movable = [i for i in (0, 1) if len(scene) == 2 and _reference(scene, scene.objects[i])]
    if not movable:
        return None
    index = rng.choice(movable)
    mover, anchor = scene.objects[index], scene.objects[1 - index]
    direction = rng.choice([d for d in _MOVE_WORDS if not relation_holds(mover, anchor, d)])
    spec = ObjectSpec(mover.shape, mover.color, mover.size)
    try:
        placed = place_objects(rng, [spec], relation=(1, direction, 0), existing=(anchor,))
    except RuntimeError:
        return None
    target = Scene((placed.objects[1], anchor))
    instruction = f"move {_reference(scene, mover)} {_MOVE_WORDS[direction]}"
    return EditExample("move", instruction, scene, target, relation_spec(target, first=0))


_BUILDERS = {"recolor": _recolor, "remove": _remove, "add": _add, "move": _move}


def sample_edit(rng: random.Random, scene: Scene, etype: str | None = None) -> EditExample | None:
    """An edit of `etype` (random when None) for this scene; None when that edit does not apply."""
    etype = etype or rng.choice(EDIT_TYPES)
    return _BUILDERS[etype](rng, scene)
