"""Study: can a named object's token be told from its neighbours in the states the answer layers read?

The answer layers read a lone object's position quickly and find a named one among others poorly
(`position_reading.py`). This asks whether the tokens allow better. A linear probe is trained on the frozen
states at the trunk's output (what the answer layers read) to name, per image token, the colour and shape of the
object centred in its cell, or nothing, over scenes of 1-4 objects. Then, per object in held-out scenes, the
token that the probe rates highest for that object's colour and shape must be the object's own: a linear
"find the red circle" over the 16 tokens, scored by how many objects the scene holds. If it stays high as scenes
fill up, the tokens are clean and the answer layers' search is what fails; if it falls, the eye is. Two more
probes read, from each object's own token, where in eighths its centre is across and down: what an answer
that found the token could read there.

    PYTHONPATH=. python scripts/token_binding_probe.py
"""

from __future__ import annotations

import argparse
import random
from collections import defaultdict

import torch

from omnibridge import OmniBridgePipeline
from omnibridge.evaluation.vision_probe import PROBE_SEED, fit_linear_probe
from omnibridge.modeling.chat_format import Message, gather_spans
from omnibridge.modeling.features import feature_states
from omnibridge.shapes.qa import WORKING_STEPS
from omnibridge.shapes.render import render
from omnibridge.shapes.world import COLORS, SHAPES, centre_cell_index, grid_cell, sample_scene

GRID = 4


def object_class(obj) -> int:
    return 1 + tuple(COLORS).index(obj.color) * len(SHAPES) + tuple(SHAPES).index(obj.shape)  # 0: nothing


def token_states(pipe, scenes, batch_size: int = 64) -> torch.Tensor:
    """[scenes, 16, hidden] trunk states over each image's tokens."""
    parts = []
    for start in range(0, len(scenes), batch_size):
        prompts = [pipe.format.encode([Message("user", [render(s)])]) for s in scenes[start:start + batch_size]]
        inputs = pipe._to_device(pipe.format.collate(prompts, "right")["inputs"])
        with torch.inference_mode():
            states = feature_states(pipe.llm, pipe.config.feature_layers, inputs)
            image_states, _ = gather_spans(states, [p.spans["image0"] for p in prompts])
        parts.append(image_states.float().cpu())
    return torch.cat(parts)


def token_labels(scene) -> torch.Tensor:
    labels = torch.zeros(GRID * GRID, dtype=torch.long)
    for obj in scene.objects:
        labels[centre_cell_index(obj, GRID)] = object_class(obj)
    return labels


def eighth_probe(states, scenes, train: int, axis: str) -> dict[int, float]:
    """A linear probe of an object's centre in eighths (across for "x", down for "y") from its own token, trained
    on the first `train` scenes; accuracy on the rest by how many objects the scene holds."""
    rows, labels, counts = [], [], []
    for index, (scene, tokens) in enumerate(zip(scenes, states)):
        for obj in scene.objects:
            rows.append(tokens[centre_cell_index(obj, GRID)])
            labels.append(grid_cell(obj.cx if axis == "x" else obj.cy, WORKING_STEPS))
            counts.append((index < train, len(scene.objects)))
    x, y = torch.stack(rows), torch.tensor(labels)
    is_train = torch.tensor([t for t, _ in counts])
    probe = fit_linear_probe(x[is_train], y[is_train], WORKING_STEPS, steps=600, weight_decay=1e-4)
    with torch.no_grad():
        right = probe(x).argmax(1) == y
    by_count = defaultdict(list)
    for ok, (in_train, n) in zip(right.tolist(), counts):
        if not in_train:
            by_count[n].append(ok)
    return {n: sum(v) / len(v) for n, v in by_count.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="assets/omnibridge-shapes")
    parser.add_argument("--train", type=int, default=2000)
    parser.add_argument("--test", type=int, default=800)
    args = parser.parse_args()
    torch.manual_seed(PROBE_SEED)
    pipe = OmniBridgePipeline.from_pretrained(args.model, device="cpu")
    rng = random.Random(PROBE_SEED)
    scenes = [sample_scene(rng) for _ in range(args.train)] + [sample_scene(rng, 1 + i % 4) for i in range(args.test)]
    states = token_states(pipe, scenes)
    labels = torch.stack([token_labels(s) for s in scenes])
    x, y = states[:args.train].flatten(0, 1), labels[:args.train].flatten()
    probe = fit_linear_probe(x, y, 1 + len(COLORS) * len(SHAPES), steps=600, weight_decay=1e-4)
    eighths = {axis: eighth_probe(states, scenes, args.train, axis) for axis in ("x", "y")}
    found, token_right = defaultdict(list), defaultdict(list)
    with torch.no_grad():
        for scene, tokens, truth in zip(scenes[args.train:], states[args.train:], labels[args.train:]):
            logits = probe(tokens)  # [16, classes]
            token_right[len(scene.objects)].append((logits.argmax(1) == truth).float().mean().item())
            for obj in scene.objects:
                if sum(object_class(o) == object_class(obj) for o in scene.objects) > 1:
                    continue  # not nameable by colour and shape alone
                own = centre_cell_index(obj, GRID)
                found[len(scene.objects)].append(int(logits[:, object_class(obj)].argmax()) == own)
    for n in sorted(found):
        print(f"{n} objects: tokens named right {sum(token_right[n]) / len(token_right[n]):.3f}, "
              f"named object found by a linear match {sum(found[n]) / len(found[n]):.3f} ({len(found[n])} objects), "
              f"its eighth read from its token x {eighths['x'][n]:.3f} y {eighths['y'][n]:.3f}")


if __name__ == "__main__":
    main()
