"""Stage 3, retrieval: multi-positive InfoNCE image<->text plus a small text<->text term.

Loss = i2t + t2i + 0.05 * t2t, with every caption of the same scene a positive (the official
recipe). The LLM stays frozen. Unlike the official retrieval fine-tune, the projector and BiLM are
frozen as well, so this stage cannot degrade generation: it trains the retrieval query banks, the
four pooling heads, the fusion gates and the logit scale.
"""

from __future__ import annotations

import random
from pathlib import Path

import torch
import torch.nn.functional as F

from ..modeling.chat_format import ChatFormat, Message, SpanText, gather_spans
from ..modeling.loading import LoadedModel
from ..shapes.captions import equivalent_captions
from ..shapes.render import render
from ..shapes.world import sample_scene
from .common import StageRun, optimizer_step, step_rng
from .presets import AlignPreset

TEXT_TO_TEXT_WEIGHT = 0.05


def multi_positive_nce(logits: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against targets spread evenly over each row's positives (rows without any skipped)."""
    has_positive = positives.any(1)
    targets = positives[has_positive].float()
    targets = targets / targets.sum(1, keepdim=True)
    log_probs = F.log_softmax(logits[has_positive], dim=1)
    # Excluded pairs carry -inf logits; 0 * -inf would be NaN, so only positives contribute.
    return -torch.where(targets > 0, targets * log_probs, torch.zeros_like(log_probs)).sum(1).mean()


def retrieval_loss(image_embeds, text_embeds, image_ids, text_ids, logit_scale) -> torch.Tensor:
    scale = logit_scale.float().exp()
    positives = image_ids[:, None] == text_ids[None, :]
    i2t = multi_positive_nce(scale * image_embeds @ text_embeds.T, positives)
    t2i = multi_positive_nce(scale * text_embeds @ image_embeds.T, positives.T)
    same = text_ids[:, None] == text_ids[None, :]
    eye = torch.eye(len(text_ids), dtype=torch.bool, device=same.device)
    t2t_logits = (scale * text_embeds @ text_embeds.T).masked_fill(eye, float("-inf"))
    t2t = multi_positive_nce(t2t_logits, same & ~eye)
    return i2t + t2i + TEXT_TO_TEXT_WEIGHT * t2t


@torch.no_grad()
def llm_states(model: LoadedModel, fmt: ChatFormat, prompts, span: str):
    collated = fmt.collate(prompts, "right")
    states = model.llm.model(**collated["inputs"]).last_hidden_state
    return gather_spans(states, [s[span] for s in collated["spans"]])


def retrieval_batch(model: LoadedModel, fmt: ChatFormat, rng: random.Random, n_scenes: int):
    scenes = [sample_scene(rng) for _ in range(n_scenes)]
    image_prompts = [fmt.encode([Message("user", [render(s)])]) for s in scenes]
    texts, text_ids = [], []
    for index, scene in enumerate(scenes):
        captions = equivalent_captions(scene)
        for caption in rng.sample(captions, min(2, len(captions))):
            texts.append(caption)
            text_ids.append(index)
    text_prompts = [fmt.encode([Message("user", [SpanText("text", t)])]) for t in texts]
    images = llm_states(model, fmt, image_prompts, "image0")
    captions = llm_states(model, fmt, text_prompts, "text")
    return images, captions, torch.arange(n_scenes), torch.tensor(text_ids)


def retrieval_parameters(model: LoadedModel) -> list[torch.nn.Parameter]:
    a = model.alignment
    modules = [a.image_proj, a.image_proj_1, a.text_proj, a.text_proj_1]
    return [a.image_queries, a.text_queries, a.fusion_alpha_image, a.fusion_alpha_text, a.logit_scale] + [
        p for m in modules for p in m.parameters()]


def train_retrieval(model: LoadedModel, preset: AlignPreset, work_dir: Path, seed: int, resume: bool) -> dict:
    alignment = model.alignment
    model.llm.requires_grad_(False)
    alignment.requires_grad_(False)
    parameters = retrieval_parameters(model)
    for parameter in parameters:
        parameter.requires_grad_(True)
    fmt = ChatFormat(model.tokenizer, model.image_processor, model.config.prompts)
    run = StageRun(work_dir, "retrieval", preset.stage3_steps, resume, seed)
    optimizer = torch.optim.AdamW(parameters, lr=preset.stage3_lr, weight_decay=0.01)
    if run.saved_state:
        alignment.load_state_dict(run.saved_state["alignment"])
        optimizer.load_state_dict(run.saved_state["optimizer"])
    n_scenes = preset.stage3_batch // 2
    while run.progress.step < preset.stage3_steps:
        step = run.progress.step
        rng = step_rng(seed, "retrieval", step)
        (image_states, image_mask), (text_states, text_mask), image_ids, text_ids = retrieval_batch(
            model, fmt, rng, n_scenes)
        image_embeds = alignment.embed_image_states(image_states, image_mask)
        text_embeds = alignment.embed_text_states(text_states, text_mask)
        loss = retrieval_loss(image_embeds, text_embeds, image_ids, text_ids, alignment.logit_scale)
        optimizer_step(optimizer, loss, parameters, preset.stage3_lr * min(1.0, (step + 1) / 100))
        with torch.no_grad():
            alignment.logit_scale.clamp_(0, 4.6052)  # temperature >= 0.01, as CLIP clamps it
        run.tick(n_scenes, loss=loss.item())
        if run.progress.step % 200 == 0:
            run.save(alignment=alignment.state_dict(), optimizer=optimizer.state_dict())
    run.save(alignment=alignment.state_dict(), optimizer=optimizer.state_dict())
    alignment.eval()
    return run.close()
