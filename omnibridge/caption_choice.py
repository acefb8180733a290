"""Choosing an edit's target caption among the LLM's beams: the one that changes the fewest objects.

An edit changes one thing. When the LLM writes an edit's target caption, its single best beam is often
wrong in something the instruction never touched (an object's size, a colour), while one of its next
beams is right: on the built-in model's validation edits the top beam shows the right scene about 70% of
the time and one of four beams about 90%. The model can tell them apart by itself: it describes the
source image, and the beam that changes the fewest objects of that description, while still changing
something, is kept (ties go to the better beam). A recoloured object counts as one change, like one added
or removed: counting it as one dropped plus one added let wrong removals beat right recolours (recolours
0.83 -> 0.68). Nothing outside the model decides; the description is the model's own, so its mistakes
cost some picks (README, evaluation; `scripts/edit_caption_choice_study.py`).

Captions in the Shapes grammar are compared as scenes, so "two red circles" and "a red circle and a red
circle" are the same objects, and a caption that only adds a relation ("... to the left of ...") is a
move. Any other text is compared as a bag of words. When the source is in the grammar, a beam that is not
(a garbled "a small white trianglea triangle and ...") ranks after every beam that is: as words it differs
from the source by one, so it used to win over a right beam that changes two objects.
"""

from __future__ import annotations

from collections import Counter

from .shapes.captions import parse_caption

NO_CHANGE = 100  # a caption that changes nothing ranks after any caption that changes something


def caption_scene(caption: str) -> tuple[Counter, tuple | None] | None:
    """The caption's objects as (size, colour, shape) counts and its relation as (group, word, group);
    None outside the Shapes grammar."""
    try:
        spec = parse_caption(caption)
    except ValueError:
        return None
    objects = Counter()
    for group in spec.groups:
        objects[(group.size, group.color, group.shape)] += group.count
    relation = None
    if spec.relation is not None:
        first, word, second = spec.relation
        relation = (spec.groups[first], word, spec.groups[second])
    return objects, relation


def caption_change(source: str, candidate: str) -> int:
    """How many objects of the scene `source` describes `candidate` changes (words, outside the Shapes
    grammar): each dropped one paired with an added one is one change (a recolour), the rest one each.
    NO_CHANGE when it changes nothing."""
    source_scene, candidate_scene = caption_scene(source), caption_scene(candidate)
    if source_scene is None or candidate_scene is None:
        before, after, relation = Counter(source.lower().split()), Counter(candidate.lower().split()), None
    else:
        (before, _), (after, relation) = source_scene, candidate_scene
    changed = max(sum((before - after).values()), sum((after - before).values()))
    return NO_CHANGE if changed == 0 and relation is None else changed


def leaves_grammar(source: str, candidate: str) -> bool:
    """Whether `candidate` is outside the Shapes grammar that `source` is written in (a garbled beam); never
    for a free-text source, whose candidates are compared as words."""
    return caption_scene(source) is not None and caption_scene(candidate) is None


def least_change(source: str, candidates: list[str]) -> int:
    """Index of the candidate that changes `source` least; the earlier (better) beam on a tie. A candidate
    outside the grammar that `source` is written in comes after those inside it."""
    if not candidates:
        raise ValueError("no candidate captions to choose from")
    return min(range(len(candidates)), key=lambda i: (leaves_grammar(source, candidates[i]),
                                                      caption_change(source, candidates[i]), i))
