"""Study: does re-ranking retrieval's top 10 by the model's own description likelihood raise R@1?

A unified model can check a match two ways: the retrieval heads' cosine (one vector per side), and the
language model's likelihood of the caption as its answer to "Describe the image." (it reads the image's
tokens and the caption's together). This takes each query's top 10 by cosine and re-ranks them by

    logit_scale * cosine + weight * log p(caption | image, "Describe the image.")

for several weights (0: the cosine alone, as the evaluation and the gallery rank today), on validation
scenes (a seed the evaluation never draws), image -> text and text -> image. It changes nothing in the
model or the app; it says whether wiring such a re-ranking into the gallery would pay.

    PYTHONPATH=. HF_HUB_OFFLINE=1 python scripts/rerank_study.py --out runs/rerank.json
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from omnibridge.evaluation.retrieval import retrieval_dataset
from omnibridge.pipeline import OmniBridgePipeline
from omnibridge.rerank import rerank_order
from omnibridge.shapes.render import render

VALIDATION_SEED = 7_654_321
TOP = 10
WEIGHTS = (0.0, 0.1, 0.3, 1.0, 3.0, 10.0, float("inf"))


def rerank_hits(cos_logits: np.ndarray, likelihood: dict, top: np.ndarray, is_hit, weight: float) -> float:
    """Share of queries whose re-ranked first candidate is a hit. `top` [queries, TOP] holds candidates."""
    hits = []
    for query, candidates in enumerate(top):
        lik = np.array([likelihood[(query, int(c))] for c in candidates])
        if np.isinf(weight):  # the likelihood alone, the cosine breaking ties
            best = rerank_order(cos_logits[query, candidates], lik, logit_scale=1e-6, weight=1.0)[0]
        else:
            best = rerank_order(cos_logits[query, candidates], lik, logit_scale=1.0, weight=weight)[0]
        hits.append(is_hit(query, int(candidates[best])))
    return float(np.mean(hits))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="assets/omnibridge-shapes")
    parser.add_argument("--scenes", type=int, default=500)
    parser.add_argument("--seed", type=int, default=VALIDATION_SEED)
    parser.add_argument("--out", default="rerank.json")
    parser.add_argument("--i2t-only", action="store_true", help="score image -> text candidates alone (faster)")
    args = parser.parse_args()

    pipe = OmniBridgePipeline.from_pretrained(args.model)
    started = time.perf_counter()
    scenes, captions, owners = retrieval_dataset(args.scenes, seed=args.seed)
    images = [render(scene) for scene in scenes]
    image_vectors, text_vectors = pipe.embed_images(images), pipe.embed_texts(captions)
    scale = pipe.retrieval_logit_scale
    cos = image_vectors @ text_vectors.T  # [images, captions]
    i2t_top = np.argsort(-cos, axis=1)[:, :TOP]
    t2i_top = np.argsort(-cos.T, axis=1)[:, :TOP]
    pairs = {(i, int(c)) for i, row in enumerate(i2t_top) for c in row}
    if not args.i2t_only:
        pairs |= {(int(i), c) for c, row in enumerate(t2i_top) for i in row}
    pairs = sorted(pairs)
    embedded = time.perf_counter()
    scored = pipe.description_log_likelihoods([images[i] for i, _ in pairs], [captions[c] for _, c in pairs],
                                              batch_size=64)
    likelihood = dict(zip(pairs, scored))
    i2t_lik = {(i, c): v for (i, c), v in likelihood.items()}
    t2i_lik = {(c, i): v for (i, c), v in likelihood.items()}
    report = {"model": args.model, "scenes": len(scenes), "captions": len(captions), "seed": args.seed,
              "logit_scale": round(scale, 2), "pairs_scored": len(pairs),
              "seconds": {"embed": round(embedded - started, 1),
                          "likelihoods": round(time.perf_counter() - embedded, 1)},
              "i2t_R@10_ceiling": float(np.mean([(owners[row] == i).any() for i, row in enumerate(i2t_top)])),
              "t2i_R@10_ceiling": float(np.mean([(row == owners[c]).any() for c, row in enumerate(t2i_top)])),
              "weights": {}}
    for weight in WEIGHTS:
        report["weights"][str(weight)] = {
            "i2t_R@1": rerank_hits(cos * scale, i2t_lik, i2t_top, lambda q, c: owners[c] == q, weight),
            "t2i_R@1": None if args.i2t_only else
            rerank_hits(cos.T * scale, t2i_lik, t2i_top, lambda q, i: owners[q] == i, weight)}
    print(json.dumps(report, indent=1))
    with open(args.out, "w") as handle:
        json.dump(report, handle, indent=1)


if __name__ == "__main__":
    main()
