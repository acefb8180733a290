"""Study: which of the model's own signals picks the right one of several candidates, and how much it buys.

For held-out generation prompts and edits, draws `--candidates` images each (candidate j of a case with
seed s uses seed s + j, so candidate 0 is the image the evaluation draws) and records, per candidate,
whether the evaluator's detector passes it and four scores the model itself can compute:
- `cosine`: retrieval embedding of the image vs the caption's (what `candidates=N` uses);
- `log_likelihood`: log p(caption, end of turn | image, "Describe the image.") under the LLM;
- `describe_cosine`: the model describes the image, and its description's embedding meets the caption's;
- `cosine_plus_describe`: the sum of the first and the third.
It prints the accuracy of candidate 0, of the best by each score among the first 2 and all candidates, and
of an oracle that keeps any passing candidate. The detector only grades; it never picks.

    PYTHONPATH=. python scripts/self_check_study.py --model assets/omnibridge-shapes --out self_check.json
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from omnibridge.evaluation.editing import edit_cases
from omnibridge.evaluation.generation import generation_cases
from omnibridge.modeling.chat_format import Message
from omnibridge.pipeline import OmniBridgePipeline
from omnibridge.shapes.detect import detect, image_matches, matches_spec
from omnibridge.shapes.render import render

SCORES = ("cosine", "log_likelihood", "describe_cosine", "cosine_plus_describe")


def log_likelihoods(pipe, images, captions, question="Describe the image.") -> list[float]:
    def job():
        prompts = [pipe.format.encode([Message("user", [image, question])], answer=caption)
                   for image, caption in zip(images, captions)]
        collated = pipe.format.collate(prompts, "right")
        inputs = pipe._to_device(collated["inputs"])
        log_probs = pipe.llm(**inputs).logits.float().log_softmax(-1)
        totals = []
        for row, spans in enumerate(collated["spans"]):
            start, end = spans["answer"]
            tokens = inputs["input_ids"][row, start:end + 1]  # the caption and the end-of-turn token
            totals.append(log_probs[row, start - 1:end].gather(-1, tokens[:, None]).sum().item())
        return totals
    return pipe.run_job(job)


def candidate_scores(pipe, images, captions) -> list[dict]:
    cosine = (pipe.embed_images(images) * pipe.embed_texts(captions)).sum(1)
    descriptions = pipe.answer_batch(images, ["Describe the image."] * len(images))
    describe_cosine = (pipe.embed_texts(descriptions) * pipe.embed_texts(captions)).sum(1)
    likelihood = log_likelihoods(pipe, images, captions)
    return [{"cosine": float(c), "log_likelihood": ll, "describe_cosine": float(d),
             "cosine_plus_describe": float(c + d)} for c, ll, d in zip(cosine, likelihood, describe_cosine)]


def summarise(cases: list[dict]) -> dict:
    """cases: {group, passed: [bool per candidate], scores: [dict per candidate]} -> accuracy per picker,
    as the mean over groups (GenEval's overall for generation; equal-sized edit types for editing)."""
    k = len(cases[0]["passed"])
    pickers = {"first": lambda case: 0,
               "oracle": lambda case: int(np.argmax(case["passed"]))}
    for name in SCORES:
        for n in sorted({2, k}):
            pickers[f"{name}@{n}"] = lambda case, name=name, n=n: int(np.argmax([s[name] for s in case["scores"][:n]]))
    groups = sorted({case["group"] for case in cases})
    report = {}
    for picker, pick in pickers.items():
        per_group = {g: float(np.mean([c["passed"][pick(c)] for c in cases if c["group"] == g])) for g in groups}
        first = [c["passed"][0] for c in cases]
        chosen = [c["passed"][pick(c)] for c in cases]
        report[picker] = {"overall": round(float(np.mean(list(per_group.values()))), 4),
                          **{g: round(v, 4) for g, v in per_group.items()},
                          "wins_over_first": sum(b and not a for a, b in zip(first, chosen)),
                          "losses_to_first": sum(a and not b for a, b in zip(first, chosen))}
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="assets/omnibridge-shapes")
    parser.add_argument("--candidates", type=int, default=4)
    parser.add_argument("--prompts-per-category", type=int, default=25)
    parser.add_argument("--edits-per-type", type=int, default=30)
    parser.add_argument("--out", default="self_check.json")
    args = parser.parse_args()
    pipe = OmniBridgePipeline.from_pretrained(args.model)
    k, report = args.candidates, {"model": args.model, "candidates": args.candidates}

    start, generation = time.perf_counter(), []
    cases = generation_cases(args.prompts_per_category)
    for first in range(0, len(cases), 15):
        chunk = cases[first:first + 15]
        images, captions = pipe.generate_batch([c.prompt for c in chunk for _ in range(k)],
                                               [c.seed + j for c in chunk for j in range(k)], candidates=1)
        scores = candidate_scores(pipe, images, captions)
        for i, case in enumerate(chunk):
            drawn = range(i * k, (i + 1) * k)
            generation.append({"group": case.category, "passed": [matches_spec(detect(images[n]), case.spec)
                                                                  for n in drawn],
                               "scores": [scores[n] for n in drawn]})
    report["generation"] = summarise(generation)
    report["generation_seconds"] = round(time.perf_counter() - start)
    print(json.dumps(report["generation"], indent=1), flush=True)

    start, editing = time.perf_counter(), []
    for index, example in enumerate(edit_cases(args.edits_per_type)):
        result = pipe.edit(render(example.source), example.instruction, seed=index, num_images=k, candidates=1)
        editing.append({"group": example.etype,
                        "passed": [image_matches(image, example.target_spec) for image in result.images],
                        "scores": candidate_scores(pipe, result.images, [result.caption] * k)})
    report["editing"] = summarise(editing)
    report["editing_seconds"] = round(time.perf_counter() - start)
    print(json.dumps(report["editing"], indent=1), flush=True)
    with open(args.out, "w") as handle:
        json.dump(report, handle, indent=1)


if __name__ == "__main__":
    main()
