"""Study: can an edit's self-check choose among several target captions, not only several drawings of one?

An edit is capped by its target caption: the built-in model writes it exactly right about half the time, and
the self-check (best of N drawings of that one caption, rated by image-caption cosine) cannot repair a wrong
caption. Here each held-out edit gets `--captions` target captions from beam search and `--seeds` drawings of
each, and the candidates are rated by signals the model computes itself:
- `caption`: cosine of the drawing's embedding with its own caption's (today's self-check);
- `source`: cosine of the drawing's embedding with the source image's (an edit changes one thing, so the
  right target looks like the source in everything else; a wrong caption tends to change more);
- `caption+source@w`: their sum with the source term weighted w;
- `beam`: the caption's beam score (length-normalised log-probability).
For every budget (captions x seeds) it prints the accuracy of each signal's pick and of an oracle that keeps
any passing candidate. The detector only grades; it never picks.

    PYTHONPATH=. python scripts/edit_caption_study.py --model assets/omnibridge-shapes --out edit_captions.json
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from omnibridge.evaluation.editing import edit_cases
from omnibridge.modeling.chat_format import EncodedPrompt, SpanText
from omnibridge.modeling.decoder import CaptionEncoding
from omnibridge.pipeline import OmniBridgePipeline
from omnibridge.shapes.detect import image_matches
from omnibridge.shapes.render import render

SOURCE_WEIGHTS = (0.25, 0.5, 1.0)


def beam_captions(pipe, source, instruction: str, count: int) -> tuple[list[str], list[float]]:
    """The `count` best target captions by beam search, with their beam scores."""
    prompts = pipe.config.prompts
    encoded = pipe._edit_prompt(source, instruction)
    forced = EncodedPrompt(encoded.input_ids + pipe.format.tag_ids(prompts.edit_open), encoded.images,
                           encoded.spans)
    batch = pipe._to_device(pipe.format.collate([forced], "left")["inputs"])
    with torch.inference_mode():
        output = pipe.llm.generate(**batch, max_new_tokens=pipe.config.generation.max_new_tokens,
                                   num_beams=count, num_return_sequences=count, do_sample=False,
                                   temperature=None, top_p=None, top_k=None, eos_token_id=pipe._stop_ids(),
                                   pad_token_id=pipe.format.pad_id, return_dict_in_generate=True,
                                   output_scores=True)
    new_tokens = output.sequences[:, batch["input_ids"].shape[1]:]
    captions = [pipe.tokenizer.decode(row, skip_special_tokens=True).split("\n")[0].strip() for row in new_tokens]
    return captions, [float(s) for s in output.sequences_scores]


def draw(pipe, source, instruction: str, captions: list[str], seeds: list[int]):
    """Every caption drawn once per seed, in one batch: images in caption-major order."""
    encoded = pipe._edit_prompt(source, instruction)
    conditions = [pipe._edit_condition(encoded, caption) for caption in captions]
    cond = CaptionEncoding.cat([c.repeat(len(seeds)) for c in conditions])
    defaults = pipe.config.generation
    with torch.inference_mode():
        latents = pipe.decoder.denoise(cond, [s for _ in captions for s in seeds], defaults.height, defaults.width,
                                       defaults.num_inference_steps, defaults.guidance_scale,
                                       guidance_cutoff=defaults.guidance_cutoff)
        return pipe.decoder.decode_latents(latents)


def study_edit(pipe, index: int, example, captions_per_edit: int, seeds_per_caption: int) -> dict:
    source = render(example.source)
    instruction = example.instruction

    def job():
        captions, beam = beam_captions(pipe, source, instruction, captions_per_edit)
        seeds = [index + j for j in range(seeds_per_caption)]
        images = draw(pipe, source, instruction, captions, seeds)
        image_vectors = pipe._embed_vectors(images + [source], "image0", pipe.alignment.embed_image_states)
        text_vectors = pipe._embed_vectors([SpanText("text", c) for c in captions], "text",
                                           pipe.alignment.embed_text_states)
        return captions, beam, images, image_vectors, text_vectors

    captions, beam, images, image_vectors, text_vectors = pipe.run_job(job)
    drawn, source_vector = image_vectors[:-1], image_vectors[-1]
    own_caption = np.repeat(text_vectors, seeds_per_caption, axis=0)
    return {
        "etype": example.etype, "target": example.target_caption, "captions": captions,
        "caption_right": [c == example.target_caption for c in captions],
        "passed": [bool(image_matches(image, example.target_spec)) for image in images],
        "caption": (drawn * own_caption).sum(1).round(4).tolist(),
        "source": (drawn @ source_vector).round(4).tolist(),
        "beam": np.repeat(beam, seeds_per_caption).round(4).tolist(),
    }


def pick_accuracy(records: list[dict], captions: int, seeds: int, total_seeds: int) -> dict:
    """Accuracy of each signal's pick among the first `captions` captions x first `seeds` seeds."""
    signals = {"caption": lambda r: np.array(r["caption"]), "source": lambda r: np.array(r["source"]),
               "beam": lambda r: np.array(r["beam"])}
    for w in SOURCE_WEIGHTS:
        signals[f"caption+source@{w}"] = lambda r, w=w: np.array(r["caption"]) + w * np.array(r["source"])
    keep = [c * total_seeds + s for c in range(captions) for s in range(seeds)]
    result = {}
    for name, signal in signals.items():
        result[name] = round(float(np.mean([r["passed"][keep[int(np.argmax(signal(r)[keep]))]] for r in records])), 4)
    result["oracle"] = round(float(np.mean([any(r["passed"][i] for i in keep) for r in records])), 4)
    result["first"] = round(float(np.mean([r["passed"][0] for r in records])), 4)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="assets/omnibridge-shapes")
    parser.add_argument("--edits-per-type", type=int, default=15, help="15 = the evaluation's 60 edits")
    parser.add_argument("--captions", type=int, default=4)
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--out", default="edit_caption_study.json")
    args = parser.parse_args()

    pipe = OmniBridgePipeline.from_pretrained(args.model)
    start, records = time.perf_counter(), []
    for index, example in enumerate(edit_cases(args.edits_per_type)):
        records.append(study_edit(pipe, index, example, args.captions, args.seeds))
    budgets = {f"{c} captions x {s} seeds": pick_accuracy(records, c, s, args.seeds)
               for c in sorted({1, 2, args.captions}) for s in sorted({1, 2, args.seeds})
               if c <= args.captions and s <= args.seeds}
    summary = {"model": args.model, "edits": len(records), "seconds": round(time.perf_counter() - start),
               "top_beam_caption_exact": round(float(np.mean([r["caption_right"][0] for r in records])), 4),
               "any_beam_caption_exact": round(float(np.mean([any(r["caption_right"]) for r in records])), 4),
               "budgets": budgets}
    print(json.dumps(summary, indent=1))
    with open(args.out, "w") as handle:
        json.dump({**summary, "records": records}, handle, indent=1)


if __name__ == "__main__":
    main()
