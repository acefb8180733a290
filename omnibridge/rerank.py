"""Re-ranking image -> caption search by the model's own description likelihood.

A unified model can judge a match two ways: the retrieval heads' cosine (one vector per side, fast over a
whole gallery), and the language model's likelihood of the caption as its answer to "Describe the image."
(it reads the image's tokens and the caption's together, so it can check each object). The second is too
slow for a whole gallery but cheap for a short list, so an image -> captions search takes its top
`RERANK_TOP` by cosine and orders them by

    logit_scale * cosine + weight * log p(caption | image, the model's describe prompt)

where the weight is the model's `retrieval.caption_rerank_weight` (0: off). Measured with the built-in model
(scripts/rerank_study.py, docs/evaluation-notes.md): on 1,000 validation scenes image -> text R@1 rose from
0.869 to 0.929 at weight 1.0, where the weight was chosen, and held out from 0.865 to 0.912. Text -> image is
not re-ranked: there the likelihood compares one caption across images, and it hurt (0.844 -> 0.622 at 1.0).
"""

from __future__ import annotations

import numpy as np

RERANK_TOP = 10


def rerank_order(cosines, log_likelihoods, logit_scale: float, weight: float) -> list[int]:
    """Indices of the candidates, best first, by the combined score; ties keep the cosine order."""
    combined = logit_scale * np.asarray(cosines, dtype=np.float64) + weight * np.asarray(log_likelihoods,
                                                                                        dtype=np.float64)
    return sorted(range(len(combined)), key=lambda i: -combined[i])
