"""Stage 1b, the eye: retrain the vision tower and its merger, with the language model frozen.

Qwen2-VL comes with a pretrained vision encoder; our tiny one learns from scratch in stage 1, where
the next-token loss says little about shape, and a linear probe finds that it hardly encodes it
(`evaluation/vision_probe.py`). This stage gives the tower a direct signal: every merged image token
(one per 2x2 patch window) must name the object whose centre lies in its cell (colour, shape and
size, or nothing), beside the usual answer loss on image conversations. The language model and the
LM head stay frozen, so text-only behaviour (prompt rewriting and the caption states that stage 2
aligns to the decoder) is exactly unchanged; only what the image tokens carry moves.
"""

from __future__ import annotations

import random
from pathlib import Path

import torch
import torch.nn.functional as F

from ..modeling.chat_format import ChatFormat, Message
from ..modeling.loading import LoadedModel
from ..shapes.render import render
from ..shapes.world import CANVAS, COLORS, SHAPES, SIZE_NAMES, Scene, sample_scene
from .common import StageRun, optimizer_step, step_rng, warmup_cosine_lr
from .llm_stage import accumulate_gradients
from .llm_data import sample_conversation
from .presets import LLMPreset

# Conversations in which the answer depends on an image (the others give the tower no gradient).
IMAGE_TASKS = {"vqa": 0.6, "multi_qa": 0.15, "edit": 0.2, "draw_then_ask": 0.05}
OBJECT_CLASSES = [(c, s, z) for c in COLORS for s in SHAPES for z in SIZE_NAMES]  # class 0 is "empty"


def cell_labels(scene: Scene, cells_per_side: int) -> torch.Tensor:
    """[cells_per_side**2] class per merged token, row-major: 0 empty, else 1 + OBJECT_CLASSES index."""
    labels = torch.zeros(cells_per_side * cells_per_side, dtype=torch.long)
    cell = CANVAS / cells_per_side
    for obj in scene.objects:
        row, col = min(int(obj.cy // cell), cells_per_side - 1), min(int(obj.cx // cell), cells_per_side - 1)
        labels[row * cells_per_side + col] = 1 + OBJECT_CLASSES.index((obj.color, obj.shape, obj.size))
    return labels


def object_map_loss(model: LoadedModel, fmt: ChatFormat, head: torch.nn.Linear, scenes: list[Scene]) -> tuple:
    """Cross-entropy of each merged image token's object class; returns (loss, token accuracy)."""
    prompts = [fmt.encode([Message("user", [render(scene)])]) for scene in scenes]
    inputs = fmt.collate(prompts)["inputs"]
    grid = inputs["image_grid_thw"][0]
    merge = model.llm.config.vision_config.spatial_merge_size
    cells_per_side = int(grid[1]) // merge
    tokens = model.llm.model.visual(inputs["pixel_values"], grid_thw=inputs["image_grid_thw"]).pooler_output
    labels = torch.cat([cell_labels(scene, cells_per_side) for scene in scenes])
    logits = head(tokens)
    loss = F.cross_entropy(logits, labels)
    return loss, (logits.argmax(1) == labels).float().mean().item()


def train_vision(model: LoadedModel, preset: LLMPreset, work_dir: Path, seed: int, resume: bool) -> dict:
    llm = model.llm
    llm.requires_grad_(False)
    visual = llm.model.visual
    visual.requires_grad_(True)
    llm.eval()
    visual.train()
    head = torch.nn.Linear(llm.config.text_config.hidden_size, 1 + len(OBJECT_CLASSES))
    parameters = list(visual.parameters()) + list(head.parameters())
    fmt = ChatFormat(model.tokenizer, model.image_processor, model.config.prompts)
    run = StageRun(work_dir, "vision", preset.vision_steps, resume, seed)
    optimizer = torch.optim.AdamW(parameters, lr=preset.vision_lr, weight_decay=0.01, betas=(0.9, 0.95))
    if run.saved_state:
        visual.load_state_dict(run.saved_state["visual"])
        head.load_state_dict(run.saved_state["head"])
        optimizer.load_state_dict(run.saved_state["optimizer"])
    warmup = max(1, preset.vision_steps // 20)
    tasks, weights = list(IMAGE_TASKS), list(IMAGE_TASKS.values())
    while run.progress.step < preset.vision_steps:
        rng = step_rng(seed, "vision", run.progress.step)
        conversations = [sample_conversation(rng, rng.choices(tasks, weights)[0]) for _ in range(preset.batch // 2)]
        answer_loss = accumulate_gradients(llm, fmt, conversations, preset.max_length)
        map_loss, map_accuracy = object_map_loss(model, fmt, head, [sample_scene(rng) for _ in range(preset.batch)])
        map_loss.backward()
        optimizer_step(optimizer, None, parameters,
                       warmup_cosine_lr(run.progress.step, preset.vision_steps, preset.vision_lr, warmup))
        run.tick(len(conversations) + preset.batch, loss=answer_loss.item() + map_loss.item(),
                 answer_loss=answer_loss.item(), map_loss=map_loss.item(), map_accuracy=map_accuracy)
        if run.progress.step % 200 == 0:
            run.save(visual=visual.state_dict(), head=head.state_dict(), optimizer=optimizer.state_dict())
    run.save(visual=visual.state_dict(), head=head.state_dict(), optimizer=optimizer.state_dict())
    visual.eval()
    with torch.no_grad():
        held_out = random.Random(f"vision-held-out-{seed}")
        accuracy = round(object_map_loss(model, fmt, head, [sample_scene(held_out) for _ in range(256)])[1], 4)
    run.log(event="done", held_out_map_accuracy=accuracy)
    llm.requires_grad_(True)
    return {**run.close(), "held_out_map_accuracy": accuracy}
