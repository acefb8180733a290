"""Study: can the model check its own description of an image against its own short answers?

The built-in model describes a scene exactly right about 60% of the time, yet answers "Is there a red
circle?" right 98% of the time and "How many squares are there?" about 90%: descriptions fail at keeping
every object apart over a long answer, not at seeing them. Here each held-out image gets `--beams`
descriptions by beam search and the model's answers to the 18 "Is there a <colour> <shape>?" questions
(and, with `counts`, the 3 "How many <shape>s are there?"); each description is scored by how many of
those answers it contradicts, and the least contradicted one is kept (ties: the better beam). A third pick,
`cosine`, keeps the description whose retrieval embedding is closest to the image's (the self-check's signal
for drawings). The true scene only grades.

    PYTHONPATH=. python scripts/describe_consistency_study.py --out describe_consistency.json
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections import Counter

import numpy as np

from omnibridge.evaluation.generation import VALIDATION_SEED
from omnibridge.modeling.chat_format import Message
from omnibridge.pipeline import OmniBridgePipeline
from omnibridge.shapes.captions import NUMBER_WORDS, describe, format_caption, parse_caption
from omnibridge.shapes.render import render
from omnibridge.shapes.world import COLOR_NAMES, SHAPES, sample_scene

EXIST = [(color, shape) for color in COLOR_NAMES for shape in SHAPES]


def questions() -> list[str]:
    return ([f"Is there a {color} {shape}?" for color, shape in EXIST]
            + [f"How many {shape}s are there?" for shape in SHAPES])


def contradictions(caption: str, answers: list[str], with_counts: bool) -> int:
    """How many of the model's short answers the description contradicts (an unreadable one: all)."""
    try:
        spec = parse_caption(caption)
    except ValueError:
        return len(answers)
    objects = Counter()
    for group in spec.groups:
        objects[(group.color, group.shape)] += group.count
    wrong = sum((objects[pair] > 0) != (answer == "yes") for pair, answer in zip(EXIST, answers))
    if with_counts:
        for shape, answer in zip(SHAPES, answers[len(EXIST):]):
            wrong += NUMBER_WORDS[min(4, sum(n for (_, s), n in objects.items() if s == shape))] != answer
    return wrong


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="assets/omnibridge-shapes")
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--seed", type=int, default=VALIDATION_SEED)
    parser.add_argument("--beams", type=int, default=4)
    parser.add_argument("--out", default="describe_consistency.json")
    args = parser.parse_args()

    pipe = OmniBridgePipeline.from_pretrained(args.model)
    rng = random.Random(args.seed)
    scenes = [sample_scene(rng) for _ in range(args.images)]
    start, records = time.perf_counter(), []
    asked = questions()
    for scene in scenes:
        image = render(scene)
        truth = format_caption(describe(scene))
        encoded = pipe.format.encode([Message("user", [image, "Describe the image."])])
        beams = pipe.run_job(lambda: pipe._generate_after([encoded], None, 40, beams=args.beams))
        answers = pipe.answer_batch([image] * len(asked), asked)
        picks = {"top": 0}
        for name, with_counts in (("exist", False), ("exist+counts", True)):
            picks[name] = min(range(len(beams)), key=lambda i: (contradictions(beams[i], answers, with_counts), i))
        image_vector = pipe.embed_images([image])[0]
        picks["cosine"] = int(np.argmax(pipe.embed_texts(beams) @ image_vector))
        exist_right = np.mean([(a == "yes") == any(o.color == c and o.shape == s for o in scene.objects)
                               for (c, s), a in zip(EXIST, answers)])
        records.append({"truth": truth, "beams": beams, "answers": answers, "picks": picks,
                        "exist_answers_right": float(exist_right)})
    summary = {"model": args.model, "images": len(records), "seed": args.seed, "beams": args.beams,
               "seconds": round(time.perf_counter() - start),
               "exist_answers_right": round(float(np.mean([r["exist_answers_right"] for r in records])), 4),
               "any_beam_exact": round(float(np.mean([r["truth"] in r["beams"] for r in records])), 4)}
    for name in records[0]["picks"]:
        summary[name] = round(float(np.mean([r["beams"][r["picks"][name]] == r["truth"] for r in records])), 4)
    print(json.dumps(summary, indent=1))
    with open(args.out, "w") as handle:
        json.dump({**summary, "records": records}, handle, indent=1)


if __name__ == "__main__":
    main()
