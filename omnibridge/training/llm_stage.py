"""Stage 1, behaviour alignment: next-token loss on the answers of Shapes conversations.

The paper fine-tunes a pretrained Qwen2-VL with its vision tower frozen. Our tiny Qwen2-VL starts
from scratch, so the vision tower trains here too (documented in the model card), until stage 1b has
trained it: from then on the eye is stage 1b's, and a further stage-1 run (the language model
learning to read the new eye) keeps it frozen, as the paper does.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F

from ..modeling.chat_format import ChatFormat, EncodedPrompt
from ..modeling.loading import LoadedModel
from ..shapes.qa import ANSWER_AFTER
from ..shapes.render import render
from ..shapes.world import centre_cell_index, sample_scene
from .common import StageRun, optimizer_step, step_rng, warmup_cosine_lr
from .grow import grow_language_model, stack_answer_layers
from .llm_data import question_mix, sample_conversation, task_mix
from .presets import LLMPreset

IGNORE = -100
ANSWER_WEIGHTINGS = ("token", "conversation")


def encode_conversations(fmt: ChatFormat, conversations) -> list[EncodedPrompt]:
    return [fmt.encode(c.messages[:-1], add_generation_prompt=True, answer=c.answer) for c in conversations]


def fitting_conversations(rng: random.Random, fmt: ChatFormat, count: int, max_length: int,
                          **draw) -> tuple[list, int]:
    """`count` stage-1 conversations (`sample_conversation(rng, **draw)`) of at most `max_length` tokens, and
    how many longer ones were drawn again.

    Why: answers that show their work (a four-object description lists every object and its position first)
    can take a multi-turn conversation past the training length, which stopped a twenty-fourth-session run at
    step 586. Recipes whose conversations always fit draw exactly the data they drew before."""
    kept, redrawn = [], 0
    while len(kept) < count:
        conversation = sample_conversation(rng, **draw)
        if len(encode_conversations(fmt, [conversation])[0].input_ids) > max_length:
            redrawn += 1
            continue
        kept.append(conversation)
    return kept, redrawn


def labelled_batch(fmt: ChatFormat, encoded: list[EncodedPrompt], max_length: int) -> dict:
    """Right-padded inputs with labels only on each final answer (and its end-of-turn token)."""
    inputs = fmt.collate(encoded, "right")["inputs"]
    labels = torch.full_like(inputs["input_ids"], IGNORE)
    for row, prompt in enumerate(encoded):
        end = len(prompt.input_ids)
        labels[row, prompt.labels_from:end] = inputs["input_ids"][row, prompt.labels_from:end]
    if inputs["input_ids"].shape[1] > max_length:
        raise ValueError(f"a training conversation has {inputs['input_ids'].shape[1]} tokens (> {max_length})")
    return {**inputs, "labels": labels}


ATTEND_AT = ("answer", "name")


@dataclass(frozen=True)
class AttentionTargets:
    """Teach one attention layer where to look, with loss -log(attention to the named object's image token).

    `at` "answer": head i, at every answer position, attends to the token holding the i-th object the question
    names (`Conversation.named`). `at` "name": head 0, at the last token of each object's name in the question
    ("circle" of "the red circle"), attends to that object's token. Why the second: the frozen layers have
    already bound "red" to "circle" there, so each search looks for one object from a query that holds only it,
    where an answer position must hold both objects of a relation, and in order.

    Why at all: the answer layers' inputs hold each object and its position (a linear probe finds a named
    object's token 0.92-0.99 of the time), yet the answers find it 0.3-0.6 of the time; taught directly, on
    position questions alone, a head points at it 0.82-0.95 (scripts/position_reading.py --attend-weight). As a
    side loss at the answer positions of a mixed stage-1 phase the heads point right only about a third of the
    time (twenty-third session, at lr 3e-4 and 1e-3: docs/evaluation-notes.md); taught from the names, about
    half the time, with relations lower than the same lr gives without it (twenty-fourth session). So both are
    tested options, not the shipped recipe."""
    layer: int
    weight: float
    cells_per_side: int  # the image's tokens form this square grid, row-major
    at: str = "answer"  # one of ATTEND_AT


def _name_end(question: str, obj) -> int:
    """Where the words that name `obj` end in `question`: "red circle" (relations, locate), "red object" (a
    shape question) or "circle" (a colour question)."""
    for phrase in (f"{obj.color} {obj.shape}", f"{obj.color} object", f" {obj.shape}"):
        at = question.rfind(phrase)
        if at >= 0:
            return at + len(phrase)
    raise ValueError(f"the question {question!r} does not name the {obj.color} {obj.shape}")


def name_token_positions(fmt: ChatFormat, prompt: EncodedPrompt, conversation) -> list[int]:
    """The position of the last token of each named object's name in the conversation's last question."""
    question = next(part for message in reversed(conversation.messages[:-1]) if message.role == "user"
                    for part in reversed(message.parts) if isinstance(part, str))
    question = fmt.sanitize(question)
    question_ids = fmt.text_ids(question)
    starts = [s for s in range(prompt.labels_from - len(question_ids), -1, -1)
              if prompt.input_ids[s:s + len(question_ids)] == question_ids]
    if not starts:
        raise ValueError(f"the question {question!r} is not in its encoded conversation")
    positions = []
    for obj in conversation.named:
        name_ids = fmt.text_ids(question[:_name_end(question, obj)])
        if name_ids != question_ids[:len(name_ids)]:  # byte-level BPE splits at word ends, so this holds
            raise ValueError(f"the question {question!r} tokenises differently cut after its name")
        positions.append(starts[0] + len(name_ids) - 1)
    return positions


def pointing_loss(attentions: torch.Tensor, encoded: list[EncodedPrompt], conversations,
                  targets: AttentionTargets, fmt: ChatFormat) -> tuple[torch.Tensor, int]:
    """The summed -log attention of `attentions` ([batch, heads, query, key], one layer) to the named objects'
    tokens, each search averaged over its query positions; and how many conversations named any."""
    total, counted = torch.zeros(()), 0
    for row, (prompt, conversation) in enumerate(zip(encoded, conversations)):
        if not conversation.named:
            continue
        first_image_token = prompt.spans["image0"][0]
        if targets.at == "answer":
            answer_positions = torch.arange(prompt.labels_from - 1, len(prompt.input_ids) - 1)
            searches = [(head, answer_positions) for head in range(len(conversation.named))]
        else:
            searches = [(0, torch.tensor([position])) for position in name_token_positions(fmt, prompt, conversation)]
        for (head, queries), obj in zip(searches, conversation.named):
            key = first_image_token + centre_cell_index(obj, targets.cells_per_side)
            total = total - torch.log(attentions[row, head, queries, key] + 1e-6).mean()
        counted += 1
    return total, counted


def answer_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Each row's mean next-token loss over its own answer tokens."""
    labels = labels[:, 1:]
    logits = logits[:, :-1]
    token_losses = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE,
                                   reduction="none").view_as(labels)
    answered = labels != IGNORE
    return (token_losses * answered).sum(1) / answered.sum(1)


def accumulate_gradients(llm, fmt: ChatFormat, conversations, max_length: int, chunks: int = 2,
                         weighting: str = "token", attention: AttentionTargets | None = None,
                         metrics: dict | None = None) -> torch.Tensor:
    """Backward over length-sorted chunks: multi-turn conversations are twice as long as one-question
    ones, so sorting first removes most of the padding. Returns the mean loss.

    `weighting` "token" averages over every answer token of the batch, so a one-word answer ("left")
    weighs a twentieth of a caption; "conversation" averages each answer first, so every conversation
    weighs the same and the data mix is the loss mix.

    `attention` adds its weight x the pointing loss (averaged over the batch; the model must run the eager
    attention, the one kernel that returns its weights); `metrics` then receives the pointing loss alone."""
    if weighting not in ANSWER_WEIGHTINGS:
        raise ValueError(f"weighting {weighting!r}: choose from {ANSWER_WEIGHTINGS}")
    pairs = sorted(zip(encode_conversations(fmt, conversations), conversations), key=lambda p: len(p[0].input_ids))
    size = -(-len(pairs) // chunks)
    chunked = [pairs[i:i + size] for i in range(0, len(pairs), size)]
    batches = [labelled_batch(fmt, [e for e, _ in chunk], max_length) for chunk in chunked]
    total_tokens = sum(int((b["labels"] != IGNORE).sum()) for b in batches)
    total, pointing, pointed = torch.zeros(()), torch.zeros(()), 0
    for batch, chunk in zip(batches, chunked):
        output = llm(**batch, output_attentions=attention is not None)
        if weighting == "token":
            tokens = int((batch["labels"] != IGNORE).sum())
            loss = output.loss * tokens / total_tokens
        else:
            loss = answer_losses(output.logits, batch["labels"]).sum() / len(pairs)
        total += loss.detach()
        if attention is not None:
            chunk_pointing, counted = pointing_loss(output.attentions[attention.layer], *zip(*chunk),
                                                   attention, fmt)
            loss = loss + attention.weight * chunk_pointing / len(pairs)
            pointing, pointed = pointing + chunk_pointing.detach(), pointed + counted
        loss.backward()
    if metrics is not None and pointed:
        metrics["pointing"] = (pointing / pointed).item()
    return total


def image_cells_per_side(fmt: ChatFormat) -> int:
    """How many image tokens a Shapes image gives across (and down): they form a square, row-major."""
    return math.isqrt(fmt.image_token_count(render(sample_scene(random.Random(0)))))


def set_rope_theta(llm, theta: float) -> float | None:
    """Give the language model's rotary embedding another base; returns the old one (None if unchanged).

    Positions are learned through the rotary angles, so this is only done before a stage-1 run, which
    re-teaches them (the preset's base is the model's; see `LLMPreset.rope_theta`)."""
    from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VLRotaryEmbedding

    text_config = llm.config.text_config
    old = float(text_config.rope_parameters["rope_theta"])
    if old == theta:
        return None
    text_config.rope_parameters["rope_theta"] = theta
    language_model = llm.model.language_model
    language_model.rotary_emb = Qwen2VLRotaryEmbedding(config=text_config).to(language_model.embed_tokens.weight.device)
    return old


def train_llm(model: LoadedModel, preset: LLMPreset, work_dir: Path, seed: int, resume: bool,
              keep_eye: bool = False) -> dict:
    """`keep_eye`: stage 1b has trained the vision tower; freeze it, and keep it over a saved state's.

    The preset's rotary base and turn order become the model's (older checkpoints had others): the
    positions are learned through them, and this run re-teaches them. A preset deeper than the model
    grows it first (grow.py: the grown model starts out computing what the trained one did).
    `preset.answer_layers` stacks new layers on a trained model and trains only them (and, once stacked,
    every later run trains only them): the states that the BiLM and retrieval heads read stay as they were."""
    old_layers = model.llm.config.text_config.num_hidden_layers
    grows = preset.num_layers > old_layers
    stacks = preset.answer_layers > 0 and model.config.feature_layers is None
    if grows and (stacks or model.config.feature_layers is not None):
        raise ValueError("grow the language model (--llm-layers) or stack answer layers on it, not both")
    if grows:
        model.llm = grow_language_model(model.llm, preset.num_layers)
    if stacks:
        model.llm = stack_answer_layers(model.llm, preset.answer_layers)
        model.config.feature_layers = old_layers
        # the trunk learned the rewrite before the answer layers came, and rewrites as well alone, sooner
        # (scripts/rewrite_layers_study.py: 300 of 300 validation prompts both ways on the built-in model)
        model.config.generation = replace(model.config.generation, rewrite_layers=old_layers)
    llm = model.llm.train()
    trunk = model.config.feature_layers
    old_theta = set_rope_theta(llm, preset.rope_theta)
    if trunk is not None and old_theta is not None:
        raise ValueError(f"rotary base {old_theta} -> {preset.rope_theta} would change the frozen layers' states")
    eye = {k: v.clone() for k, v in llm.model.visual.state_dict().items()} if keep_eye else None
    llm.model.visual.requires_grad_(not keep_eye)
    if trunk is not None:  # only the answer layers learn: embeddings (tied to the output), trunk and norm stay
        llm.requires_grad_(False)
        llm.model.language_model.layers[trunk:].requires_grad_(True)
    old_order = model.config.prompts.text_before_images
    # a model taught to show its work tells the pipeline where its answer starts (PromptConfig.answer_after)
    answer_after = ANSWER_AFTER if preset.show_work else model.config.prompts.answer_after
    model.config.prompts = replace(model.config.prompts, text_before_images=preset.text_before_images,
                                   answer_after=answer_after)
    fmt = ChatFormat(model.tokenizer, model.image_processor, model.config.prompts)
    run = StageRun(work_dir, "llm", preset.steps, resume, seed)
    questions, tasks = question_mix(preset.question_weights), task_mix(preset.vqa_share)
    attention = None
    if preset.attend_weight:
        # the first answer layer: the one that must find the named objects among the trunk's tokens
        layer = trunk if trunk is not None else llm.config.text_config.num_hidden_layers // 2
        if llm.config.text_config.num_attention_heads < 2:
            raise ValueError("--attend-weight teaches one head per named object, and a relation names two")
        if preset.attend_at not in ATTEND_AT:
            raise ValueError(f"attend_at {preset.attend_at!r}: choose from {ATTEND_AT}")
        if preset.attend_at == "name" and preset.text_before_images:
            raise ValueError("--attend-at name: a name written before the image cannot attend to it")
        attention = AttentionTargets(layer, preset.attend_weight, image_cells_per_side(fmt), preset.attend_at)
        attention_kernel = llm.config._attn_implementation
        llm.set_attn_implementation("eager")
    run.log(event="recipe", lr=preset.lr, batch=preset.batch, questions=questions, vqa_share=preset.vqa_share,
            answer_weighting=preset.answer_weighting, show_work=preset.show_work,
            attend_layer=attention and attention.layer, attend_weight=preset.attend_weight,
            attend_at=attention and attention.at)
    if grows:
        run.log(event="grown", old_layers=old_layers, new_layers=preset.num_layers)
    if stacks:
        run.log(event="answer_layers", frozen_layers=old_layers, new_layers=preset.answer_layers)
    if old_theta is not None:
        run.log(event="rope_theta", old=old_theta, new=preset.rope_theta)
    if old_order != preset.text_before_images:
        run.log(event="text_before_images", old=old_order, new=preset.text_before_images)
    # With answer layers only they are optimised; otherwise every parameter stays in the optimiser (a frozen
    # eye gets no gradients, and a state saved before stage 1b froze it must still load)
    trained = [p for p in llm.parameters() if p.requires_grad] if trunk is not None else list(llm.parameters())
    optimizer = torch.optim.AdamW(trained, lr=preset.lr, weight_decay=0.01, betas=(0.9, 0.95))
    warmup = max(1, preset.steps // 40)
    if run.saved_state:
        llm.load_state_dict(run.saved_state["llm"])
        optimizer.load_state_dict(run.saved_state["optimizer"])
        if keep_eye:  # the saved state may predate stage 1b
            llm.model.visual.load_state_dict(eye)
    while run.progress.step < preset.steps:
        rng = step_rng(seed, "llm", run.progress.step)
        conversations, redrawn = fitting_conversations(rng, fmt, preset.batch, preset.max_length, questions=questions,
                                                       tasks=tasks, show_work=preset.show_work)
        metrics = {"redrawn": redrawn} if redrawn else {}
        loss = accumulate_gradients(llm, fmt, conversations, preset.max_length, weighting=preset.answer_weighting,
                                    attention=attention, metrics=metrics)
        optimizer_step(optimizer, None, trained,
                       warmup_cosine_lr(run.progress.step, preset.steps, preset.lr, warmup))
        run.tick(preset.batch, loss=loss.item(), **metrics)
        if run.progress.step % 200 == 0:
            run.save(llm=llm.state_dict(), optimizer=optimizer.state_dict())
    run.save(llm=llm.state_dict(), optimizer=optimizer.state_dict())
    if attention is not None:
        llm.set_attn_implementation(attention_kernel)
    llm.requires_grad_(True)
    llm.eval()
    return run.close()
