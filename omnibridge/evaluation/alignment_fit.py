"""How well does stage 2 reproduce the decoder's T5 slot, and would that error matter as plain noise?

The generation score of the full path can fall far below the decoder's own (the decoder alone) while
stage 2's loss looks fine. Two numbers separate the causes:
- `relative_mse`: the text-to-image MSE with every position a learned query (how generation runs),
  divided by the T5 slot's variance over the same tokens (1.0 = no better than predicting the mean);
- `padding_mse`: the same at the padding positions, which HunyuanDiT's attention pool reads too;
- with `--noise-prompts`, the decoder alone with its own T5 slot plus isotropic Gaussian noise of that
  same MSE: if this scores like the clean decoder, the BiLM's error is not noise but sits where the
  caption's meaning is.

    python -m omnibridge.evaluation.alignment_fit --model assets/omnibridge-shapes --noise-prompts 20
"""

from __future__ import annotations

import argparse
import json

import torch

from ..modeling.chat_format import ChatFormat
from ..modeling.decoder import CaptionEncoding
from ..training.align_stage import alignment_batch, masked_mse
from ..training.common import step_rng
from .generation import evaluate_generation, generation_cases

FIT_SEED = 99  # held apart from the training seeds


def text_to_image_fit(pipe, batches: int = 4, batch_size: int = 64) -> dict:
    model = pipe.model
    fmt = ChatFormat(model.tokenizer, model.image_processor, model.config.prompts)
    mse = variance = padding_mse = 0.0
    with torch.no_grad():
        for index in range(batches):
            memory, memory_mask, _, target, t5_mask, _ = alignment_batch(
                model, fmt, step_rng(FIT_SEED, "fit", index), batch_size, edit_share=0.0)
            prediction = model.alignment.condition(memory, memory_mask)
            weights = t5_mask[..., None].to(target.dtype)
            mean = (target * weights).sum((0, 1)) / weights.sum()
            mse += masked_mse(prediction, target, t5_mask).item() / batches
            variance += masked_mse(mean.expand_as(target), target, t5_mask).item() / batches
            padding_mse += masked_mse(prediction, target, 1 - t5_mask).item() / batches
    return {"mse": round(mse, 5), "t5_variance": round(variance, 5), "relative_mse": round(mse / variance, 4),
            "padding_mse": round(padding_mse, 5), "captions": batches * batch_size}


def noise_tolerance(pipe, mse: float, per_category: int) -> dict:
    """The decoder alone, clean and with its T5 slot plus isotropic noise of the given MSE."""
    cases = generation_cases(per_category)

    def decoder_alone(prompts, seeds):
        return pipe.generate_batch(prompts, seeds, rewrite=False, use_learned_queries=False)[0]

    clean = evaluate_generation(decoder_alone, cases)["overall"]
    own_condition = pipe._condition

    def noisy_condition(captions, states=None, t5_inputs=False):
        encoding = own_condition(captions)
        noise = torch.randn(encoding.embeds_2.shape, generator=torch.Generator().manual_seed(FIT_SEED)) * mse**0.5
        return CaptionEncoding(encoding.embeds, encoding.mask, encoding.embeds_2 + noise.to(encoding.embeds_2),
                               encoding.mask_2)

    pipe._condition = noisy_condition
    try:
        noisy = evaluate_generation(decoder_alone, cases)["overall"]
    finally:
        del pipe._condition  # back to the class's method
    return {"decoder_alone": clean, "decoder_alone_with_noise": noisy, "prompts": len(cases)}


def main(argv: list[str] | None = None) -> dict:
    from ..pipeline import OmniBridgePipeline

    parser = argparse.ArgumentParser(prog="python -m omnibridge.evaluation.alignment_fit", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="assets/omnibridge-shapes")
    parser.add_argument("--noise-prompts", type=int, default=0, help="prompts per category for the noise check")
    args = parser.parse_args(argv)
    pipe = OmniBridgePipeline.from_pretrained(args.model)
    report = {"fit": text_to_image_fit(pipe)}
    if args.noise_prompts:
        report["noise"] = noise_tolerance(pipe, report["fit"]["mse"], args.noise_prompts)
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
