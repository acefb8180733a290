"""Compare tab: two variants side by side, a blind vote, then the names are revealed.

Each battle is kept server-side under a random id (so the UI and `/compare` + `/vote` share one
path, and a client cannot learn the sides before voting). Votes are feedback records holding both
variants' settings; the Feedback tab turns them into win rates.
"""

from __future__ import annotations

import random
import uuid
from collections import OrderedDict

import gradio as gr

from ..feedback.arena import ANSWER_PAIRS, CHECKPOINT_PAIR, CHOICES, GENERATION_PAIRS, Variant
from ..feedback.store import FeedbackRecord
from ..gallery.store import content_id
from ..inputs import MAX_PROMPT_CHARS, InvalidInputError, clean_text, load_image
from ..pipeline import MAX_SEED
from .common import MODEL_QUEUE, session_of, user_errors
from .components import ImageInput
from .context import AppContext

TASKS = ("Generate from a prompt", "Answer about an image")
RANDOM_PAIR = "random pair"
MAX_BATTLES = 2000


class Arena:
    def __init__(self, ctx: AppContext):
        self.ctx = ctx
        self.battles: OrderedDict[str, dict] = OrderedDict()

    def pairs(self, task: str) -> dict[str, tuple[Variant, Variant]]:
        pairs = dict(GENERATION_PAIRS if task == TASKS[0] else ANSWER_PAIRS)
        if self.ctx.compare_pipeline is not None:
            pairs[CHECKPOINT_PAIR] = (Variant(self.ctx.pipeline.model_id, {"checkpoint": "main"}),
                                      Variant(self.ctx.compare_pipeline.model_id, {"checkpoint": "compare"}))
        return pairs

    def _pipeline(self, variant: Variant):
        return self.ctx.compare_pipeline if variant.settings.get("checkpoint") == "compare" else self.ctx.pipeline

    def _generate(self, variant: Variant, prompt: str, seed: int):
        settings = {k: v for k, v in variant.settings.items() if k not in ("checkpoint", "seed_offset")}
        result = self._pipeline(variant).generate(prompt, seed=seed + variant.settings.get("seed_offset", 0),
                                                  **settings)
        path = self.ctx.save_output(result.images[0], {**result.parameters, "variant": variant.name})
        return path, {"image_sha": content_id(result.images[0]), "caption": result.caption}

    def _answer(self, variant: Variant, image, question: str, seed: int):
        temperature = variant.settings.get("temperature", 0.0)
        messages = [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": question}]}]
        text = self._pipeline(variant).chat(messages, max_new_tokens=64, temperature=temperature, seed=seed)
        return text, {"answer": text}

    def start(self, task: str, prompt: str, image, pair_name: str) -> dict:
        if task not in TASKS:
            raise InvalidInputError(f"task must be one of {list(TASKS)}")
        pairs = self.pairs(task)
        if pair_name in (None, "", RANDOM_PAIR):
            pair_name = random.choice(sorted(pairs))
        if pair_name not in pairs:
            raise InvalidInputError(f"pair must be one of {[RANDOM_PAIR, *pairs]}")
        prompt = clean_text(prompt, MAX_PROMPT_CHARS, what="prompt" if task == TASKS[0] else "question")
        variants = list(pairs[pair_name])
        random.shuffle(variants)
        seed = random.randrange(MAX_SEED - 1)
        inputs = {"prompt": prompt, "seed": seed}
        if task == TASKS[0]:
            outputs = [self._generate(v, prompt, seed) for v in variants]
        else:
            source = load_image(image, self.ctx.settings.max_image_pixels) if image else None
            if source is None:
                raise InvalidInputError("add an image to ask about")
            inputs["image_sha"] = content_id(source)
            outputs = [self._answer(v, source, prompt, seed) for v in variants]
        battle_id = uuid.uuid4().hex
        self.battles[battle_id] = {"task": task, "pair": pair_name, "left": variants[0], "right": variants[1],
                                   "inputs": inputs, "outputs": [o[1] for o in outputs], "voted": False}
        while len(self.battles) > MAX_BATTLES:
            self.battles.popitem(last=False)
        return {"battle_id": battle_id, "left": outputs[0][0], "right": outputs[1][0]}

    def vote(self, battle_id: str, choice: str, session: str) -> dict:
        battle = self.battles.get(battle_id or "")
        if battle is None:
            raise InvalidInputError("run a comparison first (or it expired)")
        if choice not in CHOICES:
            raise InvalidInputError(f"choice must be one of {list(CHOICES)}")
        if battle["voted"]:
            raise InvalidInputError("you already voted on this comparison")
        battle["voted"] = True
        left, right = battle["left"], battle["right"]
        winner = {"left": left.name, "right": right.name}.get(choice, choice)
        record_id = self.ctx.feedback.add(FeedbackRecord(
            session_id=session, tab="compare", kind="vote", value=choice, inputs=battle["inputs"],
            outputs={"left": battle["outputs"][0], "right": battle["outputs"][1]},
            parameters={"pair": battle["pair"], "task": battle["task"], "winner": winner,
                        "left": {"name": left.name, **left.settings}, "right": {"name": right.name, **right.settings}},
            model_id=self.ctx.pipeline.variant_id))
        return {"record_id": record_id, "left": left.name, "right": right.name, "winner": winner}


def build_compare_tab(ctx: AppContext) -> None:
    arena = Arena(ctx)
    gr.Markdown("Two variants answer the same request side by side. Vote first; the names are revealed after.")
    with gr.Row():
        task = gr.Radio(list(TASKS), value=TASKS[0], label="Task", elem_id="compare-task")
        pair = gr.Dropdown([RANDOM_PAIR, *arena.pairs(TASKS[0])], value=RANDOM_PAIR, label="Compare",
                           elem_id="compare-pair")
    with gr.Row():
        prompt = gr.Textbox(label="Prompt (or question)", placeholder="a red circle to the left of a blue square",
                            elem_id="compare-prompt", scale=3)
        image = ImageInput(label="Image (for questions)", visible=False, height=140, scale=1)
    run = gr.Button("Compare", variant="primary", elem_id="compare-run")
    with gr.Row():
        with gr.Column():
            left_image = gr.Image(label="Left", interactive=False, elem_id="compare-left", height=256,
                                  elem_classes="fill-frame", format="png")
            left_text = gr.Textbox(label="Left", visible=False, interactive=False)
        with gr.Column():
            right_image = gr.Image(label="Right", interactive=False, elem_id="compare-right", height=256,
                                   elem_classes="fill-frame", format="png")
            right_text = gr.Textbox(label="Right", visible=False, interactive=False)
    with gr.Row():
        votes = [gr.Button(label, elem_id=f"vote-{choice}", interactive=False)
                 for label, choice in zip(("👈 Left is better", "👉 Right is better", "🤝 Tie", "👎 Both bad"),
                                          CHOICES)]
    reveal = gr.Markdown(elem_id="compare-reveal")
    battle = gr.State(None)

    def switch(task_name):
        answering = task_name == TASKS[1]
        return (gr.Image(visible=answering), gr.Dropdown(choices=[RANDOM_PAIR, *arena.pairs(task_name)],
                                                        value=RANDOM_PAIR),
                gr.Image(visible=not answering), gr.Image(visible=not answering),
                gr.Textbox(visible=answering), gr.Textbox(visible=answering))

    @user_errors
    def run_battle(task_name, text, picture, pair_name):
        started = arena.start(task_name, text, picture, pair_name)
        images = task_name == TASKS[0]
        return (started["battle_id"], started["left"] if images else None, started["right"] if images else None,
                None if images else started["left"], None if images else started["right"],
                "Which is better? Vote to reveal the variants.", *[gr.Button(interactive=True)] * 4)

    def make_vote(choice):
        @user_errors
        def cast(battle_id, request: gr.Request = None):
            result = arena.vote(battle_id, choice, session_of(request))
            gr.Info("🎉 Thanks for voting!")
            return (f"**Left:** {result['left']} · **Right:** {result['right']} · your vote: **{result['winner']}**",
                    *[gr.Button(interactive=False)] * 4)
        return cast

    task.change(switch, [task], [image, pair, left_image, right_image, left_text, right_text], queue=False,
                api_visibility="private")
    gr.on([run.click, prompt.submit], run_battle, [task, prompt, image, pair],
          [battle, left_image, right_image, left_text, right_text, reveal, *votes], api_visibility="private",
          **MODEL_QUEUE)
    for button, choice in zip(votes, CHOICES):
        button.click(make_vote(choice), [battle], [reveal, *votes], api_visibility="private",
                     concurrency_limit=None)
    _build_compare_api(arena)


def _build_compare_api(arena: Arena) -> None:
    """`/compare` (task, prompt, image, pair) -> battle; `/vote` (battle_id, choice) -> the revealed names."""
    with gr.Group(visible=False):
        task = gr.Textbox(value=TASKS[0], label="task")
        prompt = gr.Textbox(label="prompt")
        image = ImageInput(label="image")
        pair = gr.Textbox(value=RANDOM_PAIR, label="pair")
        battle_id = gr.Textbox(label="battle_id")
        choice = gr.Textbox(label="choice")
        result = gr.JSON(label="result")
        left, right = gr.Image(type="filepath", format="png", label="left"), gr.Image(type="filepath", format="png",
                                                                                      label="right")
        left_text, right_text = gr.Textbox(label="left_text"), gr.Textbox(label="right_text")
        compare_button, vote_button = gr.Button("compare"), gr.Button("vote")

    @user_errors
    def compare_api(task_name, text, picture, pair_name):
        started = arena.start(task_name, text, picture, pair_name)
        images = task_name == TASKS[0]
        return (started["battle_id"], started["left"] if images else None, started["right"] if images else None,
                "" if images else started["left"], "" if images else started["right"])

    @user_errors
    def vote_api(identifier, choice_name, request: gr.Request = None):
        return arena.vote(identifier, choice_name, session_of(request))

    compare_button.click(compare_api, [task, prompt, image, pair], [battle_id, left, right, left_text, right_text],
                         api_name="compare", **MODEL_QUEUE)
    vote_button.click(vote_api, [battle_id, choice], [result], api_name="vote", concurrency_limit=None)
