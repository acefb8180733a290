"""Diagnostic: can the answer layers read where a *named* object is, and does it depend on how many objects
the scene holds?

The twenty-second session trained relation answers to write both objects' positions in eighths before the
answer (`--show-work`); after 3,200 steps the written positions were right for x 0.58 and y 0.24 (the cell:
0.78 and 0.40), although a linear probe reads the object's own token at the trunk's output to 0.94 in both. This
drills a copy of the shipped answer layers (nothing is saved) on "Where is the red circle?" -> "(5, 2)", in
eighths across and down, and prints x and y accuracy on held-out validation scenes split by how many objects
they hold: if one-object scenes are read well and fuller ones are not, finding the named object is what
fails; if rows fail even alone, reading them is.

    PYTHONPATH=. python scripts/position_reading.py --steps 600 --lr 1e-3
"""

from __future__ import annotations

import argparse
import random
import re
from collections import defaultdict

import torch

from omnibridge import OmniBridgePipeline
from omnibridge.evaluation.generation import VALIDATION_SEED
from omnibridge.modeling.chat_format import Message
from omnibridge.shapes.qa import position_working
from omnibridge.shapes.render import render
from omnibridge.shapes.world import sample_scene
from omnibridge.training.llm_data import Conversation
from omnibridge.training.llm_stage import accumulate_gradients


def position_case(rng: random.Random, objects: int | None = None):
    """A scene, a question naming one object of it with a unique colour and shape, and its position."""
    while True:
        scene = sample_scene(rng, objects)
        named = [o for o in scene.objects
                 if sum((p.color, p.shape) == (o.color, o.shape) for p in scene.objects) == 1]
        if named:
            obj = rng.choice(named)
            position = position_working(obj).split(" ", 2)[2]  # "(5, 2)"
            return scene, f"Where exactly is the {obj.color} {obj.shape}?", position


def accuracy_by_objects(pipe, cases) -> dict[int, tuple[float, float]]:
    pipe.llm.eval()
    answers = []
    for start in range(0, len(cases), 64):
        chunk = cases[start:start + 64]
        answers += pipe.answer_batch([render(s) for s, _, _ in chunk], [q for _, q, _ in chunk], max_new_tokens=8)
    right = defaultdict(lambda: [0, 0, 0])
    for (scene, _, truth), answer in zip(cases, answers):
        got, want = re.findall(r"\d", answer), re.findall(r"\d", truth)
        tally = right[len(scene.objects)]
        tally[0] += 1
        tally[1] += len(got) == 2 and got[0] == want[0]
        tally[2] += len(got) == 2 and got[1] == want[1]
    return {n: (round(t[1] / t[0], 2), round(t[2] / t[0], 2)) for n, t in sorted(right.items())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="assets/omnibridge-shapes")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    torch.manual_seed(0)
    pipe = OmniBridgePipeline.from_pretrained(args.model, device="cpu")
    trunk = pipe.config.feature_layers
    if trunk is None:
        raise SystemExit("this drills the answer layers of a model that has them (feature_layers in its config)")
    pipe.llm.requires_grad_(False)
    trainable = list(pipe.llm.model.language_model.layers[trunk:].parameters())
    for parameter in trainable:
        parameter.requires_grad_(True)
    held_out = random.Random(VALIDATION_SEED)
    cases = [position_case(held_out, n) for n in (1, 2, 3, 4) for _ in range(100)]
    print(f"step 0: (x, y) right by objects in the scene {accuracy_by_objects(pipe, cases)}", flush=True)
    optimizer = torch.optim.AdamW(trainable, lr=args.lr, weight_decay=0.01, betas=(0.9, 0.95))
    rng = random.Random(321)
    for step in range(1, args.steps + 1):
        pipe.llm.train()
        batch = []
        for _ in range(args.batch):
            scene, question, position = position_case(rng)
            messages = [Message("user", [render(scene), question]), Message("assistant", [position])]
            batch.append(Conversation(messages, "vqa/position", position))
        loss = accumulate_gradients(pipe.llm, pipe.format, batch, 256)
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        optimizer.zero_grad()
        if step % 100 == 0:
            print(f"step {step}: loss {loss.item():.3f}, (x, y) right by objects in the scene "
                  f"{accuracy_by_objects(pipe, cases)}", flush=True)


if __name__ == "__main__":
    main()
