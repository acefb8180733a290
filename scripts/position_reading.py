"""Diagnostic: can the answer layers read where a *named* object is, and does it depend on how many objects
the scene holds?

The twenty-second session trained relation answers to write both objects' positions in eighths before the
answer (`--show-work`); after 3,200 steps the written positions were right for x 0.58 and y 0.24 (the cell:
0.78 and 0.40), although a linear probe reads the object's own token at the trunk's output to 0.94 in both. This
drills a copy of the shipped answer layers (nothing is saved) on "Where is the red circle?" -> "(5, 2)", in
eighths across and down, and prints x and y accuracy on held-out validation scenes split by how many objects
they hold: if one-object scenes are read well and fuller ones are not, finding the named object is what
fails; if rows fail even alone, reading them is.

    PYTHONPATH=. python scripts/position_reading.py --steps 600 --lr 1e-3 [--position-free temporal|all]

Twenty-second session, 600 steps, x / y right with 1, 2, 3 and 4 objects: 0.88/0.78, 0.68/0.48, 0.63/0.31,
0.56/0.31; with the temporal dimensions unturned about the same, with all unturned worse; with the attention
supervised (--attend-weight 1) about the same at 600 steps, and at 1,500 the head points at the named token
0.82-0.91 of the time while x / y reach 0.61-0.69 / 0.39-0.66 in fuller scenes (docs/evaluation-notes.md).
Twenty-third session, the same 1,500 steps on stage 1's AttentionTargets: pointing 0.95 / 0.91 / 0.89 / 0.80,
x / y 0.91 / 0.88, 0.73 / 0.68, 0.61 / 0.52, 0.57 / 0.44; a stage-1 phase started from it (--save) kept none of it.
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
from omnibridge.evaluation.vision_probe import GRID
from omnibridge.shapes.qa import position_in_eighths
from omnibridge.shapes.render import render
from omnibridge.shapes.world import centre_cell_index, sample_scene
from omnibridge.training.llm_data import Conversation
from omnibridge.training.llm_stage import AttentionTargets, accumulate_gradients, encode_conversations, labelled_batch


def position_case(rng: random.Random, objects: int | None = None):
    """A scene, a question naming one object of it with a unique colour and shape, its position, and the object."""
    while True:
        scene = sample_scene(rng, objects)
        named = [o for o in scene.objects
                 if sum((p.color, p.shape) == (o.color, o.shape) for p in scene.objects) == 1]
        if named:
            obj = rng.choice(named)
            question = f"Where exactly is the {obj.color} {obj.shape}?"
            return scene, question, position_in_eighths(obj), obj


def position_free_dims(layers, mrope_section: list[int], sections: str) -> None:
    """Make M-RoPE's temporal section (`sections` "temporal") or every section ("all") position-free in `layers`.
    Every image token shares its temporal position, so those dimensions are the only ones in which a text query
    can match an image token by content alone, but at a base of 10 they turn 0.6-1 rad per text position, so the
    match moves with the question's length; the height and width sections turn with each token's row and
    column too (rows faster: 0.25-0.56 rad against 0.12-0.24). Unturned (cos 1, sin 0), they match content at
    any distance."""
    count = mrope_section[0] if sections == "temporal" else sum(mrope_section)

    def unturn(module, args, kwargs):
        cos, sin = (t.clone() for t in kwargs["position_embeddings"])
        half = cos.shape[-1] // 2
        for start in (0, half):  # the rotary pairs dimension i with i + half
            cos[..., start:start + count] = 1.0
            sin[..., start:start + count] = 0.0
        kwargs["position_embeddings"] = (cos, sin)
        return args, kwargs

    for layer in layers:
        layer.register_forward_pre_hook(unturn, with_kwargs=True)


def accuracy_by_objects(pipe, cases) -> dict[int, tuple[float, float]]:
    pipe.llm.eval()
    answers = []
    for start in range(0, len(cases), 64):
        chunk = cases[start:start + 64]
        answers += pipe.answer_batch([render(c[0]) for c in chunk], [c[1] for c in chunk], max_new_tokens=8)
    right = defaultdict(lambda: [0, 0, 0])
    for (scene, _, truth, _), answer in zip(cases, answers):
        got, want = re.findall(r"\d", answer), re.findall(r"\d", truth)
        tally = right[len(scene.objects)]
        tally[0] += 1
        tally[1] += len(got) == 2 and got[0] == want[0]
        tally[2] += len(got) == 2 and got[1] == want[1]
    return {n: (round(t[1] / t[0], 2), round(t[2] / t[0], 2)) for n, t in sorted(right.items())}


def pointing_accuracy(pipe, cases, layer: int) -> dict[int, float]:
    """How often `layer`'s first head, where the answer starts, attends most to the named object's token (of the
    image's tokens), by how many objects the scene holds (teacher-forced on the true answer)."""
    pipe.llm.eval()
    hits = defaultdict(list)
    for start in range(0, len(cases), 32):
        chunk = cases[start:start + 32]
        conversations = [Conversation([Message("user", [render(scene), question]), Message("assistant", [position])],
                                      "vqa/position", position) for scene, question, position, _ in chunk]
        encoded = encode_conversations(pipe.format, conversations)
        batch = labelled_batch(pipe.format, encoded, 256)
        with torch.no_grad():
            head = pipe.llm(**{k: v for k, v in batch.items() if k != "labels"}, output_attentions=True).attentions[layer][:, 0]
        for row, (prompt, (scene, _, _, obj)) in enumerate(zip(encoded, chunk)):
            first, last = prompt.spans["image0"]
            pointed = int(head[row, prompt.labels_from - 1, first:last].argmax())
            hits[len(scene.objects)].append(pointed == centre_cell_index(obj, GRID))
    return {n: round(sum(v) / len(v), 2) for n, v in sorted(hits.items())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="assets/omnibridge-shapes")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--attend-weight", type=float, default=0.0,
                        help="supervise the first answer layer's first head to attend to the named object's token "
                             "(llm_stage.AttentionTargets) with this weight")
    parser.add_argument("--report-every", type=int, default=100, help="score the held-out scenes every N steps")
    parser.add_argument("--save", help="write the drilled language model's weights here at the end ({'llm': "
                                       "state_dict}, as stage 1's state.pt), e.g. to warm a stage-1 phase from")
    parser.add_argument("--position-free", choices=("temporal", "all"),
                        help="the answer layers read these M-RoPE dimensions unturned (position_free_dims)")
    args = parser.parse_args()
    torch.manual_seed(0)
    pipe = OmniBridgePipeline.from_pretrained(args.model, device="cpu")
    trunk = pipe.config.feature_layers
    if trunk is None:
        raise SystemExit("this drills the answer layers of a model that has them (feature_layers in its config)")
    pipe.llm.requires_grad_(False)
    answer_layers = pipe.llm.model.language_model.layers[trunk:]
    trainable = list(answer_layers.parameters())
    attention = None
    if args.attend_weight:  # the answer layers' first, as stage 1 teaches it (--attend-weight)
        attention = AttentionTargets(trunk, args.attend_weight, GRID)
        pipe.llm.set_attn_implementation("eager")  # attention weights are returned only by the eager kernel
    if args.position_free:
        position_free_dims(answer_layers, pipe.llm.config.text_config.rope_parameters["mrope_section"],
                           args.position_free)
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
            scene, question, position, obj = position_case(rng)
            messages = [Message("user", [render(scene), question]), Message("assistant", [position])]
            batch.append(Conversation(messages, "vqa/position", position, named=(obj,)))
        loss = accumulate_gradients(pipe.llm, pipe.format, batch, 256, attention=attention)
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        optimizer.zero_grad()
        if step % args.report_every == 0:
            pointing = f", head points at it {pointing_accuracy(pipe, cases, trunk)}" if args.attend_weight else ""
            print(f"step {step}: loss {loss.item():.3f}, (x, y) right by objects in the scene "
                  f"{accuracy_by_objects(pipe, cases)}{pointing}", flush=True)
    if args.save:
        torch.save({"llm": pipe.llm.state_dict()}, args.save)


if __name__ == "__main__":
    main()
