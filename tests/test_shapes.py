"""The Shapes world keeps its contract (shared/design/shapes-world.md)."""

import collections
import random
import re

import numpy as np
import pytest

from omnibridge.shapes import (
    COLORS,
    EDIT_TYPES,
    QUESTION_TYPES,
    describe,
    detect,
    equivalent_captions,
    format_caption,
    image_matches,
    matches_spec,
    paraphrase_prompt,
    parse_caption,
    render,
    render_array,
    sample_edit,
    sample_question,
    sample_scene,
)
from omnibridge.shapes.captions import relation_spec
from omnibridge.shapes.detect import mismatch
from omnibridge.shapes.world import (BACKGROUND, MIN_GAP, SIZES, ObjectSpec, place_objects, relation_between,
                                     relation_holds)

SCENES = [sample_scene(random.Random(seed)) for seed in range(300)]


def test_scenes_follow_the_contract():
    for scene in SCENES:
        assert 1 <= len(scene) <= 4
        for obj in scene.objects:
            low, high = SIZES[obj.size]
            assert low <= obj.side <= high
            assert obj.x0 >= 1 and obj.y0 >= 1 and obj.x1 <= 63 and obj.y1 <= 63  # never touches the border
        for i, a in enumerate(scene.objects):
            for b in scene.objects[i + 1:]:
                gap_x = max(b.x0 - a.x1, a.x0 - b.x1)
                gap_y = max(b.y0 - a.y1, a.y0 - b.y1)
                assert max(gap_x, gap_y) >= MIN_GAP


def test_render_uses_only_the_palette_and_background():
    palette = {tuple(c) for c in COLORS.values()} | {BACKGROUND}
    for scene in SCENES[:50]:
        pixels = {tuple(p) for p in render_array(scene).reshape(-1, 3)}
        assert pixels <= palette
        assert render(scene).size == (64, 64)


def test_detector_is_exact_on_renders():
    for scene in SCENES:
        found = detect(render(scene))
        assert sorted((o.shape, o.color, o.size) for o in found) == sorted(
            (o.shape, o.color, o.size) for o in scene.objects)
        assert image_matches(render(scene), describe(scene))


def test_detector_rejects_wrong_scenes():
    scene = SCENES[0]
    wrong = parse_caption("four white triangles")
    assert not image_matches(render(scene), wrong) or describe(scene) == wrong
    blank = np.full((64, 64, 3), BACKGROUND, dtype=np.uint8)
    assert detect(blank) == []
    assert not matches_spec([], parse_caption("a circle"))


def test_a_mismatch_names_the_first_thing_an_image_gets_wrong():
    """The evaluation's failure breakdown: count, then shape, colour, size, relation, each on top of the last."""
    rng = random.Random(3)
    scene = place_objects(rng, [ObjectSpec("circle", "red", "large"), ObjectSpec("square", "blue", "small")],
                          relation=(0, "left", 1))
    found = detect(render(scene))
    asked = {
        None: "a large red circle to the left of a small blue square",
        "count": "a red circle",
        "shape": "a red triangle and a blue square",
        "colour": "a green circle and a blue square",
        "size": "a small red circle and a small blue square",
        "relation": "a red circle to the right of a blue square",
    }
    for expected, caption in asked.items():
        assert mismatch(found, parse_caption(caption)) == expected, caption
        assert image_matches(render(scene), parse_caption(caption)) == (expected is None)


def test_relation_rule():
    two = [s for s in SCENES if len(s) == 2]
    for scene in two:
        a, b = scene.objects
        relation = relation_between(a, b)
        if relation:
            dx, dy = a.cx - b.cx, a.cy - b.cy
            if relation in ("left", "right"):
                assert abs(dx) > 6 and abs(dy) < abs(dx)
            else:
                assert abs(dy) > 6 and abs(dx) < abs(dy)
            inverse = {"left": "right", "right": "left", "above": "below", "below": "above"}[relation]
            assert relation_holds(b, a, inverse)
            spec = relation_spec(scene)
            assert image_matches(render(scene), spec)


@pytest.mark.parametrize("caption", [
    "a large red circle", "a blue square", "two green triangles", "three white squares",
    "a red circle and two blue squares", "a red circle to the left of a blue square",
    "a yellow triangle above a purple circle", "four circles",
])
def test_caption_grammar_round_trips(caption):
    assert format_caption(parse_caption(caption)) == caption


@pytest.mark.parametrize("bad", ["", "a dog", "two circle", "five squares", "a circle and and a square",
                                 "two circles to the left of a square"])
def test_parse_rejects_text_outside_the_grammar(bad):
    with pytest.raises(ValueError):
        parse_caption(bad)


def test_equivalent_captions_all_describe_the_scene():
    for scene in SCENES[:80]:
        for caption in equivalent_captions(scene):
            assert image_matches(render(scene), parse_caption(caption)), caption


def test_questions_have_correct_answers():
    rng = random.Random(3)
    for scene in SCENES[:100]:
        for qtype in QUESTION_TYPES:
            qa = sample_question(rng, scene, qtype)
            if qa is None:
                continue
            if qtype == "count" and qa.question.startswith("How many") and " objects " not in qa.question:
                words = qa.question.split()
                shape = words[-3].rstrip("s")
                if len(words) == 5:  # How many circles are there?
                    assert qa.answer == ["zero", "one", "two", "three", "four"][
                        sum(o.shape == shape for o in scene.objects)]
            if qtype == "describe":
                assert qa.answer == format_caption(describe(scene))
            if qtype == "exist":
                assert qa.answer in ("yes", "no")


def test_relation_and_describe_answers_carry_their_working_in_eighths_of_the_canvas():
    from omnibridge.shapes.qa import ANSWER_AFTER, WORKING_TYPES, position_working
    from omnibridge.shapes.world import ShapeObject

    # centre (45, 11): column 45 * 8 // 64 = 5, row 11 * 8 // 64 = 1
    assert position_working(ShapeObject("circle", "red", "small", 40, 6, 10)) == "red circle (5, 1)"
    assert position_working(ShapeObject("circle", "red", "small", 40, 6, 10), with_size=True) == "small red circle (5, 1)"
    rng = random.Random(8)
    relations = 0
    for scene in SCENES[:150]:
        for qtype in QUESTION_TYPES:
            qa = sample_question(rng, scene, qtype)
            if qa is None:
                continue
            if qtype not in WORKING_TYPES:
                assert qa.working == "" and qa.reply == qa.answer
                continue
            if qtype == "describe":  # every object with its size and position, left to right as the caption
                listed = re.findall(r"(\w+) (\w+) (\w+) \((\d), (\d)\)", qa.working)
                assert sorted(listed) == sorted((o.size, o.color, o.shape, str(int(o.cx * 8 // 64)), str(int(o.cy * 8 // 64)))
                                                for o in scene.objects)
                assert [column for *_, column, _ in listed] == sorted(column for *_, column, _ in listed)
                assert qa.reply == qa.working + ANSWER_AFTER + format_caption(describe(scene))
                continue
            relations += 1
            named = re.findall(r"the (\w+) (\w+)", qa.question)  # "... the red circle ... the blue square?"
            a, b = (next(o for o in scene.objects if (o.color, o.shape) == pair) for pair in named)
            assert qa.working == f"{position_working(a)}, {position_working(b)}"
            assert qa.reply == qa.working + ANSWER_AFTER + qa.answer and qa.answer in (
                "yes", "no", "left", "right", "above", "below")
    assert relations > 40


def test_questions_about_one_object_name_it_so_stage1_can_point_at_it():
    rng = random.Random(5)
    counted = collections.Counter()
    for scene in SCENES[:150]:
        for qtype in (*QUESTION_TYPES, "locate"):
            qa = sample_question(rng, scene, qtype)
            if qa is None:
                continue
            counted[qtype] += bool(qa.named)
            if qtype in ("count", "exist", "describe"):  # about a kind or the whole scene, not one object
                assert qa.named == ()
                continue
            assert all(obj in scene.objects for obj in qa.named)
            if qtype == "colour":
                assert qa.named[0].shape in qa.question and qa.answer == qa.named[0].color
            elif qtype == "shape":
                assert qa.named[0].color in qa.question and qa.answer == qa.named[0].shape
            else:  # relation, locate: "the red circle ... the blue square", in that order
                assert [f"{o.color} {o.shape}" for o in qa.named] == re.findall(r"the (\w+ \w+)", qa.question)
    assert min(counted[t] for t in ("colour", "shape", "relation", "locate")) > 30


def test_missing_questions_ask_a_relation_about_an_absent_object_and_answer_no():
    from omnibridge.shapes.qa import EXTRA_QUESTION_TYPES

    assert "missing" in EXTRA_QUESTION_TYPES and "missing" not in QUESTION_TYPES  # never evaluated
    rng = random.Random(6)
    asked = [(scene, sample_question(rng, scene, "missing")) for scene in SCENES[:100]]
    asked = [(scene, qa) for scene, qa in asked if qa is not None]
    assert len(asked) > 80
    for scene, qa in asked:
        there = {f"{o.color} {o.shape}" for o in scene.objects}
        named = re.findall(r"the (\w+ \w+)", qa.question)
        assert qa.answer == "no" and len(named) == 2 and sum(name in there for name in named) == 1, qa.question
    assert {re.findall(r"the (\w+ \w+)", qa.question)[0] in {f"{o.color} {o.shape}" for o in scene.objects}
            for scene, qa in asked} == {True, False}  # the absent object comes first or second


def test_locate_answers_by_thirds_of_the_canvas():
    from omnibridge.shapes.qa import EXTRA_QUESTION_TYPES, location_words
    from omnibridge.shapes.world import ShapeObject

    assert "locate" in EXTRA_QUESTION_TYPES and "locate" not in QUESTION_TYPES  # not evaluated: beyond the contract
    at = {(10, 10): "top left", (32, 10): "top", (54, 12): "top right", (10, 32): "left", (32, 32): "centre",
          (54, 32): "right", (10, 54): "bottom left", (32, 54): "bottom", (54, 54): "bottom right", (21, 43): "bottom left",
          (22, 42): "centre"}
    for (cx, cy), words in at.items():
        assert location_words(ShapeObject("circle", "red", "small", cx - 5, cy - 5, 10)) == words, (cx, cy)
    rng = random.Random(4)
    asked = [sample_question(rng, scene, "locate") for scene in SCENES[:60]]
    for scene, qa in zip(SCENES[:60], asked):
        if qa is None:  # no object with a unique colour and shape to name
            assert len({(o.color, o.shape) for o in scene.objects}) < len(scene.objects) or not scene.objects
            continue
        named = [o for o in scene.objects if qa.question == f"Where is the {o.color} {o.shape}?"]
        assert len(named) == 1 and qa.answer == location_words(named[0])


def test_edits_produce_their_target():
    rng = random.Random(5)
    seen = set()
    for scene in SCENES[:200]:
        for etype in EDIT_TYPES:
            example = sample_edit(rng, scene, etype)
            if example is None:
                continue
            seen.add(etype)
            assert image_matches(render(example.target), example.target_spec), example
            assert example.instruction
    assert seen == set(EDIT_TYPES)


def test_everything_is_deterministic_given_a_seed():
    a = [format_caption(describe(sample_scene(random.Random(9)))) for _ in range(3)]
    assert len(set(a)) == 1
    assert paraphrase_prompt(random.Random(1), "a red circle") == paraphrase_prompt(random.Random(1), "a red circle")


def test_short_queries_name_part_of_their_scene_and_are_answered_as_a_user_means_them():
    from omnibridge.shapes.captions import partial_spec, query_holds
    from omnibridge.shapes.world import Scene, ShapeObject

    rng = random.Random(5)
    for _ in range(300):
        scene = sample_scene(rng)
        spec = partial_spec(scene, rng)
        query = format_caption(spec)
        assert parse_caption(query) == spec  # a query the caption grammar reads back as it was meant
        assert spec.relation is None and spec.n_objects <= len(scene)
        assert query_holds(spec, scene), (query, format_caption(describe(scene)))

    def circle(color, x0):
        return ShapeObject("circle", color, "small", x0, 40, 10)

    two_red = Scene((circle("red", 12), circle("red", 40)))
    assert query_holds(parse_caption("a red circle"), two_red)  # a second red circle does not make it wrong
    assert query_holds(parse_caption("two red circles"), two_red)
    assert not query_holds(parse_caption("three red circles"), two_red)
    assert not query_holds(parse_caption("two circles"), Scene((*two_red.objects, circle("blue", 26))))
    assert not query_holds(parse_caption("a red circle and a square"), two_red)
    assert not query_holds(parse_caption("a large red circle"), two_red)
