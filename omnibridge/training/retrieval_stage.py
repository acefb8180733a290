"""Stage 3, retrieval: multi-positive InfoNCE image<->text plus a small text<->text term.

Loss = i2t + t2i + 0.05 * t2t, with every caption of the same scene a positive (the official
recipe), plus a term of our own for short queries: a gallery user types "a red circle", not a scene's
whole description, and a model trained on whole descriptions only ranks such a query poorly. Some
scenes of each batch also bring a partial description of themselves (captions.partial_spec), and
every image in the batch that answers it is its positive (text->image only: image->text and
text->text keep to whole descriptions).

The LLM stays frozen. Unlike the official retrieval fine-tune, the projector and BiLM are frozen as
well, so this stage cannot degrade generation: it trains the retrieval query banks, the four pooling
heads, the fusion gates and the logit scale.

Because the LLM is frozen, its states for a scene never change: they are computed once for a pool of
scenes (`stage3_pool_scenes`, a few minutes) and each step draws its batch from the pool. A step then
costs the heads alone, about 20x less than running the LLM on every batch, which buys both many more
steps and bigger batches (harder negatives) in the same time.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..modeling.chat_format import ChatFormat, Message, SpanText, gather_spans
from ..modeling.features import feature_states
from ..modeling.loading import LoadedModel
from ..shapes.captions import CaptionSpec, equivalent_captions, format_caption, partial_spec, query_holds
from ..shapes.render import render
from ..shapes.world import Scene, sample_scene
from .common import StageRun, optimizer_step, step_rng, warmup_cosine_lr
from .presets import AlignPreset

TEXT_TO_TEXT_WEIGHT = 0.05
PARTIAL_QUERY_WEIGHT = 0.5


def multi_positive_nce(logits: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against targets spread evenly over each row's positives (rows without any skipped)."""
    has_positive = positives.any(1)
    targets = positives[has_positive].float()
    targets = targets / targets.sum(1, keepdim=True)
    log_probs = F.log_softmax(logits[has_positive], dim=1)
    # Excluded pairs carry -inf logits; 0 * -inf would be NaN, so only positives contribute.
    return -torch.where(targets > 0, targets * log_probs, torch.zeros_like(log_probs)).sum(1).mean()


def retrieval_loss(image_embeds, text_embeds, image_ids, text_ids, logit_scale,
                   partial_embeds: torch.Tensor | None = None, partial_answers: torch.Tensor | None = None
                   ) -> torch.Tensor:
    """`partial_answers[q, i]`: whether image i answers short query q (multi-positive text->image)."""
    scale = logit_scale.float().exp()
    positives = image_ids[:, None] == text_ids[None, :]
    i2t = multi_positive_nce(scale * image_embeds @ text_embeds.T, positives)
    t2i = multi_positive_nce(scale * text_embeds @ image_embeds.T, positives.T)
    same = text_ids[:, None] == text_ids[None, :]
    eye = torch.eye(len(text_ids), dtype=torch.bool, device=same.device)
    t2t_logits = (scale * text_embeds @ text_embeds.T).masked_fill(eye, float("-inf"))
    t2t = multi_positive_nce(t2t_logits, same & ~eye)
    loss = i2t + t2i + TEXT_TO_TEXT_WEIGHT * t2t
    if partial_embeds is not None:
        loss = loss + PARTIAL_QUERY_WEIGHT * multi_positive_nce(scale * partial_embeds @ image_embeds.T, partial_answers)
    return loss


@torch.no_grad()
def llm_states(model: LoadedModel, fmt: ChatFormat, prompts, span: str):
    collated = fmt.collate(prompts, "right")
    states = feature_states(model.llm, model.config.feature_layers, collated["inputs"])
    return gather_spans(states, [s[span] for s in collated["spans"]])


@dataclass
class StatePool:
    """Frozen-LLM states of a fixed set of scenes: one image span per scene, several captions each."""

    image_states: list[torch.Tensor]  # per scene: [tokens, hidden], float16
    caption_states: list[torch.Tensor]  # per caption: [tokens, hidden], float16
    captions_of_scene: list[list[int]]  # scene -> indices into caption_states
    llm_fingerprint: float
    scenes: list[Scene]  # to tell which images answer a short query
    partial_states: list[torch.Tensor]  # per scene: one short query drawn from it
    partial_specs: list[CaptionSpec]

    def __len__(self) -> int:
        return len(self.image_states)


def llm_fingerprint(model: LoadedModel) -> float:
    """Changes whenever the LLM's weights do, so a pool computed from another LLM is never reused."""
    return float(sum(p.detach().double().sum() for p in model.llm.parameters()))


def _unpadded(states: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor]:
    return [row[: int(n)].to(torch.float16).clone() for row, n in zip(states, mask.sum(1))]


def build_state_pool(model: LoadedModel, fmt: ChatFormat, seed: int, n_scenes: int, captions_per_scene: int = 3,
                     chunk: int = 64) -> StatePool:
    rng = random.Random(f"{seed}/retrieval-pool")
    partial_rng = random.Random(f"{seed}/retrieval-pool-partial")  # its own, so the rest of the pool is as before
    scenes = [sample_scene(rng) for _ in range(n_scenes)]
    image_states, caption_states, captions_of_scene, partial_states, partial_specs = [], [], [], [], []
    for start in tqdm(range(0, n_scenes, chunk), desc="retrieval pool", dynamic_ncols=True, mininterval=5.0):
        batch = scenes[start:start + chunk]
        image_prompts = [fmt.encode([Message("user", [render(s)])]) for s in batch]
        image_states += _unpadded(*llm_states(model, fmt, image_prompts, "image0"))
        texts = []
        for scene in batch:
            captions = equivalent_captions(scene)
            chosen = rng.sample(captions, min(captions_per_scene, len(captions)))
            captions_of_scene.append(list(range(len(caption_states) + len(texts),
                                                len(caption_states) + len(texts) + len(chosen))))
            texts += chosen
        caption_states += _text_states(model, fmt, texts)
        specs = [partial_spec(scene, partial_rng) for scene in batch]
        partial_states += _text_states(model, fmt, [format_caption(spec) for spec in specs])
        partial_specs += specs
    return StatePool(image_states, caption_states, captions_of_scene, llm_fingerprint(model), scenes,
                     partial_states, partial_specs)


def _text_states(model: LoadedModel, fmt: ChatFormat, texts: list[str]) -> list[torch.Tensor]:
    prompts = [fmt.encode([Message("user", [SpanText("text", t)])]) for t in texts]
    return _unpadded(*llm_states(model, fmt, prompts, "text"))


def load_or_build_pool(model: LoadedModel, fmt: ChatFormat, preset: AlignPreset, seed: int, folder: Path) -> StatePool:
    path = folder / f"pool-{preset.stage3_pool_scenes}-seed{seed}.pt"
    fingerprint = llm_fingerprint(model)
    if path.exists():
        saved = torch.load(path, map_location="cpu", weights_only=False)
        same_llm = abs(saved["llm_fingerprint"] - fingerprint) <= 1e-6 * max(1.0, abs(fingerprint))
        if same_llm and "partial_states" in saved:  # a pool from before the short queries is rebuilt
            return StatePool(**saved)
    pool = build_state_pool(model, fmt, seed, preset.stage3_pool_scenes)
    torch.save(pool.__dict__, path)
    return pool


def _padded(rows: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    longest = max(len(r) for r in rows)
    states = rows[0].new_zeros(len(rows), longest, rows[0].shape[-1], dtype=torch.float32)
    mask = torch.zeros(len(rows), longest, dtype=torch.long)
    for i, row in enumerate(rows):
        states[i, : len(row)] = row.float()
        mask[i, : len(row)] = 1
    return states, mask


@dataclass
class PoolBatch:
    images: tuple[torch.Tensor, torch.Tensor]  # states, mask
    texts: tuple[torch.Tensor, torch.Tensor]
    image_ids: torch.Tensor
    text_ids: torch.Tensor  # the image each whole description belongs to
    partials: tuple[torch.Tensor, torch.Tensor] | None  # short queries; None when the batch has none
    partial_answers: torch.Tensor  # [queries, images]: which images answer each short query


def pool_batch(pool: StatePool, rng: random.Random, n_scenes: int, captions_per_scene: int = 2,
               partial_share: float = 0.0) -> PoolBatch:
    """n_scenes images, up to `captions_per_scene` of each one's whole descriptions, and the short
    queries of a `partial_share` of the scenes."""
    scenes = rng.sample(range(len(pool)), min(n_scenes, len(pool)))
    texts, text_ids = [], []
    for index, scene in enumerate(scenes):
        captions = pool.captions_of_scene[scene]
        for caption in rng.sample(captions, min(captions_per_scene, len(captions))):
            texts.append(pool.caption_states[caption])
            text_ids.append(index)
    askers = scenes[: round(partial_share * len(scenes))]
    answers = torch.tensor([[query_holds(pool.partial_specs[q], pool.scenes[s]) for s in scenes] for q in askers],
                           dtype=torch.bool).reshape(len(askers), len(scenes))
    partials = _padded([pool.partial_states[q] for q in askers]) if askers else None
    return PoolBatch(_padded([pool.image_states[i] for i in scenes]), _padded(texts), torch.arange(len(scenes)),
                     torch.tensor(text_ids), partials, answers)


# The parts of the alignment that stage 3 trains, in its optimizer's order; stage 2 owns the rest.
RETRIEVAL_PARTS = ("image_queries", "text_queries", "fusion_alpha_image", "fusion_alpha_text", "logit_scale",
                   "image_proj", "image_proj_1", "text_proj", "text_proj_1")


def retrieval_parameters(model: LoadedModel) -> list[torch.nn.Parameter]:
    parameters = []
    for part in RETRIEVAL_PARTS:
        value = getattr(model.alignment, part)
        parameters += [value] if isinstance(value, torch.nn.Parameter) else list(value.parameters())
    return parameters


def retrieval_state(state: dict) -> dict:
    """The entries of an alignment state dict that stage 3 trains. A resumed stage 3 restores only
    these, so that a stage 2 run since its last save (a new LLM, a new decoder) is not rolled back."""
    return {k: v for k, v in state.items() if k.split(".")[0] in RETRIEVAL_PARTS}


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
        saved = retrieval_state(run.saved_state["alignment"])
        missing = set(retrieval_state(alignment.state_dict())) - set(saved)
        if missing:
            raise ValueError(f"{run.state_path} lacks stage 3's {sorted(missing)}: train stage 3 without --resume")
        alignment.load_state_dict(saved, strict=False)
        optimizer.load_state_dict(run.saved_state["optimizer"])
    pool = load_or_build_pool(model, fmt, preset, seed, run.dir)
    n_scenes = preset.stage3_batch // 2
    while run.progress.step < preset.stage3_steps:
        step = run.progress.step
        rng = step_rng(seed, "retrieval", step)
        batch = pool_batch(pool, rng, n_scenes, partial_share=preset.stage3_partial_share)
        image_embeds = alignment.embed_image_states(*batch.images)
        text_embeds = alignment.embed_text_states(*batch.texts)
        partial_embeds = alignment.embed_text_states(*batch.partials) if batch.partials else None
        loss = retrieval_loss(image_embeds, text_embeds, batch.image_ids, batch.text_ids, alignment.logit_scale,
                              partial_embeds, batch.partial_answers)
        lr = warmup_cosine_lr(step, preset.stage3_steps, preset.stage3_lr, warmup=min(100, preset.stage3_steps // 10 + 1))
        optimizer_step(optimizer, loss, parameters, lr)
        with torch.no_grad():
            alignment.logit_scale.clamp_(0, 4.6052)  # temperature >= 0.01, as CLIP clamps it
        run.tick(n_scenes, loss=loss.item())
        if run.progress.step % 200 == 0:
            run.save(alignment=retrieval_state(alignment.state_dict()), optimizer=optimizer.state_dict())
    run.save(alignment=retrieval_state(alignment.state_dict()), optimizer=optimizer.state_dict())
    alignment.eval()
    return run.close()
