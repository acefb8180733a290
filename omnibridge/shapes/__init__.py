"""The synthetic Shapes world that the built-in model is trained and evaluated on."""

from .captions import CaptionSpec, Group, describe, equivalent_captions, format_caption, paraphrase_prompt, parse_caption
from .detect import DetectedObject, detect, image_matches, matches_spec
from .edits import EDIT_TYPES, EditExample, sample_edit
from .qa import QUESTION_TYPES, QuestionAnswer, sample_question
from .render import render, render_array
from .world import COLOR_NAMES, COLORS, SHAPES, SIZE_NAMES, ObjectSpec, Scene, ShapeObject, place_objects, sample_scene

__all__ = [
    "COLOR_NAMES", "COLORS", "EDIT_TYPES", "QUESTION_TYPES", "SHAPES", "SIZE_NAMES",
    "CaptionSpec", "DetectedObject", "EditExample", "Group", "ObjectSpec", "QuestionAnswer", "Scene", "ShapeObject",
    "describe", "detect", "equivalent_captions", "format_caption", "image_matches", "matches_spec",
    "paraphrase_prompt", "parse_caption", "place_objects", "render", "render_array", "sample_edit",
    "sample_question", "sample_scene",
]
