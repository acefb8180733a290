"""Study: when a model shows its work on relation questions, are the positions it writes right, and does its
answer follow them?

A model trained with `--show-work` writes "red circle (5, 2), blue square (1, 6)" (each centre in eighths
across and down) and then the answer. This scores what it wrote against the truth on validation relation
questions: each coordinate, each coordinate's 4x4 cell (what stage 1b teaches a token to name), and the answer,
alone and where the working was right. A stage-1 save (`--state`, e.g. a copy of a work dir's llm/state.pt) is
loaded into `--model` first (the work dir's model/), as the trainer saves it.

    PYTHONPATH=. python scripts/relation_working_study.py --model ob.train/model --state saved_3200.pt
"""

from __future__ import annotations

import argparse
import re
from dataclasses import replace
from pathlib import Path

import torch

from omnibridge import OmniBridgePipeline
from omnibridge.evaluation.generation import VALIDATION_SEED
from omnibridge.evaluation.understanding import questions_of_type
from omnibridge.modeling.chat_format import Message
from omnibridge.modeling.devices import placement
from omnibridge.modeling.loading import load_our_layout
from omnibridge.pipeline import ANSWER_TOKENS
from omnibridge.shapes.qa import ANSWER_AFTER
from omnibridge.shapes.render import render


def relation_cases(count: int, seed: int = VALIDATION_SEED + 1):
    return questions_of_type("relation", count, seed)


def score(written: list[str], cases) -> dict[str, float]:
    tally = dict.fromkeys(("working", "x", "y", "x_cell", "y_cell", "answer", "answer_when_working_right"), 0)
    for text, (_, qa) in zip(written, cases):
        working, _, answer = text.rpartition(ANSWER_AFTER)
        got = re.findall(r"\((\d), (\d)\)", working)
        want = re.findall(r"\((\d), (\d)\)", qa.working)
        for mine, true in zip(got if len(got) == 2 else [], want):
            for axis, a, b in (("x", *map(int, (mine[0], true[0]))), ("y", *map(int, (mine[1], true[1])))):
                tally[axis] += a == b
                tally[f"{axis}_cell"] += a // 2 == b // 2  # eighths -> the eye's quarters
        tally["working"] += working.strip() == qa.working
        tally["answer"] += answer.strip() == qa.answer
        tally["answer_when_working_right"] += working.strip() == qa.working and answer.strip() == qa.answer
    n = len(cases)
    report = {k: round(v / (2 * n if k[0] in "xy" else n), 3) for k, v in tally.items()}
    report["answer_when_working_right"] = round(tally["answer_when_working_right"] / max(tally["working"], 1), 3)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--state", type=Path, help="a stage-1 save to load into the model")
    parser.add_argument("--questions", type=int, default=200)
    args = parser.parse_args()
    torch.set_num_threads(2)
    model = load_our_layout(args.model, placement("cpu"))
    if args.state:
        model.llm.load_state_dict(torch.load(args.state, map_location="cpu", weights_only=False)["llm"])
        model.config.prompts = replace(model.config.prompts, answer_after=ANSWER_AFTER)
    pipe = OmniBridgePipeline(model, placement("cpu"))
    cases = relation_cases(args.questions)
    written = []
    for start in range(0, len(cases), 50):
        chunk = cases[start:start + 50]
        prompts = [pipe.format.encode([Message("user", [render(scene), qa.question])]) for scene, qa in chunk]
        written += pipe.run_job(lambda: pipe._generate_after(prompts, None, ANSWER_TOKENS))
    print(score(written, cases))
    for (_, qa), text in list(zip(cases, written))[:4]:
        print(f"{qa.question!r}: {qa.reply!r} -> {text!r}")


if __name__ == "__main__":
    main()
