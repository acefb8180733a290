"""Diagnostic: can the shipped language model learn relation questions when trained on nothing else?

Stage 1's mixed data left relations at chance for thousands of steps; this trains a copy of the shipped
language model (eye frozen) on relation questions alone and prints held-out relation accuracy every 100
steps, then every question type. Nothing is saved. Ninth session, lr 3e-4: 0.35 -> 0.64 at 600 steps (5
minutes), 0.69 at 1,200, so the skill is learnable by this four-layer model, drowned in the mix rather than out
of reach; alone, it costs everything else (count 0.02, describe 0.05 after 1,200 steps).

    PYTHONPATH=. python scripts/relations_alone.py --steps 600 --lr 3e-4

`--answer-work-dir` drills the answer layers of an `--answer-layers` run instead (its work dir's `model/`
with the layers stacked and its last `llm/state.pt` loaded; only the stacked layers train): can layers that
read the frozen layers' states learn relations at all? Its held-out questions come from the validation seed,
as a study's should; `--questions-seed 7200000` gives the evaluation's own, as in the ninth session.
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

import torch

from omnibridge import OmniBridgePipeline
from omnibridge.evaluation.generation import VALIDATION_SEED
from omnibridge.evaluation.understanding import evaluate_understanding, is_exact_match, understanding_cases
from omnibridge.modeling.chat_format import Message
from omnibridge.modeling.devices import placement
from omnibridge.modeling.loading import load_our_layout
from omnibridge.shapes.qa import sample_question
from omnibridge.shapes.render import render
from omnibridge.shapes.world import sample_scene
from omnibridge.training.grow import LAYERS_PREFIX, stack_answer_layers
from omnibridge.training.llm_data import Conversation
from omnibridge.training.llm_stage import accumulate_gradients


def relation_conversations(rng: random.Random, count: int) -> list[Conversation]:
    conversations = []
    while len(conversations) < count:
        scene = sample_scene(rng)
        qa = sample_question(rng, scene, "relation")
        if qa is not None:
            messages = [Message("user", [render(scene), qa.question]), Message("assistant", [qa.answer])]
            conversations.append(Conversation(messages, "vqa/relation", qa.answer))
    return conversations


def relation_accuracy(pipe, cases) -> float:
    pipe.llm.eval()
    answers = pipe.answer_batch([c[1] for c in cases], [c[2] for c in cases])
    return sum(is_exact_match(a, c[3]) for a, c in zip(answers, cases)) / len(cases)


def answer_layer_pipeline(work_dir: Path) -> tuple[OmniBridgePipeline, list[torch.nn.Parameter]]:
    """An answer-layer run's last saved language model, and the parameters that run trains (the stacked layers)."""
    model = load_our_layout(work_dir / "model", placement("cpu"))
    state = torch.load(work_dir / "llm" / "state.pt", map_location="cpu", weights_only=False)
    if model.config.feature_layers is None:  # the run's first work dir holds the model before stacking
        trunk = model.llm.config.text_config.num_hidden_layers
        model.llm = stack_answer_layers(model.llm, _stacked_layers(state["llm"]) - trunk)
        model.config.feature_layers = trunk
    trunk = model.config.feature_layers
    model.llm.load_state_dict(state["llm"])
    print(f"answer layers over {trunk} frozen ones, saved at step {state['progress']['step']}", flush=True)
    model.llm.requires_grad_(False)
    stacked = model.llm.model.language_model.layers[trunk:]
    stacked.requires_grad_(True)
    return OmniBridgePipeline(model, placement("cpu")), list(stacked.parameters())


def _stacked_layers(state: dict) -> int:
    return 1 + max(int(key[len(LAYERS_PREFIX):].split(".")[0]) for key in state if key.startswith(LAYERS_PREFIX))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="assets/omnibridge-shapes")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--batch", type=int, default=48)
    parser.add_argument("--answer-work-dir", type=Path, default=None)
    parser.add_argument("--questions-seed", type=int, default=VALIDATION_SEED)
    args = parser.parse_args()
    torch.manual_seed(0)
    if args.answer_work_dir:
        pipe, trainable = answer_layer_pipeline(args.answer_work_dir)
    else:
        pipe = OmniBridgePipeline.from_pretrained(args.model, device="cpu")
        pipe.llm.model.visual.requires_grad_(False)
        trainable = [p for p in pipe.llm.parameters() if p.requires_grad]
    cases = [c for c in understanding_cases(100, args.questions_seed) if c[0] == "relation"]
    print(f"step 0: relation accuracy {relation_accuracy(pipe, cases):.2f}", flush=True)
    optimizer = torch.optim.AdamW(trainable, lr=args.lr, weight_decay=0.01, betas=(0.9, 0.95))
    rng = random.Random(123)
    for step in range(1, args.steps + 1):
        pipe.llm.train()
        loss = accumulate_gradients(pipe.llm, pipe.format, relation_conversations(rng, args.batch), 256)
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        optimizer.zero_grad()
        if step % 100 == 0:
            print(f"step {step}: loss {loss.item():.3f}, relation accuracy {relation_accuracy(pipe, cases):.2f}",
                  flush=True)
    print("every question type after:", evaluate_understanding(pipe, per_type=100))  # what the other types lost


if __name__ == "__main__":
    main()
