"""Caption -> image pairs for the decoder (the stand-in for HunyuanDiT's own pretraining data).

Every caption names every object in its scene (so the evaluator's "exactly these objects" is what
the decoder learns), but attributes are often left out, because users and the GenEval-style
prompts ask for "a circle" or "two squares" without colours or sizes.
"""

from __future__ import annotations

import random

from ..shapes.captions import describe, format_caption, relation_spec
from ..shapes.world import RELATIONS, SHAPES, ObjectSpec, Scene, place_objects, sample_scene

# Scene kinds and their shares. Early training over-samples single objects and relations: the
# layout of one or two objects is what the model must get right before it can count or bind.
EARLY_MIX = {"single": 0.30, "count": 0.12, "groups": 0.18, "relation": 0.40}
MAIN_MIX = {"single": 0.18, "count": 0.22, "groups": 0.28, "relation": 0.32}


def _pick(rng: random.Random, mix: dict[str, float]) -> str:
    return rng.choices(list(mix), weights=list(mix.values()))[0]


def sample_decoder_pair(rng: random.Random, early: bool = False) -> tuple[Scene, str]:
    kind = _pick(rng, EARLY_MIX if early else MAIN_MIX)
    if kind == "single":
        scene = sample_scene(rng, 1)
        spec = describe(scene, with_size=rng.random() < 0.3, with_color=rng.random() < 0.7)
    elif kind == "count":
        shape, n = rng.choice(SHAPES), rng.randint(2, 4)
        same_color = rng.random() < 0.6
        color = rng.choice(("red", "green", "blue", "yellow", "purple", "white"))
        scene = place_objects(rng, [ObjectSpec(shape, color if same_color else None) for _ in range(n)])
        spec = describe(scene, with_size=False, with_color=same_color)
    elif kind == "groups":
        scene = sample_scene(rng, rng.randint(2, 4))
        spec = describe(scene, with_size=rng.random() < 0.3, with_color=rng.random() < 0.7)
    else:
        relation = rng.choice(RELATIONS)
        scene = place_objects(rng, [ObjectSpec(), ObjectSpec()], relation=(0, relation, 1))
        spec = relation_spec(scene, first=0, with_size=rng.random() < 0.2, with_color=rng.random() < 0.9)
    return scene, format_caption(spec)
