"""Study: how well could any reader answer relation questions if it knew only which token cells each object covers?

The built-in model's eye turns a 64x64 image into a 4x4 grid of language-model tokens (8x8-pixel patches,
merged 2x2), and stage 1b teaches each token its own row and column. A relation, though, compares the two
objects' *centres* to within 6 pixels (shapes-world.md), finer than a 16-pixel cell. This script measures
the ceiling that puts on a reader that knows, for each named object, the cells its bounding box covers (its
first and last row and column): for every such pair of footprints and every question form, the best answer
is the one most often right among many scenes drawn as the question sampler draws them, and that best
answer is then scored on relation questions drawn from the evaluation's (and the validation's) seed. A
token's content can in principle say more than its cell (where inside the cell an edge falls), so this
bounds a cell reader, not every model; the same ceiling for an 8x8 grid (`--vision-patch 4`) shows what
finer tokens would buy, and `--reader centre` gives the ceiling for a reader that knows only the cell holding each object's centre. Each
grid also gets the ceiling for the one-object "locate" question that stage 1 uses as a stepping stone.
`--model PATH --questions 1000` scores a model's own relation answers instead, split by form and by how many
cells apart the two objects' centres are.

    PYTHONPATH=. python scripts/relation_grid_ceiling.py --pairs 400000
"""

from __future__ import annotations

import argparse
import random
from collections import Counter, defaultdict

from omnibridge.evaluation.generation import VALIDATION_SEED
from omnibridge.evaluation.understanding import EVAL_SEED
from omnibridge.shapes.qa import location_words, sample_question
from omnibridge.shapes.world import RELATIONS, Scene, ShapeObject, relation_holds, sample_scene

def answers(a: ShapeObject, b: ShapeObject) -> dict[str, str]:
    """The shapes-world rule's answer to each form of qa._relation_question: "where", then yes/no per relation."""
    holding = [r for r in RELATIONS if relation_holds(a, b, r)]
    return {"where": holding[0] if holding else "", **{r: "yes" if r in holding else "no" for r in RELATIONS}}


def footprint(obj: ShapeObject, cell: int) -> tuple[int, ...]:
    """The first and last token row and column that the object's bounding box covers."""
    return obj.y0 // cell, (obj.y1 - 1) // cell, obj.x0 // cell, (obj.x1 - 1) // cell


def centre_cell(obj: ShapeObject, cell: int) -> tuple[int, ...]:
    """The token cell that holds the object's centre (what a reader of one token per object knows)."""
    return int(obj.cy) // cell, int(obj.cx) // cell


READERS = {"footprint": footprint, "centre": centre_cell}


def nameable_pairs(scene: Scene) -> list[tuple[ShapeObject, ShapeObject]]:
    """Ordered pairs of objects that a question can name (unique colour and shape), as qa samples them."""
    kinds = Counter((o.color, o.shape) for o in scene.objects)
    named = [o for o in scene.objects if kinds[(o.color, o.shape)] == 1]
    return [(a, b) for a in named for b in named if a is not b]


def best_answers(pairs: int, cell: int, seed: int, reader=footprint) -> dict:
    """For each (form, what the reader knows of A, of B): the answer most often right."""
    votes: dict = defaultdict(Counter)
    rng, seen = random.Random(seed), 0
    while seen < pairs:
        for a, b in nameable_pairs(sample_scene(rng)):
            key = (reader(a, cell), reader(b, cell))
            for form, answer in answers(a, b).items():
                if form != "where" or answer:  # a "where" question is only asked when a relation holds
                    votes[(form, *key)][answer] += 1
            seen += 1
    return {key: counter.most_common(1)[0][0] for key, counter in votes.items()}


def relation_cases(seed: int, count: int) -> list[tuple[Scene, str, str]]:
    rng, cases = random.Random(seed), []
    while len(cases) < count:
        scene = sample_scene(rng)
        qa = sample_question(rng, scene, "relation")
        if qa is not None:
            cases.append((scene, qa.question, qa.answer))
    return cases


def named(scene: Scene, words: list[str]) -> ShapeObject:
    color, shape = words
    return next(o for o in scene.objects if o.color == color and o.shape == shape)


def parse(question: str) -> tuple[str, list[str], list[str]]:
    """`Where is the red circle relative to the blue square?` -> ("where", [red, circle], [blue, square])."""
    words = question.rstrip("?").split()
    first = words.index("the")
    last = len(words) - 1 - words[::-1].index("the")
    form = "where" if words[0] == "Where" else next(r for r in RELATIONS if r in words[first + 3:last])
    return form, words[first + 1:first + 3], words[last + 1:last + 3]


def model_accuracy_by_separation(model: str, questions: int) -> None:
    """A model's own relation answers on validation questions, by how many cells apart the two centres are."""
    from omnibridge import OmniBridgePipeline
    from omnibridge.evaluation.understanding import is_exact_match
    from omnibridge.shapes.render import render

    pipe = OmniBridgePipeline.from_pretrained(model, device="cpu")
    cases = relation_cases(VALIDATION_SEED, questions)
    replies: list[str] = []  # not `answers`, the rule's
    for start in range(0, len(cases), 64):
        chunk = cases[start:start + 64]
        replies += pipe.answer_batch([render(scene) for scene, _, _ in chunk], [q for _, q, _ in chunk])
    right: dict[tuple[str, str], list[bool]] = defaultdict(list)
    for (scene, question, expected), answer in zip(cases, replies):
        form, a_words, b_words = parse(question)
        (row_a, col_a), (row_b, col_b) = (centre_cell(named(scene, w), 16) for w in (a_words, b_words))
        apart = "0-1 cells apart" if max(abs(row_a - row_b), abs(col_a - col_b)) < 2 else "2+ cells apart"
        right[("where" if form == "where" else "yes/no", apart)].append(is_exact_match(answer, expected))
    yes = [a == "yes" for (_, q, _), a in zip(cases, replies) if not q.startswith("Where")]
    print(f"{model}, {len(cases)} validation relation questions: "
          + ", ".join(f"{form} {apart} {sum(oks) / len(oks):.3f} ({len(oks)})"
                      for (form, apart), oks in sorted(right.items()))
          + f"; yes/no answered yes {sum(yes) / len(yes):.2f}", flush=True)


def locate_ceiling(reader, cell: int, draws: int, questions: int) -> float:
    """The same ceiling for stage 1's stepping stone, "Where is the red circle?" -> "top left" (thirds of the
    canvas, whose borders at 21 and 43 pixels cut through the 16-pixel cells)."""
    votes: dict = defaultdict(Counter)
    rng = random.Random(1)
    for _ in range(draws // 2):
        for obj in sample_scene(rng).objects:
            votes[reader(obj, cell)][location_words(obj)] += 1
    best = {key: counter.most_common(1)[0][0] for key, counter in votes.items()}
    rng, right = random.Random(EVAL_SEED), []
    while len(right) < questions:
        right += [best.get(reader(obj, cell)) == location_words(obj) for obj in sample_scene(rng).objects]
    return sum(right) / len(right)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=400_000, help="object pairs drawn to find each best answer")
    parser.add_argument("--questions", type=int, default=2000)
    parser.add_argument("--reader", choices=sorted(READERS), default="footprint")
    parser.add_argument("--model", help="instead: a model's own relation answers by how far apart the objects are")
    args = parser.parse_args()
    if args.model:
        model_accuracy_by_separation(args.model, args.questions)
        return
    reader = READERS[args.reader]
    for cell in (16, 8):
        table = best_answers(args.pairs, cell, seed=1, reader=reader)
        for name, seed in (("evaluation", EVAL_SEED), ("validation", VALIDATION_SEED)):
            right: dict[str, list[bool]] = {"where": [], "yes/no": []}
            unseen = 0  # reader keys the draw never met: scored wrong, so raise --pairs until this is ~0
            for scene, question, expected in relation_cases(seed, args.questions):
                form, a_words, b_words = parse(question)
                a, b = named(scene, a_words), named(scene, b_words)
                guess = table.get((form, reader(a, cell), reader(b, cell)))
                unseen += guess is None
                right["where" if form == "where" else "yes/no"].append(guess == expected)
            every = [ok for oks in right.values() for ok in oks]
            print(f"{args.reader}, {64 // cell}x{64 // cell} token grid, {name} relation questions: "
                  + ", ".join(f"{form} {sum(oks) / len(oks):.3f}" for form, oks in right.items())
                  + f", all {sum(every) / len(every):.3f} ({unseen} of {len(every)} never drawn)", flush=True)
        print(f"{args.reader}, {64 // cell}x{64 // cell} token grid, locate (one object, by thirds): "
              f"{locate_ceiling(reader, cell, args.pairs, args.questions):.3f} (evaluation seed)", flush=True)


if __name__ == "__main__":
    main()
