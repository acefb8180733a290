"""The caption grammar of the Shapes world: structured specs, text, parsing and user paraphrases.

A caption lists groups of identical objects ("a large red circle", "two blue squares") joined with
"and", or relates exactly two single objects ("a red circle to the left of a blue square"). The
same `CaptionSpec` drives rendering targets, the detector's checks and the model's training text.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from .world import COLOR_NAMES, SHAPES, SIZE_NAMES, Scene, ShapeObject, relation_between

NUMBER_WORDS = ("zero", "one", "two", "three", "four")
RELATION_PHRASES = {
    "left": "to the left of",
    "right": "to the right of",
    "above": "above",
    "below": "below",
}
INVERSE_RELATION = {"left": "right", "right": "left", "above": "below", "below": "above"}


@dataclass(frozen=True)
class Group:
    """`count` objects sharing a shape and, when given, a colour and a size."""

    count: int
    shape: str
    color: str | None = None
    size: str | None = None

    def accepts(self, obj) -> bool:
        return (
            obj.shape == self.shape
            and (self.color is None or obj.color == self.color)
            and (self.size is None or obj.size == self.size)
        )


@dataclass(frozen=True)
class CaptionSpec:
    groups: tuple[Group, ...]
    relation: tuple[int, str, int] | None = None  # (group index, relation, group index)

    @property
    def n_objects(self) -> int:
        return sum(group.count for group in self.groups)


def group_phrase(group: Group) -> str:
    article = "a" if group.count == 1 else NUMBER_WORDS[group.count]
    noun = group.shape if group.count == 1 else group.shape + "s"
    words = [article, group.size, group.color, noun]
    return " ".join(word for word in words if word)


def format_caption(spec: CaptionSpec) -> str:
    if spec.relation is not None:
        first, relation, second = spec.relation
        return (
            f"{group_phrase(spec.groups[first])} {RELATION_PHRASES[relation]} "
            f"{group_phrase(spec.groups[second])}"
        )
    return " and ".join(group_phrase(group) for group in spec.groups)


_COUNT = r"(a|an|one|two|three|four)"
_GROUP_RE = re.compile(
    rf"^{_COUNT} (?:({'|'.join(SIZE_NAMES)}) )?(?:({'|'.join(COLOR_NAMES)}) )?({'|'.join(SHAPES)})(s?)$"
)
_RELATION_RE = re.compile(
    r"^(.+?) (" + "|".join(re.escape(p) for p in RELATION_PHRASES.values()) + r") (.+)$"
)


def _parse_group(text: str) -> Group:
    match = _GROUP_RE.match(text)
    if not match:
        raise ValueError(f"not a Shapes object phrase: {text!r}")
    count_word, size, color, shape, plural = match.groups()
    count = 1 if count_word in ("a", "an", "one") else NUMBER_WORDS.index(count_word)
    if (count > 1) != bool(plural):
        raise ValueError(f"number and noun disagree in {text!r}")
    return Group(count=count, shape=shape, color=color, size=size)


def parse_caption(text: str) -> CaptionSpec:
    """Parse a caption of the grammar; raises ValueError for anything else."""
    text = " ".join(text.lower().strip().rstrip(".").split())
    relation_match = _RELATION_RE.match(text)
    if relation_match:
        first, phrase, second = relation_match.groups()
        relation = next(r for r, p in RELATION_PHRASES.items() if p == phrase)
        groups = (_parse_group(first), _parse_group(second))
        if any(group.count != 1 for group in groups):
            raise ValueError(f"relations hold between single objects: {text!r}")
        return CaptionSpec(groups=groups, relation=(0, relation, 1))
    groups = tuple(_parse_group(part) for part in text.split(" and "))
    spec = CaptionSpec(groups=groups)
    if not 1 <= spec.n_objects <= 4:
        raise ValueError(f"a scene holds 1 to 4 objects: {text!r}")
    return spec


def scene_groups(
    objects: tuple[ShapeObject, ...] | list[ShapeObject], with_size: bool = True, with_color: bool = True
) -> list[tuple[Group, list[ShapeObject]]]:
    """Group objects by the attributes a caption mentions, ordered left to right by their leftmost member."""
    buckets: dict[tuple, list[ShapeObject]] = {}
    for obj in objects:
        key = (obj.size if with_size else None, obj.color if with_color else None, obj.shape)
        buckets.setdefault(key, []).append(obj)
    ordered = sorted(buckets.items(), key=lambda item: (min(o.cx for o in item[1]), item[0][2]))
    return [(Group(len(members), key[2], key[1], key[0]), members) for key, members in ordered]


def describe(scene: Scene, with_size: bool = True, with_color: bool = True) -> CaptionSpec:
    """The canonical caption of a scene: every object, grouped, left to right."""
    return CaptionSpec(groups=tuple(group for group, _ in scene_groups(scene.objects, with_size, with_color)))


def partial_spec(scene: Scene, rng: random.Random) -> CaptionSpec:
    """A short query naming part of a scene, as a gallery user types it: one group of its description
    (sometimes two), each attribute left out half the time ("a red circle", "two squares")."""
    spec = describe(scene, with_size=rng.random() < 0.5, with_color=rng.random() < 0.5)
    n_groups = 2 if len(spec.groups) > 2 and rng.random() < 0.25 else 1
    return CaptionSpec(tuple(rng.sample(spec.groups, n_groups)))


def query_holds(spec: CaptionSpec, scene: Scene) -> bool:
    """Whether a scene answers a (possibly partial) query without a relation: every group is there,
    "a red circle" at least once (a second one does not make it wrong), "two red circles" exactly twice."""
    for group in spec.groups:
        present = sum(group.accepts(obj) for obj in scene.objects)
        if present < 1 or (group.count > 1 and present != group.count):
            return False
    return True


def relation_spec(
    scene: Scene, first: int = 0, with_size: bool = True, with_color: bool = True
) -> CaptionSpec | None:
    """A relation caption for a two-object scene, when a relation holds between them."""
    if len(scene) != 2:
        return None
    a, b = scene.objects[first], scene.objects[1 - first]
    relation = relation_between(a, b)
    if relation is None:
        return None

    def single(obj: ShapeObject) -> Group:
        return Group(1, obj.shape, obj.color if with_color else None, obj.size if with_size else None)

    return CaptionSpec(groups=(single(a), single(b)), relation=(0, relation, 1))


def equivalent_captions(scene: Scene, limit: int = 5) -> list[str]:
    """Several captions that state the same full content (Flickr30K-style positives for retrieval)."""
    canonical = describe(scene)
    captions = [format_caption(canonical)]
    for first in (0, 1):
        spec = relation_spec(scene, first=first)
        if spec is not None:
            captions.append(format_caption(spec))
    groups = list(canonical.groups)
    if len(groups) > 1:
        captions.append(format_caption(CaptionSpec(tuple(reversed(groups)))))
        for shift in range(1, len(groups)):
            rotated = groups[shift:] + groups[:shift]
            captions.append(format_caption(CaptionSpec(tuple(rotated))))
    unique = list(dict.fromkeys(captions))
    return unique[:limit]


_PROMPT_TEMPLATES = (
    "{c}",
    "draw {c}",
    "draw {c} please",
    "please draw {c}",
    "can you draw {c}?",
    "could you draw {c} for me",
    "show me {c}",
    "make a picture of {c}",
    "generate an image of {c}",
    "create an image with {c}",
    "paint {c}",
    "i want {c}",
    "i'd like a picture with {c}",
    "an image of {c}",
    "a picture showing {c}",
    "render {c}",
    "sketch {c}",
)
_DIGITS = {"one": "1", "two": "2", "three": "3", "four": "4"}


def paraphrase_prompt(rng: random.Random, caption: str) -> str:
    """A free-form user prompt that means `caption` (what the LLM's rewrite step must undo)."""
    text = caption
    if rng.random() < 0.25:
        text = re.sub(r"\b(two|three|four)\b", lambda m: _DIGITS[m.group(1)], text)
    text = rng.choice(_PROMPT_TEMPLATES).format(c=text)
    if rng.random() < 0.3:
        text = text[0].upper() + text[1:]
    if rng.random() < 0.2 and not text.endswith("?"):
        text += rng.choice([".", "!"])
    return text
