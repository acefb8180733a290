"""Understanding: exact-match accuracy per question type on held-out scenes."""

from __future__ import annotations

import random

from ..shapes.qa import QUESTION_TYPES, QuestionAnswer, sample_question
from ..shapes.render import render
from ..shapes.world import Scene, sample_scene

EVAL_SEED = 7_200_000
# 500 questions per type (3,000 in all, about 20 s on a CPU): at 100 a type's accuracy had a standard error of
# about 5 points, and the shipped model's relations read 0.57 on those 100 and 0.46 on 500.
QUESTIONS_PER_TYPE = 500
# Beyond the contract's types, reported apart and never in the overall: a relation question about an object the
# scene lacks ("Is the red circle left of the blue square?" with no red circle), which chat users ask and whose
# only right answer is "no". 200 questions: a share near 0.9 has a standard error of about 2 points.
MISSING_QUESTIONS = 200


def understanding_cases(per_type: int, seed: int = EVAL_SEED) -> list[tuple[str, object, str, str]]:
    """(question type, image, question, answer), `per_type` of each type."""
    rng = random.Random(seed)
    cases = []
    for qtype in QUESTION_TYPES:
        while sum(c[0] == qtype for c in cases) < per_type:
            scene = sample_scene(rng)
            qa = sample_question(rng, scene, qtype)
            if qa is not None:
                cases.append((qtype, render(scene), qa.question, qa.answer))
    return cases


def questions_of_type(qtype: str, count: int, seed: int) -> list[tuple[Scene, QuestionAnswer]]:
    """`count` (scene, question) pairs of one type, each on a new scene (redrawn where it cannot be asked)."""
    rng = random.Random(seed)
    cases = []
    while len(cases) < count:
        scene = sample_scene(rng)
        qa = sample_question(rng, scene, qtype)
        if qa is not None:
            cases.append((scene, qa))
    return cases


def missing_object_cases(count: int, seed: int = EVAL_SEED + 1) -> list[tuple[object, str]]:
    """(image, question) pairs: relations naming an object that is not in the scene (expected answer "no")."""
    return [(render(scene), qa.question) for scene, qa in questions_of_type("missing", count, seed)]


def _answer_all(pipe, images: list, questions: list[str], batch: int) -> list[str]:
    answers: list[str] = []
    for start in range(0, len(images), batch):
        answers += pipe.answer_batch(images[start:start + batch], questions[start:start + batch])
    return answers


def is_exact_match(answer: str, expected: str) -> bool:
    """The evaluation's one leniency: case, surrounding space and a final full stop."""
    return answer.strip().lower().rstrip(".") == expected


def evaluate_understanding(pipe, per_type: int = QUESTIONS_PER_TYPE, batch: int = 64) -> dict:
    """Exact match per type and overall, and the missing-object row (as many questions as a type has, at most
    MISSING_QUESTIONS)."""
    cases = understanding_cases(per_type)
    answers = _answer_all(pipe, [c[1] for c in cases], [c[2] for c in cases], batch)
    absent = missing_object_cases(min(per_type, MISSING_QUESTIONS))
    absent_answers = _answer_all(pipe, [c[0] for c in absent], [c[1] for c in absent], batch)
    correct: dict[str, list[bool]] = {t: [] for t in QUESTION_TYPES}
    for (qtype, _, _, expected), answer in zip(cases, answers):
        correct[qtype].append(is_exact_match(answer, expected))
    per_type_accuracy = {t: round(sum(v) / len(v), 4) for t, v in correct.items()}
    total = [ok for v in correct.values() for ok in v]
    said_no = [is_exact_match(answer, "no") for answer in absent_answers]
    return {**per_type_accuracy, "overall": round(sum(total) / len(total), 4), "n_questions": len(total),
            "missing_object": {"answered_no": round(sum(said_no) / max(len(said_no), 1), 4),
                               "n_questions": len(said_no)}}
