"""Study: can the model choose among its own beam-search target captions for an edit, by text alone?

An edit is capped by its target caption: the built-in model's top beam is exactly right about half the time,
while its four best beams hold the right one about 80% of the time (`edit_caption_study.py`), and no signal
from the drawings picked it. This study rates the candidates by text only, with signals the model computes:
- `top`: the best beam (today's caption);
- `least_change`: an edit changes one thing, so prefer the candidate that changes the fewest objects of the
  model's own description of the source image ("Describe the image."), a recolour counting as one, never one
  that changes nothing; ties go to the better beam (`omnibridge/caption_choice.py`, the shipped rule);
- `least_change_true`: the same against the source's true caption (a ceiling: how much the model's eye costs);
- `dropped_plus_added`: the first version of the rule, which counted a recolour as two changes;
- `consensus`: minimum Bayes risk, the candidate that agrees most with the others, weighted by beam probability.
A caption counts as right when its objects (and relation, if any) are the target's, in any order, since the
drawing of a reordered caption is the same scene; exact string matches are reported too. The detector and
the true captions only grade (apart from the labelled ceiling); they never pick.

    PYTHONPATH=.:scripts python scripts/edit_caption_choice_study.py --out edit_choice.json
"""

from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np

from edit_caption_study import beam_captions
from omnibridge.caption_choice import NO_CHANGE, caption_scene as objects_of, least_change
from omnibridge.evaluation.editing import edit_cases
from omnibridge.evaluation.generation import VALIDATION_SEED
from omnibridge.pipeline import OmniBridgePipeline
from omnibridge.shapes.captions import describe, format_caption
from omnibridge.shapes.render import render

UNREADABLE = 1000


def same_scene(a: str, b: str) -> bool:
    parsed_a, parsed_b = objects_of(a), objects_of(b)
    return parsed_a is not None and parsed_a == parsed_b


def dropped_plus_added(source: str, candidate: str) -> int:
    """The first version of the rule: objects dropped plus objects added (a recolour counts twice)."""
    parsed_source, parsed_candidate = objects_of(source), objects_of(candidate)
    if parsed_candidate is None:
        return UNREADABLE
    if parsed_source is None:
        return 0
    (source_objects, _), (candidate_objects, relation) = parsed_source, parsed_candidate
    changed = sum(((source_objects - candidate_objects) + (candidate_objects - source_objects)).values())
    return NO_CHANGE if changed == 0 and relation is None else changed


def scene_distance(a: str, b: str) -> int:
    """Objects in one caption and not the other, plus one for a different relation."""
    parsed_a, parsed_b = objects_of(a), objects_of(b)
    if parsed_a is None or parsed_b is None:
        return UNREADABLE
    (objects_a, relation_a), (objects_b, relation_b) = parsed_a, parsed_b
    return sum(((objects_a - objects_b) + (objects_b - objects_a)).values()) + int(relation_a != relation_b)


def consensus(captions: list[str], scores: list[float]) -> int:
    weights = [math.exp(s) for s in scores]
    risk = [sum(w * scene_distance(captions[i], c) for j, (w, c) in enumerate(zip(weights, captions)) if j != i)
            for i in range(len(captions))]
    return min(range(len(captions)), key=lambda i: (risk[i], i))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="assets/omnibridge-shapes")
    parser.add_argument("--edits-per-type", type=int, default=30)
    parser.add_argument("--seed", type=int, default=VALIDATION_SEED,
                        help="edit cases' seed (default: validation; the evaluation's is 7300000)")
    parser.add_argument("--beams", type=int, default=4)
    parser.add_argument("--out", default="edit_choice.json")
    args = parser.parse_args()

    pipe = OmniBridgePipeline.from_pretrained(args.model)
    start, records = time.perf_counter(), []
    cases = edit_cases(args.edits_per_type, seed=args.seed)
    descriptions = pipe.answer_batch([render(c.source) for c in cases], ["Describe the image."] * len(cases))
    for example, description in zip(cases, descriptions):
        captions, scores = pipe.run_job(lambda: beam_captions(pipe, render(example.source), example.instruction,
                                                              args.beams))
        true_source = format_caption(describe(example.source))
        picks = {"top": 0, "least_change": least_change(description, captions),
                 "least_change_true": least_change(true_source, captions),
                 "dropped_plus_added": min(range(len(captions)),
                                           key=lambda i: (dropped_plus_added(description, captions[i]), i)),
                 "consensus": consensus(captions, scores)}
        records.append({"etype": example.etype, "instruction": example.instruction, "source": true_source,
                        "description": description, "target": example.target_caption, "captions": captions,
                        "scores": [round(s, 4) for s in scores], "picks": picks})
    summary = {"model": args.model, "edits": len(records), "seed": args.seed, "beams": args.beams,
               "seconds": round(time.perf_counter() - start),
               "description_exact": round(float(np.mean([r["description"] == r["source"] for r in records])), 4)}
    for name in records[0]["picks"]:
        summary[name] = {
            "same_scene": round(float(np.mean([same_scene(r["captions"][r["picks"][name]], r["target"])
                                               for r in records])), 4),
            "exact": round(float(np.mean([r["captions"][r["picks"][name]] == r["target"] for r in records])), 4)}
    summary["any_beam_same_scene"] = round(float(np.mean([any(same_scene(c, r["target"]) for c in r["captions"])
                                                          for r in records])), 4)
    print(json.dumps(summary, indent=1))
    with open(args.out, "w") as handle:
        json.dump({**summary, "records": records}, handle, indent=1)


if __name__ == "__main__":
    main()
