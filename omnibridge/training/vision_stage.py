"""Stage 1b, the eye: retrain the vision tower and its merger, with the language model frozen.

Qwen2-VL comes with a pretrained vision encoder; our tiny one learns from scratch in stage 1, where
the next-token loss says little about shape, and a linear probe finds that it hardly encodes it
(`evaluation/vision_probe.py`). This stage gives the tower a direct signal: every merged image token
(one per 2x2 patch window) must name the object whose centre lies in its cell (colour, shape and
size, or nothing) and the row and column of its own cell, beside the usual answer loss on image
conversations. The cell target is there because the tower has no absolute position of its own (Qwen2-VL's
is 2D rotary, relative only): a per-token probe of the shipped eye found an object's token telling its
row no better than chance, and the language model, which gathers an object's tokens by content and gets
back only their values, cannot answer "is the circle left of the square?" from content that has no "where"
in it. The language model and the
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
from ..shapes.world import COLORS, SHAPES, SIZE_NAMES, Scene, centre_cell_index, sample_scene
from .common import StageRun, optimizer_step, step_rng, warmup_cosine_lr
from .llm_stage import accumulate_gradients, image_cells_per_side
from .llm_data import sample_conversation
from .presets import LLMPreset

# Conversations in which the answer depends on an image (the others give the tower no gradient).
IMAGE_TASKS = {"vqa": 0.6, "multi_qa": 0.15, "edit": 0.2, "draw_then_ask": 0.05}
OBJECT_CLASSES = [(c, s, z) for c in COLORS for s in SHAPES for z in SIZE_NAMES]  # class 0 is "empty"


def cell_labels(scene: Scene, cells_per_side: int) -> torch.Tensor:
    """[cells_per_side**2] class per merged token, row-major: 0 empty, else 1 + OBJECT_CLASSES index."""
    labels = torch.zeros(cells_per_side * cells_per_side, dtype=torch.long)
    for obj in scene.objects:
        labels[centre_cell_index(obj, cells_per_side)] = 1 + OBJECT_CLASSES.index((obj.color, obj.shape, obj.size))
    return labels


def cell_positions(cells_per_side: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(row, column) of each merged token of one image, row-major like `cell_labels`."""
    index = torch.arange(cells_per_side * cells_per_side)
    return index // cells_per_side, index % cells_per_side


def eye_heads(hidden_size: int, cells_per_side: int) -> torch.nn.ModuleDict:
    """Linear read-outs trained with the tower and thrown away after: what each merged token must name."""
    return torch.nn.ModuleDict({
        "objects": torch.nn.Linear(hidden_size, 1 + len(OBJECT_CLASSES)),  # 0 empty, else 1 + OBJECT_CLASSES index
        "position": torch.nn.Linear(hidden_size, 2 * cells_per_side),  # row logits, then column logits
    })


def object_map_loss(model: LoadedModel, fmt: ChatFormat, heads: torch.nn.ModuleDict, scenes: list[Scene]) -> dict:
    """Cross-entropy of each merged image token's object class and of its own row and column.

    Returns the summed `loss` and each target's token accuracy."""
    prompts = [fmt.encode([Message("user", [render(scene)])]) for scene in scenes]
    inputs = fmt.collate(prompts)["inputs"]
    grid = inputs["image_grid_thw"][0]
    merge = model.llm.config.vision_config.spatial_merge_size
    cells_per_side = int(grid[1]) // merge
    tokens = model.llm.model.visual(inputs["pixel_values"], grid_thw=inputs["image_grid_thw"]).pooler_output
    labels = torch.cat([cell_labels(scene, cells_per_side) for scene in scenes])
    rows, columns = (axis.repeat(len(scenes)) for axis in cell_positions(cells_per_side))
    logits = heads["objects"](tokens)
    row_logits, column_logits = heads["position"](tokens).split(cells_per_side, dim=1)
    map_loss = F.cross_entropy(logits, labels)
    position_loss = F.cross_entropy(row_logits, rows) + F.cross_entropy(column_logits, columns)

    def accuracy(predicted: torch.Tensor, target: torch.Tensor) -> float:
        return (predicted.argmax(1) == target).float().mean().item()

    return {"loss": map_loss + position_loss, "map_loss": map_loss.item(), "position_loss": position_loss.item(),
            "map_accuracy": accuracy(logits, labels),
            "position_accuracy": (accuracy(row_logits, rows) + accuracy(column_logits, columns)) / 2}


def train_vision(model: LoadedModel, preset: LLMPreset, work_dir: Path, seed: int, resume: bool) -> dict:
    llm = model.llm
    llm.requires_grad_(False)
    visual = llm.model.visual
    visual.requires_grad_(True)
    llm.eval()
    visual.train()
    fmt = ChatFormat(model.tokenizer, model.image_processor, model.config.prompts)
    cells_per_side = image_cells_per_side(fmt)
    heads = eye_heads(llm.config.text_config.hidden_size, cells_per_side)
    parameters = list(visual.parameters()) + list(heads.parameters())
    run = StageRun(work_dir, "vision", preset.vision_steps, resume, seed)
    optimizer = torch.optim.AdamW(parameters, lr=preset.vision_lr, weight_decay=0.01, betas=(0.9, 0.95))
    if run.saved_state:
        visual.load_state_dict(run.saved_state["visual"])
        if "heads" not in run.saved_state:  # its optimizer state has no room for the position head either
            raise ValueError(f"{run.state_path} predates stage 1b's position head: move {run.dir} aside to start "
                             "stage 1b again (warm from the model's eye)")
        heads.load_state_dict(run.saved_state["heads"])
        optimizer.load_state_dict(run.saved_state["optimizer"])
    warmup = max(1, preset.vision_steps // 20)
    tasks, weights = list(IMAGE_TASKS), list(IMAGE_TASKS.values())
    while run.progress.step < preset.vision_steps:
        rng = step_rng(seed, "vision", run.progress.step)
        conversations = [sample_conversation(rng, rng.choices(tasks, weights)[0]) for _ in range(preset.batch // 2)]
        answer_loss = accumulate_gradients(llm, fmt, conversations, preset.max_length)
        eye = object_map_loss(model, fmt, heads, [sample_scene(rng) for _ in range(preset.batch)])
        eye["loss"].backward()
        optimizer_step(optimizer, None, parameters,
                       warmup_cosine_lr(run.progress.step, preset.vision_steps, preset.vision_lr, warmup))
        run.tick(len(conversations) + preset.batch, loss=answer_loss.item() + eye.pop("loss").item(),
                 answer_loss=answer_loss.item(), **eye)
        if run.progress.step % 200 == 0:
            run.save(visual=visual.state_dict(), heads=heads.state_dict(), optimizer=optimizer.state_dict())
    run.save(visual=visual.state_dict(), heads=heads.state_dict(), optimizer=optimizer.state_dict())
    visual.eval()
    with torch.no_grad():
        held_out = random.Random(f"vision-held-out-{seed}")
        eye = object_map_loss(model, fmt, heads, [sample_scene(held_out) for _ in range(256)])
    held_out_accuracy = {f"held_out_{name}": round(eye[name], 4) for name in ("map_accuracy", "position_accuracy")}
    run.log(event="done", **held_out_accuracy)
    llm.requires_grad_(True)
    return {**run.close(), **held_out_accuracy}
