"""Stage 2, latent alignment: projector + learned queries + BiLM learn to speak the decoder's T5 slot.

LLM and decoder are frozen. For a caption, the target is the decoder's own T5-encoder output; the
BiLM reads the LLM's hidden states of that caption (cross-attention) and, as its input, the
decoder's T5 token embeddings of the caption, a growing share of which the semantic-guided schedule
replaces by learned queries, until only queries remain (the text-to-image inference setting).
Edit samples condition on the image-token states instead and are never replaced (as in the paper).
The MSE covers every T5 position, padding included, as the official loss does: HunyuanDiT's
attention pool reads all T5 positions without a mask and adds the result to the timestep embedding,
so the padding outputs steer every block. (A loss masked to the caption's tokens left them untrained;
putting the decoder's own values back at the padding positions lifted one candidate's full path from
0.07 to 0.54: see README.)
"""

from __future__ import annotations

import random
from pathlib import Path

import torch

from ..modeling.alignment import OmniBridgeAlignment
from ..modeling.chat_format import ChatFormat, Message, gather_spans
from ..modeling.features import feature_states
from ..modeling.loading import LoadedModel
from ..modeling.schedule import SemanticGuidedSchedule
from ..shapes.captions import paraphrase_prompt
from ..shapes.render import render
from .common import StageRun, optimizer_step, step_rng
from .decoder_data import sample_decoder_pair
from .llm_data import sample_edit_example
from .presets import AlignPreset

EDIT_SHARE = 0.15


def _pad_cat(parts: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    longest = max(states.shape[1] for states, _ in parts)
    states = torch.cat([torch.nn.functional.pad(s, (0, 0, 0, longest - s.shape[1])) for s, _ in parts])
    masks = torch.cat([torch.nn.functional.pad(m, (0, longest - m.shape[1])) for _, m in parts])
    return states, masks


@torch.no_grad()
def alignment_batch(model: LoadedModel, fmt: ChatFormat, rng: random.Random, batch_size: int,
                    edit_share: float = EDIT_SHARE):
    """Frozen-model features for one batch: LLM states (memory), T5 inputs, T5 targets and masks."""
    prompts_cfg = model.config.prompts
    n_edit = sum(rng.random() < edit_share for _ in range(batch_size))
    captions, memories, edit_flags = [], [], []
    t2i_prompts = []
    for _ in range(batch_size - n_edit):
        _, caption = sample_decoder_pair(rng)
        user = prompts_cfg.rewrite.format(prompt=paraphrase_prompt(rng, caption))
        t2i_prompts.append(fmt.with_caption(fmt.encode([Message("user", [user])]), caption,
                                            prompts_cfg.image_open, prompts_cfg.image_close))
        captions.append(caption)
    edit_prompts = []
    for _ in range(n_edit):
        example = sample_edit_example(rng)
        user = fmt.encode([Message("user", [render(example.source),
                                            prompts_cfg.edit.format(instruction=example.instruction)])])
        edit_prompts.append(fmt.with_caption(user, example.target_caption, prompts_cfg.edit_open,
                                             prompts_cfg.edit_close))
        captions.append(example.target_caption)
    for prompts, span in ((t2i_prompts, "caption"), (edit_prompts, "image0")):
        if prompts:
            collated = fmt.collate(prompts, "right")
            states = feature_states(model.llm, model.config.feature_layers, collated["inputs"])
            memories.append(gather_spans(states, [s[span] for s in collated["spans"]]))
            edit_flags += [span == "image0"] * len(prompts)
    memory, memory_mask = _pad_cat(memories)
    decoder = model.decoder
    ids, t5_mask = decoder.tokenize_t5(captions)
    inputs = decoder.t5_input_embeddings(ids)
    target = decoder.text_encoder_2(ids, attention_mask=t5_mask)[0]
    return memory, memory_mask, inputs, target, t5_mask, torch.tensor(edit_flags)


def alignment_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Stage 2's loss: MSE over every T5 position, padding included (the attention pool reads it)."""
    return torch.nn.functional.mse_loss(prediction, target)


def masked_mse(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    weights = mask[..., None].to(prediction.dtype)
    return ((prediction - target) ** 2 * weights).sum() / (weights.sum() * prediction.shape[-1]).clamp(min=1)


def reinitialise_alignment(model: LoadedModel, seed: int) -> None:
    """Fresh projector and BiLM (the parts stage 2 trains), as before the first stage-2 run.

    Stage 2 otherwise starts from the alignment in the model folder, which after a newer decoder is
    one trained against another decoder's T5 targets.
    """
    with torch.random.fork_rng():  # seeded without moving the caller's global RNG
        torch.manual_seed(seed)
        fresh = OmniBridgeAlignment(model.config)
    for name in ("downsampling_linear_layer", "bilm"):
        getattr(model.alignment, name).load_state_dict(getattr(fresh, name).state_dict())


def train_alignment(model: LoadedModel, preset: AlignPreset, work_dir: Path, seed: int, resume: bool,
                    fresh: bool = False) -> dict:
    schedule = SemanticGuidedSchedule.with_final_all_queries(preset.all_queries_share)
    alignment = model.alignment
    model.llm.requires_grad_(False)
    for module in model.decoder.modules().values():
        module.requires_grad_(False)
    trainable = [alignment.downsampling_linear_layer, alignment.bilm]
    parameters = [p for module in trainable for p in module.parameters()]
    fmt = ChatFormat(model.tokenizer, model.image_processor, model.config.prompts)
    run = StageRun(work_dir, "align", preset.stage2_steps, resume, seed)
    optimizer = torch.optim.AdamW(parameters, lr=preset.stage2_lr, weight_decay=0.01)
    if run.saved_state:
        alignment.load_state_dict(run.saved_state["alignment"])
        optimizer.load_state_dict(run.saved_state["optimizer"])
    elif fresh:
        reinitialise_alignment(model, seed)
    generator = torch.Generator().manual_seed(seed)
    held_out = alignment_batch(model, fmt, step_rng(seed, "align-held-out", 0), preset.stage2_batch)

    @torch.no_grad()
    def inference_setting_loss() -> float:
        """MSE on a fixed batch with every position a learned query (how text-to-image runs)."""
        memory, memory_mask, _, target, _, _ = held_out
        prediction = alignment.eval().condition(memory, memory_mask)
        alignment.train()
        return alignment_loss(prediction, target).item()

    # The training loss rises while the schedule replaces more inputs by queries, so the stage
    # reports its progress on the inference setting instead.
    loss_before = inference_setting_loss()
    alignment.train()
    while run.progress.step < preset.stage2_steps:
        step = run.progress.step
        rng = step_rng(seed, "align", step)
        generator.manual_seed(rng.randrange(2**31))
        memory, memory_mask, inputs, target, _, is_edit = alignment_batch(model, fmt, rng, preset.stage2_batch)
        progress = step / max(1, preset.stage2_steps - 1)
        query_mask = schedule.sample_mask(inputs.shape[0], inputs.shape[1], progress, generator, exempt=is_edit)
        prediction = alignment.condition(memory, memory_mask, inputs_embeds=inputs, query_mask=query_mask)
        loss = alignment_loss(prediction, target)
        optimizer_step(optimizer, loss, parameters, preset.stage2_lr * min(1.0, (step + 1) / 100))
        p_min, p_max = schedule.probability_range(progress)
        run.tick(inputs.shape[0], loss=loss.item(), p_max=p_max)
        if run.progress.step % 200 == 0:
            run.save(alignment=alignment.state_dict(), optimizer=optimizer.state_dict())
    run.save(alignment=alignment.state_dict(), optimizer=optimizer.state_dict())
    loss_after = inference_setting_loss()
    run.log(event="done", all_queries_loss_before=loss_before, all_queries_loss_after=loss_after)
    alignment.eval()
    return {**run.close(), "first_loss": round(loss_before, 5), "last_loss": round(loss_after, 5),
            "loss_measure": "held-out MSE with all positions learned queries"}
