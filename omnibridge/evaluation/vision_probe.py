"""Does the LLM see shapes? A linear probe on frozen image features of one-object scenes.

Understanding answers can be wrong because the vision tower never encodes an attribute, or because
the language side never learned to read it. A linear classifier trained on frozen features tells the
two apart: it predicts each object's shape, colour, and the row and column of the 4x4 grid cell its centre
lies in, from (a) the vision tower's output and (b) the LLM's last hidden states over the image tokens, both
max-pooled over the image's tokens, and from the single token whose cell holds the object's centre. That
token's row and column probes read only position written into its content, which is what a relation
answer needs: the attention that gathers an object's tokens brings back their values, and rotary
positions never reach them.

    python -m omnibridge.evaluation.vision_probe --model assets/omnibridge-shapes
"""

from __future__ import annotations

import argparse
import json
import math
import random

import torch
import torch.nn.functional as F

from ..modeling.chat_format import Message, gather_spans
from ..modeling.features import feature_states
from ..shapes.render import render
from ..shapes.world import COLORS, SHAPES, centre_cell_index, grid_cell, sample_scene

PROBE_SEED = 4242  # held apart from the training and evaluation seeds
GRID = 4  # the language model's 4x4 image tokens (64 pixels, patch 8, 2x2 merge)


# report name -> (label of a one-object scene's object, number of classes)
ATTRIBUTES = {
    "shape": (lambda obj: tuple(SHAPES).index(obj.shape), len(SHAPES)),
    "colour": (lambda obj: tuple(COLORS).index(obj.color), len(COLORS)),
    "row": (lambda obj: grid_cell(obj.cy, GRID), GRID),
    "column": (lambda obj: grid_cell(obj.cx, GRID), GRID),
}


def image_features(pipe, scenes, batch_size: int = 64) -> dict[str, torch.Tensor]:
    """Per one-object scene, from the vision tower and from the LLM's last layer: the image's tokens
    max-pooled, and the one token whose cell holds the object's centre (what a question's attention
    to that object brings back)."""
    features: dict[str, list[torch.Tensor]] = {}
    for start in range(0, len(scenes), batch_size):
        chunk = scenes[start:start + batch_size]
        prompts = [pipe.format.encode([Message("user", [render(scene)])]) for scene in chunk]
        inputs = pipe._to_device(pipe.format.collate(prompts, "right")["inputs"])
        rows = torch.arange(len(chunk))
        with torch.inference_mode():
            tower = pipe.llm.model.visual(inputs["pixel_values"], grid_thw=inputs["image_grid_thw"])
            tower = getattr(tower, "pooler_output", tower)  # merged tokens, one row per LLM image token
            tower = tower.reshape(len(chunk), -1, tower.shape[-1])
            states = feature_states(pipe.llm, pipe.config.feature_layers, inputs)  # what the BiLM and heads read
            image_states, _ = gather_spans(states, [p.spans["image0"] for p in prompts])  # one image size: no padding
        grid = math.isqrt(tower.shape[1])
        own = torch.tensor([centre_cell_index(s.objects[0], grid) for s in chunk])
        for name, tokens in (("vision_tower", tower), ("llm_last_layer", image_states)):
            features.setdefault(name, []).append(tokens.amax(1).float().cpu())
            features.setdefault(f"{name}_object_token", []).append(tokens[rows, own].float().cpu())
    return {name: torch.cat(parts) for name, parts in features.items()}


def fit_linear_probe(train_x, train_y, classes: int, steps: int = 500, weight_decay: float = 1e-3):
    """A linear classifier on standardised features (full-batch Adam); returns features -> logits."""
    mean, std = train_x.mean(0), train_x.std(0) + 1e-5
    probe = torch.nn.Linear(train_x.shape[1], classes)
    optimizer = torch.optim.Adam(probe.parameters(), lr=1e-2, weight_decay=weight_decay)
    standardised = (train_x - mean) / std
    for _ in range(steps):
        optimizer.zero_grad()
        F.cross_entropy(probe(standardised), train_y).backward()
        optimizer.step()
    return lambda x: probe((x - mean) / std)


def linear_probe_accuracy(train_x, train_y, test_x, test_y, classes: int, steps: int = 500) -> float:
    logits = fit_linear_probe(train_x, train_y, classes, steps)
    with torch.no_grad():
        return round((logits(test_x).argmax(1) == test_y).float().mean().item(), 3)


def probe_objects(pipe, train: int = 1500, test: int = 500, seed: int = PROBE_SEED) -> dict:
    torch.manual_seed(seed)
    rng = random.Random(seed)
    scenes = [sample_scene(rng, 1) for _ in range(train + test)]
    features = image_features(pipe, scenes)
    labels = {name: torch.tensor([label(s.objects[0]) for s in scenes]) for name, (label, _) in ATTRIBUTES.items()}
    # chance: always answering the test set's most common class (objects keep off the margins, so rows and
    # columns are not uniform)
    report = {"scenes": {"train": train, "test": test},
              "chance": {name: round(float(torch.bincount(y[train:]).max()) / test, 3) for name, y in labels.items()}}
    for where, x in features.items():
        # the class count comes from the world, not from which classes this sample happened to draw
        report[where] = {name: linear_probe_accuracy(x[:train], y[:train], x[train:], y[train:], ATTRIBUTES[name][1])
                         for name, y in labels.items()}
    return report


def main(argv: list[str] | None = None) -> dict:
    from ..pipeline import OmniBridgePipeline

    parser = argparse.ArgumentParser(prog="python -m omnibridge.evaluation.vision_probe", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="assets/omnibridge-shapes")
    parser.add_argument("--train", type=int, default=1500)
    parser.add_argument("--test", type=int, default=500)
    args = parser.parse_args(argv)
    report = probe_objects(OmniBridgePipeline.from_pretrained(args.model), args.train, args.test)
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
