"""Study: does a model with answer layers need them to rewrite prompts, or does its frozen trunk do as well?

The prompt rewrite turns a free-form prompt ("Please draw 2 red circles!") into a caption in the decoder's
language ("two red circles"). The built-in model learned it in stage 1, before answer layers were stacked on
top (training/grow.py); the answer layers were then trained mostly on questions. So for each layer count
(all layers, and the trunk that `feature_layers` names) this prints:
- how many paraphrased validation prompts it rewrites to their canonical caption (compared as scenes, as
  caption_choice.py does, so the order the objects are named in does not count against it);
- how many canonical captions it leaves as they are (the evaluation's prompts are canonical);
- the median time of one rewrite, the two layer counts timed in alternation.
The prompts come from the generation evaluation's validation seed, so nothing here looks at held-out ones.

    PYTHONPATH=. python scripts/rewrite_layers_study.py --model assets/omnibridge-shapes
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from dataclasses import replace

from omnibridge.caption_choice import caption_scene
from omnibridge.evaluation.generation import VALIDATION_SEED, generation_cases
from omnibridge.pipeline import OmniBridgePipeline
from omnibridge.shapes.captions import paraphrase_prompt


def means_the_same(caption: str, target: str) -> bool:
    scene = caption_scene(caption)
    return scene is not None and scene == caption_scene(target)


def rewrite(pipe: OmniBridgePipeline, prompts: list[str], layers: int | None, batch: int = 50) -> list[str]:
    """The pipeline's own rewrite with `generation.rewrite_layers` set to `layers`."""
    pipe.config.generation = replace(pipe.config.generation, rewrite_layers=layers)
    return pipe.run_job(lambda: [c for i in range(0, len(prompts), batch)
                                 for c in pipe.rewrite_prompts(prompts[i:i + batch])])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="assets/omnibridge-shapes")
    parser.add_argument("--prompts-per-category", type=int, default=50)
    parser.add_argument("--timing-rounds", type=int, default=15)
    args = parser.parse_args()

    pipe = OmniBridgePipeline.from_pretrained(args.model)
    trunk = pipe.config.feature_layers
    if trunk is None:
        raise SystemExit(f"{args.model} has no answer layers (feature_layers is None): nothing to compare")
    cases = generation_cases(args.prompts_per_category, VALIDATION_SEED)
    rng = random.Random(0)
    paraphrased = [paraphrase_prompt(rng, case.prompt) for case in cases]
    canonical = [case.prompt for case in cases]
    counts = {"all": None, "trunk": trunk}

    times = {name: [] for name in counts}
    for _ in range(args.timing_rounds):  # alternating, so both see the same machine load
        for name, layers in counts.items():
            start = time.perf_counter()
            rewrite(pipe, paraphrased[:1], layers)
            times[name].append(time.perf_counter() - start)

    total = pipe.llm.config.text_config.num_hidden_layers
    for name, layers in counts.items():
        from_paraphrase = rewrite(pipe, paraphrased, layers)
        kept = rewrite(pipe, canonical, layers)
        right = sum(means_the_same(c, t) for c, t in zip(from_paraphrase, canonical))
        unchanged = sum(c == t for c, t in zip(kept, canonical))
        print(f"{name} ({layers or total} layers): paraphrase -> its caption {right}/{len(cases)}, "
              f"canonical caption kept {unchanged}/{len(cases)}, "
              f"one rewrite {statistics.median(times[name]) * 1000:.0f} ms")
        for prompt, caption, target in zip(paraphrased, from_paraphrase, canonical):
            if not means_the_same(caption, target):
                print(f"    {prompt!r} -> {caption!r} (wanted {target!r})")


if __name__ == "__main__":
    main()
