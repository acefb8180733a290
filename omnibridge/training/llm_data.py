"""Stage-1 (behaviour alignment) conversations for the LLM.

The LLM learns every behaviour OmniBridge asks of it, in the chat format the pipeline uses:
- understanding: an image and a question -> the exact answer (counts, colours, shapes, existence,
  relations, full descriptions);
- prompt rewriting: a free-form drawing request -> `<img>caption</img>` in the decoder's grammar;
- edit captions: an image and an instruction -> `<edit>target caption</edit>`;
- routing in multi-turn chat: the answer's first token decides between a text answer, a drawing
  and an edit of the last image (uploaded or drawn earlier), so the UI never matches keywords.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from ..modeling.chat_format import Message
from ..shapes.captions import describe, format_caption, paraphrase_prompt
from ..shapes.edits import sample_edit
from ..shapes.qa import sample_question
from ..shapes.render import render
from ..shapes.world import Scene, sample_scene
from .decoder_data import sample_decoder_pair

GREETINGS = ("hello", "hi", "hey", "hi there", "good morning", "hello!")
GREETING_ANSWER = "Hello! Show me an image and ask about it, or ask me to draw shapes."
CAPABILITY_QUESTIONS = ("what can you do?", "help", "what do you do?", "how does this work?")
CAPABILITY_ANSWER = ("I can describe images of shapes, count them, tell colours and positions, draw new "
                     "pictures of circles, squares and triangles, and edit the last picture.")
NO_IMAGE_ANSWER = "Please add an image first, then ask me about it."

TASK_MIX = {"vqa": 0.46, "rewrite": 0.17, "edit": 0.16, "draw_then_edit": 0.06, "draw_then_ask": 0.04,
            "ask_then_draw": 0.03, "multi_qa": 0.05, "small_talk": 0.03}

# Relations get three times the weight of each other type (about twice the share once scenes without two
# nameable objects are redrawn): they are the one type whose answer depends on *where* two objects are,
# which the model must learn from the rotary angles alone (no absolute position reaches an image token's
# content), and at an equal share they stayed at chance.
# "locate" (where one named object is) is the stepping stone to relations, which compare two positions.
# "missing" (a relation about an absent object, qa.EXTRA_QUESTION_TYPES) is 0 here so that the recipes of the
# checkpoints trained before it existed draw the same data; a phase gives it a weight (--question-weight).
QUESTION_MIX = {"count": 1, "colour": 1, "shape": 1, "exist": 1, "relation": 3, "describe": 1, "locate": 1,
                "missing": 0}


def question_mix(weights: dict[str, float] | None = None) -> dict[str, float]:
    """QUESTION_MIX with some types re-weighted (a phase of stage 1 may drill one type, e.g. relations)."""
    unknown = set(weights or {}) - set(QUESTION_MIX)
    if unknown:
        raise ValueError(f"unknown question types {sorted(unknown)}; choose from {sorted(QUESTION_MIX)}")
    return {**QUESTION_MIX, **(weights or {})}


def task_mix(vqa_share: float | None) -> dict[str, float]:
    """TASK_MIX with single-question VQA at `vqa_share` and the other tasks in their proportions (1.0:
    VQA alone, as in a phase that drills one question type)."""
    if vqa_share is None:
        return TASK_MIX
    if not 0.0 < vqa_share <= 1.0:
        raise ValueError(f"vqa_share {vqa_share}: a share in (0, 1]")
    others = {task: share for task, share in TASK_MIX.items() if task != "vqa"}
    scale = (1.0 - vqa_share) / sum(others.values())
    return {"vqa": vqa_share, **{task: share * scale for task, share in others.items()}}


@dataclass
class Conversation:
    messages: list[Message]  # ends with the assistant answer the loss covers
    task: str
    answer: str
    named: tuple = ()  # the shapes.world.ShapeObjects the last question names, all in the first image


def _draw_answer(caption: str) -> str:
    return f"<img>{caption}</img>"


def _edit_answer(caption: str) -> str:
    return f"<edit>{caption}</edit>"


def _reply(qa, show_work: tuple[str, ...]) -> str:
    return qa.reply if qa.qtype in show_work else qa.answer


def _vqa(rng: random.Random, questions: dict[str, float] = QUESTION_MIX, show_work: tuple[str, ...] = ()) -> Conversation:
    scene = sample_scene(rng)
    qa = None
    while qa is None:
        qa = sample_question(rng, scene, rng.choices(list(questions), weights=list(questions.values()))[0])
        if qa is None:
            scene = sample_scene(rng)
    image = render(scene)
    parts = [image, qa.question] if rng.random() < 0.85 else [qa.question, image]
    reply = _reply(qa, show_work)
    return Conversation([Message("user", parts), Message("assistant", [reply])], f"vqa/{qa.qtype}", reply, qa.named)


def _rewrite(rng: random.Random) -> Conversation:
    _, caption = sample_decoder_pair(rng)
    messages = [Message("user", [paraphrase_prompt(rng, caption)])]
    if rng.random() < 0.15:  # a drawing request while an unrelated image is on the table
        messages[0].parts.insert(0, render(sample_scene(rng)))
    answer = _draw_answer(caption)
    return Conversation(messages + [Message("assistant", [answer])], "rewrite", answer)


def sample_edit_example(rng: random.Random, scene: Scene | None = None):
    while True:
        source = scene or sample_scene(rng)
        example = sample_edit(rng, source)
        if example is not None:
            return example
        scene = None


def _edit(rng: random.Random) -> Conversation:
    example = sample_edit_example(rng)
    instruction = example.instruction if rng.random() < 0.8 else "please " + example.instruction
    answer = _edit_answer(example.target_caption)
    messages = [Message("user", [render(example.source), instruction]), Message("assistant", [answer])]
    return Conversation(messages, "edit", answer)


def _drawn(rng: random.Random) -> tuple[Scene, list[Message]]:
    """A first turn in which the assistant drew a scene (its image stays in the history)."""
    scene = sample_scene(rng, rng.randint(1, 3))
    caption = format_caption(describe(scene, with_size=rng.random() < 0.5))
    return scene, [Message("user", [paraphrase_prompt(rng, caption)]),
                   Message("assistant", [_draw_answer(caption), render(scene)])]


def _draw_then_edit(rng: random.Random) -> Conversation:
    scene, history = _drawn(rng)
    example = sample_edit_example(rng, scene)
    answer = _edit_answer(example.target_caption)
    follow_up = rng.choice(("", "now ", "ok, now ")) + example.instruction
    return Conversation(history + [Message("user", [follow_up]), Message("assistant", [answer])], "draw_then_edit",
                        answer)


def _draw_then_ask(rng: random.Random, show_work: tuple[str, ...] = ()) -> Conversation:
    scene, history = _drawn(rng)
    qa = None
    while qa is None:
        qa = sample_question(rng, scene)
    reply = _reply(qa, show_work)
    return Conversation(history + [Message("user", [qa.question]), Message("assistant", [reply])],
                        "draw_then_ask", reply)


def _ask_then_draw(rng: random.Random, show_work: tuple[str, ...] = ()) -> Conversation:
    """A question about an uploaded image, then a drawing request: without this turn order in its data
    the model wrote broken captions ("<img> and a blue square") once a chat had an image Q&A in it."""
    conversation = _vqa(rng, show_work=show_work)
    _, caption = sample_decoder_pair(rng)
    answer = _draw_answer(caption)
    messages = conversation.messages + [Message("user", [paraphrase_prompt(rng, caption)]),
                                        Message("assistant", [answer])]
    return Conversation(messages, "ask_then_draw", answer)


def _multi_qa(rng: random.Random, show_work: tuple[str, ...] = ()) -> Conversation:
    scene = sample_scene(rng)
    image = render(scene)
    messages: list[Message] = []
    for turn in range(rng.randint(2, 3)):
        qa = None
        while qa is None:
            qa = sample_question(rng, scene)
        reply = _reply(qa, show_work)
        messages.append(Message("user", [image, qa.question] if turn == 0 else [qa.question]))
        messages.append(Message("assistant", [reply]))
    return Conversation(messages, "multi_qa", reply)


def _small_talk(rng: random.Random) -> Conversation:
    kind = rng.random()
    if kind < 0.4:
        question, answer = rng.choice(GREETINGS), GREETING_ANSWER
    elif kind < 0.7:
        question, answer = rng.choice(CAPABILITY_QUESTIONS), CAPABILITY_ANSWER
    else:
        question, answer = sample_question(rng, sample_scene(rng), "count").question, NO_IMAGE_ANSWER
    return Conversation([Message("user", [question]), Message("assistant", [answer])], "small_talk", answer)


_BUILDERS = {"vqa": _vqa, "rewrite": _rewrite, "edit": _edit, "draw_then_edit": _draw_then_edit,
             "draw_then_ask": _draw_then_ask, "ask_then_draw": _ask_then_draw, "multi_qa": _multi_qa,
             "small_talk": _small_talk}
_ASKING_TASKS = ("draw_then_ask", "ask_then_draw", "multi_qa")  # besides vqa: their answers may show work


def sample_conversation(rng: random.Random, task: str | None = None,
                        questions: dict[str, float] = QUESTION_MIX, tasks: dict[str, float] = TASK_MIX,
                        show_work: tuple[str, ...] = ()) -> Conversation:
    """One stage-1 conversation of `task` (drawn from `tasks` when None); `questions` weighs the question
    types of the single-question VQA task (the multi-turn tasks keep an even mix: they teach the turn
    order, not the skill); answers to the question types in `show_work` write their working first
    (qa.QuestionAnswer.reply)."""
    task = task or rng.choices(list(tasks), weights=list(tasks.values()))[0]
    if task == "vqa":
        return _vqa(rng, questions, show_work)
    if task in _ASKING_TASKS:
        return _BUILDERS[task](rng, show_work)
    return _BUILDERS[task](rng)


def tokenizer_corpus(rng: random.Random, n: int = 6000) -> list[str]:
    """Texts the BPE is trained on: every word the model reads or writes, in context."""
    texts = ["You are a helpful assistant.", "system\n", "user\n", "assistant\n", GREETING_ANSWER,
             CAPABILITY_ANSWER, NO_IMAGE_ANSWER, *GREETINGS, *CAPABILITY_QUESTIONS]
    for _ in range(n):
        conversation = sample_conversation(rng)
        texts.extend(p for m in conversation.messages for p in m.parts if isinstance(p, str))
    return texts

