"""The training CLI trains a micro model through every stage, each lowering its loss, and resumes."""

import collections
import copy
import json
import random
from dataclasses import replace

import numpy as np
import pytest
import torch

from omnibridge import OmniBridgePipeline
from omnibridge.training.cli import main as train_main
from omnibridge.training.cli import parse_args
from omnibridge.training.llm_data import TASK_MIX, question_mix, sample_conversation, task_mix
from omnibridge.training.llm_stage import train_llm


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    report = train_main(["--preset", "quick", "--out", str(root / "model"), "--threads", "2"])
    return root, report


def test_every_stage_lowers_its_loss(trained):
    _, report = trained
    stages = {"vae": report["decoder"]["vae"], "dit": report["decoder"]["dit"], "llm": report["llm"],
              "vision": report["vision"], "align": report["align"], "retrieval": report["retrieval"]}
    for name, stage in stages.items():
        assert stage["last_loss"] < stage["first_loss"], (name, stage)
        assert stage["images_seen"] > 0 and stage["seconds"] > 0


def test_the_output_is_a_loadable_model_with_logs(trained):
    root, report = trained
    pipe = OmniBridgePipeline.from_pretrained(root / "model")
    assert pipe.generate("a red circle", num_inference_steps=2, seed=0).images[0].size == (64, 64)
    assert report["package"]["megabytes"] < 60
    for stage in ("vae", "dit", "llm", "vision", "align", "retrieval"):
        lines = (root / "model.train" / stage / "log.jsonl").read_text().splitlines()
        assert lines and all("step" in json.loads(line) for line in lines)


def test_resume_continues_where_it_stopped(trained, tiny_model, tmp_path):
    from omnibridge.training.presets import quick_preset

    preset = quick_preset().llm
    first = train_llm(tiny_model, replace(preset, steps=4), tmp_path, seed=0, resume=False)
    assert first["steps"] == 4
    second = train_llm(tiny_model, replace(preset, steps=7), tmp_path, seed=0, resume=True)
    assert second["steps"] == 7 and second["images_seen"] == 7 * preset.batch


def test_vision_stage_trains_only_the_eye(tiny_model, tmp_path):
    """Stage 1b may move the vision tower and merger, never the language model (text paths stay exact)."""
    import torch

    from omnibridge.training.presets import quick_preset
    from omnibridge.training.vision_stage import train_vision

    before = {k: v.clone() for k, v in tiny_model.llm.state_dict().items()}
    report = train_vision(tiny_model, replace(quick_preset().llm, vision_steps=3), tmp_path, seed=0, resume=False)
    after = tiny_model.llm.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all("visual." in k for k in changed), sorted(changed)[:5]
    assert report["steps"] == 3
    assert 0.0 <= report["held_out_map_accuracy"] <= 1.0 and 0.0 <= report["held_out_position_accuracy"] <= 1.0
    logged = [json.loads(line) for line in (tmp_path / "vision" / "log.jsonl").read_text().splitlines()]
    assert any(entry.get("position_loss", 0) > 0 for entry in logged)  # every token is asked where it is


def test_stage1_after_stage1b_keeps_the_eye_over_a_saved_state(tiny_model, tmp_path):
    """A stage-1 run after stage 1b teaches the language model to read the new eye: the eye stays
    frozen, and a stage-1 state saved before stage 1b does not bring the old eye back."""
    import copy

    import torch

    from omnibridge.training.presets import quick_preset

    model = copy.copy(tiny_model)
    model.llm = copy.deepcopy(tiny_model.llm)
    preset = replace(quick_preset().llm, steps=2)
    train_llm(model, preset, tmp_path, seed=0, resume=False)
    with torch.no_grad():  # stand-in for stage 1b retraining the eye after that save
        for parameter in model.llm.model.visual.parameters():
            parameter.add_(0.01)
    eye = {k: v.clone() for k, v in model.llm.model.visual.state_dict().items()}
    text = {k: v.clone() for k, v in model.llm.state_dict().items() if "visual." not in k}

    report = train_llm(model, replace(preset, steps=4), tmp_path, seed=0, resume=True, keep_eye=True)
    assert report["steps"] == 4
    assert all(torch.equal(v, eye[k]) for k, v in model.llm.model.visual.state_dict().items())
    assert any(not torch.equal(v, text[k]) for k, v in model.llm.state_dict().items() if k in text)
    assert all(p.requires_grad for p in model.llm.parameters())  # left trainable for the next stage


def test_at_the_presets_rope_base_one_image_column_turns_the_width_dimensions(tiny_model):
    """M-RoPE gives height and width the lowest rotary frequencies: at base 10,000 one column of a
    small grid is invisible to attention (why relation answers sat at chance); at the preset's it is not."""
    import copy

    from omnibridge.training.llm_stage import set_rope_theta
    from omnibridge.training.presets import quick_preset

    llm = copy.deepcopy(tiny_model.llm)
    rotary = llm.model.language_model.rotary_emb
    half = rotary.inv_freq.shape[0]
    width = slice(half - rotary.mrope_section[2], half)  # the last section: the image column

    def column_step_angle() -> float:
        positions = torch.tensor([[[5, 5]], [[5, 5]], [[5, 6]]])  # (t, h, w) of two tokens a column apart
        cos, sin = rotary(torch.zeros(1, dtype=torch.float32), positions)
        angle = torch.atan2(sin[0, 0, :half], cos[0, 0, :half]) - torch.atan2(sin[0, 1, :half], cos[0, 1, :half])
        return float(angle[width].abs().max())

    assert quick_preset().llm.rope_theta == 10.0
    assert column_step_angle() > 0.1
    assert set_rope_theta(llm, 10000.0) == 10.0
    rotary = llm.model.language_model.rotary_emb
    assert column_step_angle() < 0.01


def test_stage1_gives_a_model_the_runs_rope_base_and_turn_order_and_saving_keeps_them(tiny_model, tmp_path):
    import copy

    from omnibridge.modeling.devices import placement
    from omnibridge.modeling.loading import load_our_layout, save_our_layout
    from omnibridge.training.llm_stage import set_rope_theta
    from omnibridge.training.presets import quick_preset

    model = copy.copy(tiny_model)
    model.llm = copy.deepcopy(tiny_model.llm)
    set_rope_theta(model.llm, 10000.0)  # as the checkpoints before the eighth session
    model.config = replace(model.config, prompts=replace(model.config.prompts, text_before_images=False))
    train_llm(model, replace(quick_preset().llm, steps=2, text_before_images=True), tmp_path, seed=0, resume=False)

    events = [json.loads(line) for line in (tmp_path / "llm" / "log.jsonl").read_text().splitlines()]
    assert {"event": "recipe", "lr": quick_preset().llm.lr, "vqa_share": None}.items() <= events[0].items()
    assert {"event": "rope_theta", "old": 10000.0, "new": 10.0}.items() <= events[1].items()
    assert {"event": "text_before_images", "old": False, "new": True}.items() <= events[2].items()
    inv_freq = model.llm.model.language_model.rotary_emb.inv_freq
    dim = 2 * inv_freq.shape[0]
    assert torch.allclose(inv_freq, 1.0 / 10.0 ** (torch.arange(0, dim, 2).float() / dim))
    save_our_layout(model, tmp_path / "saved")
    reloaded = load_our_layout(tmp_path / "saved", placement("cpu"))
    assert reloaded.llm.config.text_config.rope_parameters["rope_theta"] == 10.0
    assert reloaded.config.prompts.text_before_images
    assert torch.allclose(reloaded.llm.model.language_model.rotary_emb.inv_freq, inv_freq)


def test_a_resumed_stage3_restores_its_heads_and_keeps_a_newer_stage2(tiny_pipeline, tmp_path):
    """Stage 2 may run again between two stage-3 runs (after a stage-1 run on a new eye): resuming stage 3
    restores only what stage 3 trains, never the BiLM and projector it saw last time."""
    import copy

    import torch

    from omnibridge.training.align_stage import reinitialise_alignment
    from omnibridge.training.presets import quick_preset
    from omnibridge.training.retrieval_stage import retrieval_state, train_retrieval

    model = copy.copy(tiny_pipeline.model)
    model.alignment = copy.deepcopy(tiny_pipeline.model.alignment)
    preset = replace(quick_preset().align, stage3_pool_scenes=6, stage3_steps=2, stage3_batch=4)
    train_retrieval(model, preset, tmp_path, seed=0, resume=False)
    heads = {k: v.clone() for k, v in retrieval_state(model.alignment.state_dict()).items()}
    reinitialise_alignment(model, seed=5)  # stand-in for a new stage-2 run
    with torch.no_grad():
        next(model.alignment.text_proj.parameters()).zero_()  # heads that differ from the saved ones
    stage2 = {k: v.clone() for k, v in model.alignment.state_dict().items() if k not in heads}

    train_retrieval(model, preset, tmp_path, seed=0, resume=True)  # already at its step count: restore only
    after = model.alignment.state_dict()
    assert heads and all(torch.equal(after[k], v) for k, v in heads.items())
    assert stage2 and all(torch.equal(after[k], v) for k, v in stage2.items())


def test_object_map_labels_name_the_cell_of_each_centre():
    from omnibridge.shapes.world import Scene, ShapeObject
    from omnibridge.training.vision_stage import OBJECT_CLASSES, cell_labels

    scene = Scene((ShapeObject("circle", "red", "small", 4, 4, 10),        # centre (9, 9): cell 0
                   ShapeObject("square", "blue", "large", 40, 20, 16)))    # centre (48, 28): row 1, col 3
    labels = cell_labels(scene, 4)
    assert labels[0] == 1 + OBJECT_CLASSES.index(("red", "circle", "small"))
    assert labels[1 * 4 + 3] == 1 + OBJECT_CLASSES.index(("blue", "square", "large"))
    assert int((labels > 0).sum()) == 2


def test_each_merged_token_is_asked_for_its_own_row_and_column_in_the_object_maps_order():
    from omnibridge.shapes.world import Scene, ShapeObject
    from omnibridge.training.vision_stage import cell_labels, cell_positions

    rows, columns = cell_positions(4)
    labels = cell_labels(Scene((ShapeObject("square", "blue", "large", 40, 20, 16),)), 4)  # row 1, col 3
    occupied = int(labels.nonzero())
    assert (int(rows[occupied]), int(columns[occupied])) == (1, 3)
    assert rows.tolist() == [r for r in range(4) for _ in range(4)] and columns.tolist() == list(range(4)) * 4


def test_stage1_data_covers_every_behaviour():
    rng = random.Random(0)
    tasks = {sample_conversation(rng).task.split("/")[0] for _ in range(400)}
    assert tasks == set(TASK_MIX)
    draw = sample_conversation(random.Random(1), "rewrite")
    assert draw.answer.startswith("<img>") and draw.answer.endswith("</img>")
    edit = sample_conversation(random.Random(1), "draw_then_edit")
    assert edit.answer.startswith("<edit>") and edit.messages[1].role == "assistant"
    asked = sample_conversation(random.Random(1), "ask_then_draw")  # a drawing request after an image Q&A
    assert [m.role for m in asked.messages] == ["user", "assistant", "user", "assistant"]
    assert any(not isinstance(part, str) for part in asked.messages[0].parts)
    assert asked.answer.startswith("<img>") and asked.answer.endswith("</img>") and len(asked.answer) > 12


def test_stage1_answer_weighting_averages_per_token_or_per_conversation(tiny_model):
    from omnibridge.modeling.chat_format import ChatFormat
    from omnibridge.training.llm_stage import accumulate_gradients

    fmt = ChatFormat(tiny_model.tokenizer, tiny_model.image_processor, tiny_model.config.prompts)
    # A trainable copy: the session's micro model is shared with the pipeline, which freezes it for inference.
    llm = copy.deepcopy(tiny_model.llm).requires_grad_(True)
    rng = random.Random(3)
    short = sample_conversation(rng, "vqa", question_mix({"relation": 1000}))  # a one-word relation answer
    long = sample_conversation(rng, "rewrite")  # a whole caption
    alone = {c.task: accumulate_gradients(llm, fmt, [c], 256).item() for c in (short, long)}
    for weighting in ("token", "conversation"):  # one conversation: the two averages agree
        assert accumulate_gradients(llm, fmt, [short], 256, weighting=weighting).item() == \
            pytest.approx(alone[short.task], rel=1e-4)
    both = accumulate_gradients(llm, fmt, [short, long], 256, weighting="conversation").item()
    assert both == pytest.approx((alone[short.task] + alone[long.task]) / 2, rel=1e-4)
    tokens = accumulate_gradients(llm, fmt, [short, long], 256).item()
    assert abs(tokens - alone[long.task]) < abs(both - alone[long.task])  # per token, the caption dominates
    with pytest.raises(ValueError, match="weighting"):
        accumulate_gradients(llm, fmt, [short], 256, weighting="sentence")


def test_stage1_asks_every_question_type_and_relations_most():
    from omnibridge.training.llm_data import QUESTION_MIX

    rng = random.Random(0)
    asked = collections.Counter(sample_conversation(rng, "vqa").task.split("/")[1] for _ in range(900))
    weighted = {t for t, weight in QUESTION_MIX.items() if weight}
    assert set(asked) == weighted  # the contract's types and the "locate" stepping stone
    # a relation cannot be asked of every scene (two nameable objects), so its share comes out below 3:1
    assert asked["relation"] > 1.5 * max(n for t, n in asked.items() if t != "relation")
    heavy = collections.Counter(sample_conversation(rng, "vqa", question_mix({"relation": 12})).task.split("/")[1]
                                for _ in range(900))
    assert heavy["relation"] > 450 and set(heavy) == weighted  # the relation-heavy phase keeps the rest
    # "missing" is 0 by default, so the data of the recipes before it is drawn as it was
    without = {t: w for t, w in QUESTION_MIX.items() if t != "missing"}
    assert [sample_conversation(random.Random(s), "vqa").answer for s in range(40)] == \
        [sample_conversation(random.Random(s), "vqa", without).answer for s in range(40)]
    missing = collections.Counter(sample_conversation(rng, "vqa", question_mix({"missing": 3})).task for _ in range(300))
    assert missing["vqa/missing"] > 15
    drill = {sample_conversation(rng, questions=question_mix({"relation": 1e6}), tasks=task_mix(1.0)).task for _ in range(50)}
    assert drill == {"vqa/relation"}  # a phase that drills relations alone
    mixed = task_mix(0.7)
    assert mixed["vqa"] == 0.7 and sum(mixed.values()) == pytest.approx(1.0)
    assert mixed["rewrite"] / mixed["edit"] == pytest.approx(TASK_MIX["rewrite"] / TASK_MIX["edit"])
    with pytest.raises(ValueError, match="vqa_share"):
        task_mix(1.5)


def test_stage1_answers_show_their_work_only_for_the_types_the_recipe_names():
    relations = question_mix({"relation": 1e6})
    plain = [sample_conversation(random.Random(seed), "vqa", relations) for seed in range(20)]
    assert all("\n" not in c.answer and c.answer in ("yes", "no", "left", "right", "above", "below") for c in plain)
    worked = [sample_conversation(random.Random(seed), "vqa", relations, show_work=("relation",)) for seed in range(20)]
    for before, after in zip(plain, worked):  # the same questions, now with each object's position first
        working, _, answer = after.answer.partition("\n")
        assert answer == before.answer and working.count("(") == 2 and after.messages[-1].parts == [after.answer]
    multi = [sample_conversation(random.Random(seed), "multi_qa", show_work=("relation",)) for seed in range(60)]
    shown = [part for c in multi for m in c.messages if m.role == "assistant" for part in m.parts if "\n" in part]
    assert shown and all(part.count("(") == 2 for part in shown)  # earlier turns in the history show it too
    mixed = [sample_conversation(random.Random(seed), "vqa", question_mix({"relation": 0}), show_work=("relation",))
             for seed in range(60)]
    assert all("\n" not in c.answer for c in mixed)  # descriptions, not named, stay as they were
    described = [sample_conversation(random.Random(seed), "vqa", question_mix({"describe": 1e6}),
                                     show_work=("relation", "describe")) for seed in range(10)]
    assert all(c.task == "vqa/describe" and c.answer.split("\n")[0].count("(") >= 1 for c in described)


def test_stage1_draws_again_any_conversation_longer_than_its_training_length(tiny_model):
    from omnibridge.modeling.chat_format import ChatFormat
    from omnibridge.training.llm_stage import encode_conversations, fitting_conversations

    fmt = ChatFormat(tiny_model.tokenizer, tiny_model.image_processor, tiny_model.config.prompts)
    draw = {"show_work": ("describe",), "questions": question_mix({"describe": 1e6})}
    plain = sample_conversation(random.Random(5), **draw)
    rng = random.Random(5)
    lengths = [len(e.input_ids) for e in encode_conversations(fmt, [sample_conversation(rng, **draw) for _ in range(40)])]
    limit = sorted(lengths)[len(lengths) // 2]  # about half of these draws are too long
    fitting, redrawn = fitting_conversations(random.Random(5), fmt, 40, limit, **draw)
    assert redrawn > 0 and len(fitting) == 40
    assert all(len(e.input_ids) <= limit for e in encode_conversations(fmt, fitting))
    # where everything fits, the draws are sample_conversation's own, one for one
    roomy, none = fitting_conversations(random.Random(5), fmt, 1, 10_000, **draw)
    assert none == 0 and roomy[0].messages[-1].parts == plain.messages[-1].parts


def test_stage1_can_teach_a_head_to_attend_to_the_named_objects(tiny_model):
    from omnibridge.modeling.chat_format import ChatFormat
    from omnibridge.training.llm_stage import (AttentionTargets, accumulate_gradients, encode_conversations,
                                               image_cells_per_side, name_token_positions, pointing_loss)
    from omnibridge.shapes.world import centre_cell_index

    fmt = ChatFormat(tiny_model.tokenizer, tiny_model.image_processor, tiny_model.config.prompts)
    cells = image_cells_per_side(fmt)
    rng = random.Random(4)
    relation = sample_conversation(rng, "vqa", question_mix({"relation": 1e6}))
    count = sample_conversation(rng, "vqa", question_mix({"count": 1e6}))
    assert len(relation.named) == 2 and count.named == ()
    targets = AttentionTargets(layer=0, weight=1.0, cells_per_side=cells)
    encoded = encode_conversations(fmt, [relation, count])
    # attention that sits wholly on each named token costs nothing; spread evenly, log(keys) per head
    keys = max(len(e.input_ids) for e in encoded)
    spread = torch.full((2, 4, keys, keys), 1.0 / keys)
    pointed = torch.zeros_like(spread)
    first = encoded[0].spans["image0"][0]
    for head, obj in enumerate(relation.named):
        pointed[0, head, :, first + centre_cell_index(obj, cells)] = 1.0
    loss, counted = pointing_loss(pointed, encoded, [relation, count], targets, fmt)
    assert counted == 1 and loss.item() == pytest.approx(0.0, abs=1e-4)
    loss, _ = pointing_loss(spread, encoded, [relation, count], targets, fmt)
    assert loss.item() == pytest.approx(2 * np.log(keys), rel=1e-3)
    # at the names instead: head 0 at the last token of each object's name looks for that object
    for qtype in ("relation", "locate", "colour", "shape"):
        for seed in range(5):
            asked = sample_conversation(random.Random(seed), "vqa", question_mix({qtype: 1e6}))
            prompt = encode_conversations(fmt, [asked])[0]
            for position, obj in zip(name_token_positions(fmt, prompt, asked), asked.named, strict=True):
                named_so_far = fmt.tokenizer.decode(prompt.input_ids[:position + 1])
                assert named_so_far.endswith(obj.shape if qtype == "colour" else
                                             f"{obj.color} object" if qtype == "shape" else f"{obj.color} {obj.shape}")
    at_names = replace(targets, at="name")
    names = name_token_positions(fmt, encoded[0], relation)
    pointed_from_names = torch.zeros_like(spread)
    for position, obj in zip(names, relation.named):
        pointed_from_names[0, 0, position, first + centre_cell_index(obj, cells)] = 1.0
    loss, counted = pointing_loss(pointed_from_names, encoded, [relation, count], at_names, fmt)
    assert counted == 1 and loss.item() == pytest.approx(0.0, abs=1e-4)
    assert pointing_loss(pointed, encoded, [relation, count], at_names, fmt)[0].item() > 10  # answers' pattern
    # through the model: the eager kernel returns its attention, the loss reaches the first layer's queries
    llm = copy.deepcopy(tiny_model.llm).requires_grad_(True)
    llm.set_attn_implementation("eager")
    metrics = {}
    answer = accumulate_gradients(llm, fmt, [relation, count], 256, attention=targets, metrics=metrics)
    plain = accumulate_gradients(copy.deepcopy(llm), fmt, [relation, count], 256)
    assert answer.item() == pytest.approx(plain.item(), rel=1e-4)  # the returned loss is the answers' alone
    assert metrics["pointing"] > 0
    assert llm.model.language_model.layers[0].self_attn.q_proj.weight.grad.abs().sum() > 0
    from_names = copy.deepcopy(tiny_model.llm).requires_grad_(True)
    from_names.set_attn_implementation("eager")
    accumulate_gradients(from_names, fmt, [relation, count], 256, attention=at_names, metrics=metrics)
    assert from_names.model.language_model.layers[0].self_attn.q_proj.weight.grad.abs().sum() > 0


def test_understanding_reports_relations_about_missing_objects_apart_from_the_overall():
    from omnibridge.evaluation.evaluate import format_table
    from omnibridge.evaluation.understanding import evaluate_understanding, missing_object_cases

    cases = missing_object_cases(30)
    assert len({question for _, question in cases}) > 20

    class SaysNo:  # a model that answers every question "No."
        def answer_batch(self, images, questions):
            return ["No."] * len(questions)

    report = evaluate_understanding(SaysNo(), per_type=40)
    assert report["missing_object"] == {"answered_no": 1.0, "n_questions": 40}
    assert report["n_questions"] == 6 * 40  # the contract's types alone make the overall
    assert report["overall"] < 0.5 and report["count"] == 0.0
    assert "answered \"no\" 1.00 (40 questions)" in format_table({"model": "m", "understanding": report})
    assert "absent" not in format_table({"model": "m", "understanding": {"overall": 0.5, "count": 0.5}})  # older reports


def test_generation_scores_count_failures_by_the_first_thing_wrong():
    from omnibridge.evaluation.evaluate import format_table
    from omnibridge.evaluation.generation import generation_cases, score_judged

    cases = generation_cases(2)  # two prompts per category, in CATEGORIES order
    verdicts = [None, "shape", "count", None, None, None, "colour", "shape", "relation", None, None, None]
    scores = score_judged(cases, verdicts)
    assert scores["single_object"] == 0.5 and scores["colors"] == 0.0 and scores["color_attr"] == 1.0
    assert scores["right_object_count"] == round(11 / 12, 4)
    assert scores["failures"] == {"single_object": {"shape": 1}, "two_object": {"count": 1},
                                  "colors": {"shape": 1, "colour": 1}, "position": {"relation": 1}}
    paths = {"omnibridge": scores, "decoder_alone": scores}
    assert "by the first thing wrong: count 1, shape 2, colour 1, relation 1" in format_table(
        {"model": "m", "generation": paths})
    older = {path: {k: v for k, v in scores.items() if k != "failures"} for path in paths}
    assert "first thing wrong" not in format_table({"model": "m", "generation": older})
    settings = {"num_inference_steps": 15, "guidance_scale": 2.0}
    reused = format_table({"model": "m", "guidance_cutoff": 0.3, "cache_interval": 3, "edit_cache_interval": 1,
                           "generation": {**paths, "settings": settings}})
    assert "first 30% of the steps; after them every block ran on 1 unguided step in 3" in reused
    assert "(edits: 1 in 1)" in reused
    every_block = format_table({"model": "m", "guidance_cutoff": 0.3, "generation": {**paths, "settings": settings}})
    assert every_block.splitlines()[-1].endswith("first 30% of the steps")  # older reports, and no reuse


def test_a_study_pairs_each_settings_verdicts_with_the_reference_setting(tiny_pipeline, monkeypatch):
    from omnibridge.evaluation import generation

    cases = generation.generation_cases(1)
    monkeypatch.setattr(generation, "judge_images",  # the first, third and fifth pass
                        lambda cases, images: [None if i % 2 == 0 else "count" for i in range(len(cases))])
    first, reference = generation.paired_generation_row(tiny_pipeline, cases, None)
    assert reference == [True, False, True, False, True, False] and "prompts_won" not in first
    assert first["generation"]["overall"] == 0.5
    row, passed = generation.paired_generation_row(tiny_pipeline, cases, [False, False, True, True, True, True])
    assert passed == reference and (row["prompts_won"], row["prompts_lost"]) == (1, 2)


def test_a_fresh_seed_draws_new_prompts_and_edits_and_none_keeps_each_parts_own(monkeypatch):
    from types import SimpleNamespace

    from omnibridge.evaluation import evaluate
    from omnibridge.evaluation.editing import EVAL_SEED as EDITING_SEED
    from omnibridge.evaluation.generation import EVAL_SEED as GENERATION_SEED
    from omnibridge.modeling.config import GenerationDefaults

    seeds = []
    monkeypatch.setattr(evaluate, "evaluate_generation_paths", lambda *args: seeds.append(("generation", args[-1])) or {})
    monkeypatch.setattr(evaluate, "evaluate_editing", lambda *args: seeds.append(("editing", args[-1])) or {})
    generation = GenerationDefaults(guidance_cutoff=0.3)
    pipe = SimpleNamespace(model_id="m", model=SimpleNamespace(source="local"),
                           decoder=SimpleNamespace(sampler_kind="unipc", dit_runtime="pytorch"),
                           config=SimpleNamespace(generation=generation))
    standard = evaluate.run_evaluation(pipe, parts=("generation", "editing"))
    fresh = evaluate.run_evaluation(pipe, parts=("generation", "editing"), seed=9)
    assert seeds == [("generation", GENERATION_SEED), ("editing", EDITING_SEED), ("generation", 9), ("editing", 9)]
    assert "cases_seed" not in standard and fresh["cases_seed"] == 9


def test_evaluate_cli_writes_a_report_and_card(trained, tmp_path):
    from omnibridge.evaluation.evaluate import main as evaluate_main

    root, _ = trained
    out = tmp_path / "report.json"
    report = evaluate_main(["--model", str(root / "model"), "--out", str(out), "--prompts-per-category", "2",
                            "--questions-per-type", "2", "--edits-per-type", "1", "--retrieval-scenes", "20",
                            "--steps", "2", "--write-card"])
    saved = json.loads(out.read_text())
    assert "NaN" not in out.read_text()  # strict JSON: a metric with nothing to count is null
    assert saved["generation"]["omnibridge"]["n_prompts"] == 12
    assert 0.0 <= report["understanding"]["overall"] <= 1.0
    assert saved["understanding"]["missing_object"]["n_questions"] == 2  # as many as a type has, here
    assert "a relation about an absent object answered" in (root / "model" / "README.md").read_text()
    assert "t2i_R@1" in report["retrieval"] and report["speed"]["image_s"] > 0
    assert 0.0 <= report["retrieval"]["i2t_R@1_reranked"] <= 1.0  # the quick preset re-ranks, as the shapes one
    assert "i2t_R@1_reranked" in (root / "model" / "README.md").read_text()
    assert "## Evaluation" in (root / "model" / "README.md").read_text()
    card = (root / "model" / "README.md").read_text()
    assert "### Against the project's goals" in card and "goals met" in card
    # the recipe is the command that trained it, with its real settings, not the preset's defaults
    assert f"python -m omnibridge.train --preset quick --out {root / 'model'} --threads 2" in card


def test_the_evaluator_times_the_defaults_against_each_saving_turned_off_in_the_same_run(tiny_pipeline, monkeypatch):
    import dataclasses

    from omnibridge.evaluation.evaluate import measure_speed

    quick = tiny_pipeline.config.generation
    assert set(measure_speed(tiny_pipeline, repeats=1)) == {"image_s", "short_answer_s", "threads", "machine",
                                                             "dit_runtime"}
    defaults = dataclasses.replace(quick, guidance_cutoff=0.3, cache_interval=3)
    monkeypatch.setattr(tiny_pipeline.config, "generation", defaults)
    drawn_with = []
    generate = tiny_pipeline.generate

    def recording_generate(*args, **kwargs):
        generation = tiny_pipeline.config.generation
        drawn_with.append((generation.guidance_cutoff, generation.cache_interval))
        return generate(*args, **kwargs)

    monkeypatch.setattr(tiny_pipeline, "generate", recording_generate)
    speed = measure_speed(tiny_pipeline, repeats=1, same_run_repeats=2)
    assert speed["every_step_guided_image_s"] > 0 and speed["every_block_image_s"] > 0
    assert speed["defaults_image_s_same_run"] > 0
    assert speed["same_run_rounds"] == 2
    # three rounds (one to warm up), each drawing with the defaults, then every step guided, then every block
    assert drawn_with[-9:] == [(0.3, 3), (1.0, 3), (0.3, 1)] * 3
    assert tiny_pipeline.config.generation is defaults  # put back as it was


def test_the_model_card_marks_each_goal_met_or_missed():
    from omnibridge.evaluation.model_card import _goal_rows

    report = {"understanding": {"count": 0.99, "shape": 0.85, "overall": 0.96},
              "editing": {"overall": 0.6}, "speed": {"image_s": 0.7, "short_answer_s": 0.1}}
    met = {goal: ok for goal, _, ok in _goal_rows(report)}
    assert met["understanding >= 0.95 overall"] and not met["no question type below 0.90"]
    assert met["editing >= 0.50"] and not met["one 64x64 image <= 0.5 s"] and met["a short answer <= 0.3 s"]
    report["speed"].update(image_s=0.48, runs_image_s=[0.48, 0.51, 0.47])  # a noisy machine: every run is shown
    measured = {goal: text for goal, text, _ in _goal_rows(report)}["one 64x64 image <= 0.5 s"]
    assert measured.endswith("runs in a row: 0.480 s, 0.510 s, 0.470 s")
    report.update(guidance_cutoff=0.3, cache_interval=3)
    measured = {goal: text for goal, text, _ in _goal_rows(report)}["one 64x64 image <= 0.5 s"]
    assert measured.startswith("0.480 s (guidance on the first 30% of the steps; every DiT block on 1 unguided step in 3)")
    report["speed"].update(block_reuse_image_s_same_run=0.4, every_block_image_s=0.5)
    measured = {goal: text for goal, text, _ in _goal_rows(report)}["one 64x64 image <= 0.5 s"]
    assert "step in 3: x0.80 the time of every block on every step, in the same run)" in measured
    # the evaluator now times every saving in one run and keeps the defaults' seconds once
    del report["speed"]["block_reuse_image_s_same_run"]
    report["speed"].update(defaults_image_s_same_run=0.45, every_step_guided_image_s=0.5)
    measured = {goal: text for goal, text, _ in _goal_rows(report)}["one 64x64 image <= 0.5 s"]
    assert "x0.90 the time of guiding every step, in the same run" in measured
    assert "x0.90 the time of every block on every step, in the same run" in measured
    report["speed"].update(pytorch_dit_image_s=0.675)
    measured = {goal: text for goal, text, _ in _goal_rows(report)}["one 64x64 image <= 0.5 s"]
    assert "; the DiT under ONNX Runtime: x0.67 the time of PyTorch's DiT, in the same run" in measured
    report["speed"].update(dit_runtime="onnxruntime-int8")
    measured = {goal: text for goal, text, _ in _goal_rows(report)}["one 64x64 image <= 0.5 s"]
    assert "; the DiT under ONNX Runtime in int8: x0.67 the time of PyTorch's DiT" in measured


def test_the_model_card_tells_gpu_training_time_from_cpu_time():
    from omnibridge.evaluation.model_card import _training_summary

    training = {"dit": {"steps": 3525, "seconds": 456.0, "images_seen": 902400, "device": "NVIDIA H200",
                        "note": "trained on the frozen text encoders"},
                "llm": {"steps": 100, "seconds": 7200.0, "images_seen": 4800}}
    summary = _training_summary(training)
    assert "| dit | 3525 | 7.6 min on NVIDIA H200 |" in summary and "| llm | 100 | 120.0 min |" in summary
    assert "**2.00 h** on a 2-core CPU" in summary and "plus **7.6 min** on one NVIDIA H200" in summary
    assert "dit: trained on the frozen text encoders" in summary
    # the curve names how many prompts each check drew (60 for curves recorded before the count was kept)
    check = {"step": 500, "seconds": 60.0, "overall": 0.5, "right_object_count": 0.7}
    for recorded, shown in ((check, "(60 prompts"), ({**check, "n_prompts": 150}, "(150 prompts")):
        assert shown in _training_summary({"dit": {**training["dit"], "eval_curve": [recorded]}})


def test_a_finer_vision_patch_text_first_turns_and_shown_work_can_be_asked_for(tmp_path):
    train_main(["--preset", "quick", "--out", str(tmp_path / "model"), "--stages", "llm", "--vision-patch", "4",
                "--text-before-images", "--show-work", "--attend-weight", "1", "--llm-steps", "2", "--threads", "2"])
    saved = tmp_path / "model.train" / "model" / "llm"
    assert json.loads((saved / "config.json").read_text())["vision_config"]["patch_size"] == 4
    assert json.loads((saved / "preprocessor_config.json").read_text())["patch_size"] == 4
    config = json.loads((saved.parent / "omnibridge_config.json").read_text())
    assert parse_args(["--out", "m", "--show-work", "relation,describe"]).show_work == ("relation", "describe")
    assert parse_args(["--out", "m", "--show-work"]).show_work == ("relation",)
    with pytest.raises(SystemExit):
        parse_args(["--out", "m", "--show-work", "count"])  # a count has no working to show
    assert config["prompts"]["text_before_images"] is True
    assert config["prompts"]["answer_after"] == "\n"  # so the pipeline splits the working from the answer
    log = [json.loads(line) for line in (saved.parent.parent / "llm" / "log.jsonl").read_text().splitlines()]
    assert log[0]["attend_weight"] == 1.0 and "pointing" in log[1]  # the taught head's loss is logged
    assert log[0]["attend_at"] == "answer"
    with pytest.raises(ValueError, match="cannot attend"):  # causal: a name before the image never sees it
        train_main(["--preset", "quick", "--out", str(tmp_path / "names"), "--stages", "llm", "--text-before-images",
                    "--attend-weight", "1", "--attend-at", "name", "--llm-steps", "2", "--threads", "2"])


def test_a_bigger_dit_can_be_asked_for(tmp_path):
    train_main(["--preset", "quick", "--out", str(tmp_path / "model"), "--stages", "decoder", "--dit-width", "64",
                "--dit-layers", "4", "--decoder-steps", "2", "--threads", "2"])
    config = json.loads((tmp_path / "model.train" / "decoder" / "transformer" / "config.json").read_text())
    assert config["num_layers"] == 4
    assert config["num_attention_heads"] * config["attention_head_dim"] == 64
    with pytest.raises(SystemExit):
        train_main(["--out", "unused", "--dit-width", "100"])
    with pytest.raises(SystemExit):
        train_main(["--out", "unused", "--dit-layers", "3"])


def test_each_resumed_decoder_run_trains_for_its_own_time_budget(tmp_path):
    from omnibridge.training.builders import build_decoder
    from omnibridge.training.decoder_stage import train_dit
    from omnibridge.training.presets import quick_preset

    preset = replace(quick_preset().decoder, dit_steps=0, eval_every=0, eval_prompts_per_category=1)
    reports = [train_dit(build_decoder(preset), preset, tmp_path, seed=0, resume=True, minutes=0.02)[1]
               for _ in range(2)]
    assert reports[0]["steps"] > 0 and reports[1]["steps"] > reports[0]["steps"]  # the second run went on


def test_the_dit_cool_down_decays_to_zero_at_the_last_step():
    from omnibridge.training.decoder_stage import dit_learning_rate
    from omnibridge.training.presets import DecoderPreset

    constant = DecoderPreset(dit_lr=1e-3, dit_steps=1000)
    assert dit_learning_rate(0, constant) < dit_learning_rate(500, constant) == dit_learning_rate(999, constant) == 1e-3
    cooled = DecoderPreset(dit_lr=1e-3, dit_steps=1000, dit_cooldown_steps=200)
    assert dit_learning_rate(799, cooled) == 1e-3
    assert dit_learning_rate(900, cooled) == pytest.approx(5e-4) and dit_learning_rate(999, cooled) == pytest.approx(5e-6)
    with pytest.raises(SystemExit):
        train_main(["--out", "unused", "--decoder-cooldown-steps", "200"])  # a decay needs the step it ends at


def test_fresh_align_reinitialises_only_what_stage_2_trains(tiny_pipeline):
    """After a newer decoder, stage 2 can restart from a fresh projector and BiLM (retrieval heads kept)."""
    import copy

    import torch

    from omnibridge.training.align_stage import reinitialise_alignment

    model = copy.copy(tiny_pipeline.model)
    model.alignment = copy.deepcopy(tiny_pipeline.model.alignment)
    before = {k: v.clone() for k, v in model.alignment.state_dict().items()}
    reinitialise_alignment(model, seed=3)
    after = model.alignment.state_dict()
    changed = {k.split(".")[0] for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"downsampling_linear_layer", "bilm"}, changed
    again = copy.deepcopy(model.alignment)
    reinitialise_alignment(model, seed=3)
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in model.alignment.state_dict().items())


def test_stage3_pool_holds_the_frozen_llms_states_and_is_rebuilt_for_another_llm(tiny_pipeline, tmp_path):
    """Stage 3 trains on cached LLM states: they must equal a fresh forward pass, pair each caption with
    its own scene, and never be reused once the LLM's weights change."""
    import copy

    import torch

    from omnibridge.modeling.chat_format import Message
    from omnibridge.shapes.render import render
    from omnibridge.shapes.world import sample_scene
    from omnibridge.training.presets import quick_preset
    from omnibridge.training.retrieval_stage import llm_states, load_or_build_pool, pool_batch

    model, fmt = tiny_pipeline.model, tiny_pipeline.format
    preset = replace(quick_preset().align, stage3_pool_scenes=6)
    pool = load_or_build_pool(model, fmt, preset, seed=1, folder=tmp_path)
    assert len(pool) == 6 and all(pool.captions_of_scene)

    first_scene = sample_scene(random.Random("1/retrieval-pool"))  # the pool's own scene RNG
    states, mask = llm_states(model, fmt, [fmt.encode([Message("user", [render(first_scene)])])], "image0")
    assert torch.allclose(pool.image_states[0].float(), states[0, : int(mask.sum())], atol=1e-2, rtol=1e-2)

    batch = pool_batch(pool, random.Random(0), 4, partial_share=0.5)
    (images, image_mask), (texts, text_mask), (partials, partial_mask) = batch.images, batch.texts, batch.partials
    assert images.shape[0] == 4 and texts.shape[0] == len(batch.text_ids) and set(batch.text_ids.tolist()) == {0, 1, 2, 3}
    assert image_mask.sum(1).min() > 0 and text_mask.sum(1).min() > 0 and partial_mask.sum(1).min() > 0
    # two short queries, each drawn from one of the batch's first two scenes, which must answer it
    assert partials.shape[0] == 2 and batch.partial_answers.shape == (2, 4)
    assert batch.partial_answers[0, 0] and batch.partial_answers[1, 1]
    assert pool_batch(pool, random.Random(0), 4).partials is None

    caption = pool.caption_states[pool.captions_of_scene[2][0]]
    reused = load_or_build_pool(model, fmt, preset, seed=1, folder=tmp_path)
    assert torch.equal(reused.caption_states[reused.captions_of_scene[2][0]], caption)
    changed = copy.copy(model)
    changed.llm = copy.deepcopy(model.llm)
    with torch.no_grad():
        for parameter in changed.llm.parameters():
            parameter.mul_(1.1)
    rebuilt = load_or_build_pool(changed, fmt, preset, seed=1, folder=tmp_path)
    assert not torch.equal(rebuilt.caption_states[rebuilt.captions_of_scene[2][0]], caption)


def test_a_new_dit_trains_on_a_trained_decoders_frozen_text_encoders(trained, tmp_path, monkeypatch):
    """--decoder-from: the model's alignment stays valid because the text encoders it imitates do not change."""
    from safetensors.torch import load_file

    from omnibridge.evaluation import generation
    from omnibridge.training import decoder_stage

    check_seeds = []  # the stage keeps its best EMA by these checks: never the evaluation's own cases
    monkeypatch.setattr(decoder_stage, "generation_cases",
                        lambda per_category, seed=generation.EVAL_SEED: check_seeds.append(seed)
                        or generation.generation_cases(per_category, seed))
    root, _ = trained
    source = root / "model" / "decoder"
    work = tmp_path / "work"
    args = ["--preset", "quick", "--out", str(tmp_path / "unused"), "--work-dir", str(work), "--stages", "decoder",
            "--decoder-from", str(source), "--dit-width", "64", "--dit-batch", "4", "--decoder-steps", "3",
            "--threads", "2"]
    report = train_main(args)
    assert check_seeds == [generation.VALIDATION_SEED]
    assert report["decoder"]["vae"]["kept_from"] == str(source) and not report["decoder"]["vae"]["dit_trained_on"]
    for part in ("text_encoder", "text_encoder_2", "vae"):
        before, after = (load_file(next((d / part).glob("*.safetensors"))) for d in (source, work / "decoder"))
        assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before), part
    config = json.loads((work / "decoder" / "transformer" / "config.json").read_text())
    assert config["num_attention_heads"] * config["attention_head_dim"] == 64
    resumed = train_main([*args[:-4], "--decoder-steps", "5", "--resume", "--threads", "2"])
    assert resumed["decoder"]["dit"]["steps"] == 5
    with pytest.raises(ValueError, match="frozen_text_encoders"):  # the same state without --decoder-from
        train_main(["--preset", "quick", "--out", str(tmp_path / "unused"), "--work-dir", str(work), "--stages",
                    "decoder", "--dit-width", "64", "--decoder-steps", "6", "--resume", "--threads", "2"])
    with pytest.raises(SystemExit):
        train_main(["--out", "unused", "--decoder-from", str(tmp_path / "nowhere")])


def test_decoder_from_trains_its_dit_on_when_the_shape_matches(trained):
    from omnibridge.modeling.decoder import HunyuanDecoder
    from omnibridge.training.builders import decoder_for_new_dit_training
    from omnibridge.training.presets import quick_preset

    root, _ = trained
    source = root / "model" / "decoder"
    preset = quick_preset().decoder
    decoder, kept = decoder_for_new_dit_training(source, preset)
    original = HunyuanDecoder.from_pretrained(source).transformer.state_dict()
    assert kept and all(torch.equal(v, original[k]) for k, v in decoder.transformer.state_dict().items())
    _, kept = decoder_for_new_dit_training(source, replace(preset, num_layers=4))
    assert not kept


def test_only_a_dit_that_starts_from_nothing_draws_the_early_curriculum(trained, tmp_path, monkeypatch):
    """The early mix counts this work dir's steps: a DiT trained on from a shipped one would see only it."""
    from omnibridge.training import decoder_stage

    early_flags = []
    draw = decoder_stage.sample_decoder_pair
    monkeypatch.setattr(decoder_stage, "sample_decoder_pair",
                        lambda rng, early=False: early_flags.append(early) or draw(rng, early))
    root, _ = trained
    common = ["--preset", "quick", "--out", str(tmp_path / "unused"), "--stages", "decoder", "--decoder-from",
              str(root / "model" / "decoder"), "--dit-batch", "4", "--decoder-steps", "2", "--threads", "2"]
    trained_on = train_main([*common, "--work-dir", str(tmp_path / "on")])
    assert trained_on["decoder"]["vae"]["dit_trained_on"] and early_flags == [False] * 8
    early_flags.clear()
    new = train_main([*common, "--work-dir", str(tmp_path / "new"), "--dit-width", "64"])
    assert not new["decoder"]["vae"]["dit_trained_on"] and early_flags == [True] * 8
    early_flags.clear()  # asked for: the early mix on a trained DiT, for its first step only
    train_main([*common, "--work-dir", str(tmp_path / "asked"), "--dit-early-mix-steps", "1"])
    assert early_flags == [True] * 4 + [False] * 4


def test_dit_batches_from_worker_processes_arrive_in_step_order_and_match_inline_ones():
    from omnibridge.training.decoder_stage import _batches
    from omnibridge.training.presets import quick_preset

    preset = quick_preset().decoder
    inline, parallel = (_batches(preset, seed=3, first_step=7, latent_shape=(4, 8, 8), workers=w) for w in (0, 2))
    for _ in range(5):
        a, b = next(inline), next(parallel)
        assert a.step == b.step and a.captions == b.captions
        assert torch.equal(a.pixels, b.pixels) and torch.equal(a.noise, b.noise) and torch.equal(a.timesteps, b.timesteps)
    assert a.step == 11


def _llm_batch(model, scene_image):
    from omnibridge.modeling.chat_format import ChatFormat, Message

    fmt = ChatFormat(model.tokenizer, model.image_processor, model.config.prompts)
    encoded = fmt.encode([Message("user", [scene_image, "How many circles are there?"])], add_generation_prompt=True)
    return fmt.collate([encoded], "left")["inputs"]


def test_a_grown_language_model_computes_what_the_trained_one_did(tiny_model, scene_image):
    """Depth up-scaling (training/grow.py) keeps the answers and the hidden states stages 2 and 3 read."""
    from omnibridge.training.grow import grow_language_model

    llm = tiny_model.llm.eval()
    layers = llm.config.text_config.num_hidden_layers
    grown = grow_language_model(llm, 2 * layers).eval()
    assert grown.config.text_config.num_hidden_layers == 2 * layers
    assert len(grown.config.text_config.layer_types) == 2 * layers
    assert llm.config.text_config.num_hidden_layers == layers  # the trained model is left as it was
    batch = _llm_batch(tiny_model, scene_image)
    with torch.inference_mode():
        before, after = llm(**batch, output_hidden_states=True), grown(**batch, output_hidden_states=True)
        assert torch.allclose(before.hidden_states[-1], after.hidden_states[-1], atol=1e-5)
        assert torch.allclose(before.logits, after.logits, atol=1e-5)
        # the KV cache indexes layers by position, so generation must agree too
        kwargs = dict(max_new_tokens=6, do_sample=False, min_new_tokens=6)
        assert torch.equal(llm.generate(**batch, **kwargs), grown.generate(**batch, **kwargs))
    assert grow_language_model(llm, layers) is llm
    with pytest.raises(ValueError, match="multiple"):
        grow_language_model(grown, layers)  # it never drops layers


def test_stage1_grows_a_shallower_model_to_the_presets_depth_and_trains_the_new_layers(tiny_model, tmp_path):
    from omnibridge.modeling.devices import placement
    from omnibridge.modeling.loading import load_our_layout, save_our_layout
    from omnibridge.training.presets import quick_preset

    model = copy.copy(tiny_model)
    model.llm = copy.deepcopy(tiny_model.llm)
    layers = model.llm.config.text_config.num_hidden_layers
    train_llm(model, replace(quick_preset().llm, steps=2, num_layers=2 * layers), tmp_path, seed=0, resume=False)
    stack = model.llm.model.language_model.layers
    assert len(stack) == 2 * layers
    events = [json.loads(line) for line in (tmp_path / "llm" / "log.jsonl").read_text().splitlines()]
    assert {"event": "grown", "old_layers": layers, "new_layers": 2 * layers}.items() <= events[1].items()
    assert stack[1].self_attn.o_proj.weight.abs().sum() > 0  # a copy's zeroed projection has started to learn
    save_our_layout(model, tmp_path / "saved")
    assert load_our_layout(tmp_path / "saved", placement("cpu")).llm.config.text_config.num_hidden_layers == 2 * layers


def test_answer_layers_train_alone_and_leave_what_the_bilm_and_retrieval_heads_read(tiny_model, scene_image,
                                                                                     tmp_path):
    """Stacked answer layers (grow.stack_answer_layers) start as identities; stage 1 then trains only them,
    and the pipeline's feature states (OmniBridgeConfig.feature_layers) stay bit for bit the trunk's, also
    once packaged in float16."""
    from safetensors import safe_open

    from omnibridge.modeling.devices import placement
    from omnibridge.modeling.loading import load_our_layout, save_our_layout
    from omnibridge.training.grow import stack_answer_layers
    from omnibridge.training.presets import quick_preset
    from omnibridge.training.stages import frozen_trunk, store_half

    llm = tiny_model.llm.eval()
    layers = llm.config.text_config.num_hidden_layers
    stacked = stack_answer_layers(llm, layers).eval()
    batch = _llm_batch(tiny_model, scene_image)
    with torch.inference_mode():
        before, after = llm(**batch, output_hidden_states=True), stacked(**batch, output_hidden_states=True)
        assert torch.allclose(before.logits, after.logits, atol=1e-5)
        assert torch.equal(before.hidden_states[layers - 1], after.hidden_states[layers - 1])  # the trunk's own
    with pytest.raises(ValueError, match="answer layers"):
        stack_answer_layers(llm, layers + 1)

    model = copy.copy(tiny_model)
    model.llm, model.config = copy.deepcopy(tiny_model.llm), copy.deepcopy(tiny_model.config)
    frozen = {k: v.clone() for k, v in model.llm.state_dict().items()}
    train_llm(model, replace(quick_preset().llm, steps=2, answer_layers=layers), tmp_path, seed=0, resume=False)
    assert model.config.feature_layers == layers and len(model.llm.model.language_model.layers) == 2 * layers
    assert model.config.generation.rewrite_layers == layers  # the trunk rewrites prompts (the faster way)
    trained = model.llm.state_dict()
    assert all(torch.equal(trained[k], v) for k, v in frozen.items())  # embeddings, trunk, norm, eye: untouched
    assert trained[f"model.language_model.layers.{layers}.mlp.down_proj.weight"].abs().sum() > 0  # new ones learn
    events = [json.loads(line) for line in (tmp_path / "llm" / "log.jsonl").read_text().splitlines()]
    assert any(e.get("event") == "answer_layers" and e["frozen_layers"] == layers for e in events)

    save_our_layout(model, tmp_path / "saved")
    # the shapes preset's float16 package rounds only the answer layers (stages.frozen_trunk)
    frozen_key = frozen_trunk(layers)
    assert frozen_key("model.layers.0.mlp.up_proj.weight") and frozen_key("model.embed_tokens.weight")
    assert not frozen_key(f"model.language_model.layers.{layers}.mlp.up_proj.weight")
    for weights in (tmp_path / "saved").glob("llm/*.safetensors"):
        store_half(weights, keep=frozen_key)
        with safe_open(weights, framework="pt") as handle:
            halved = {key for key in handle.keys() if handle.get_tensor(key).dtype == torch.float16}
        assert halved and all(not frozen_key(key) for key in halved)
    reloaded = load_our_layout(tmp_path / "saved", placement("cpu"))
    assert reloaded.config.feature_layers == layers
    original, stacked_pipe = (OmniBridgePipeline(m, placement("cpu")) for m in (tiny_model, reloaded))
    texts = ["a red circle", "two blue squares and a large green triangle"]
    assert np.array_equal(original.embed_texts(texts), stacked_pipe.embed_texts(texts))
    assert np.array_equal(original.embed_images([scene_image]), stacked_pipe.embed_images([scene_image]))
    assert not torch.equal(original.llm(**batch).logits, stacked_pipe.llm(**batch).logits)  # its answers moved
    with pytest.raises(ValueError, match="not both"):
        train_llm(reloaded, replace(quick_preset().llm, steps=1, num_layers=4 * layers), tmp_path / "again",
                  seed=0, resume=False)


def test_a_half_precision_package_halves_the_llm_and_decoder_and_loads_as_float32(trained, tmp_path):
    """The shapes preset packages in float16 (the 60 MB budget); loading casts back to the device's dtype."""
    from safetensors import safe_open

    from omnibridge.training.stages import package

    root, _ = trained
    report = package(root / "model.train", tmp_path / "half", half=True)
    assert report["megabytes"] < package(root / "model.train", tmp_path / "full")["megabytes"]

    def dtypes(path):
        with safe_open(path, framework="pt") as handle:
            return {handle.get_tensor(key).dtype for key in handle.keys()}

    halved = [*(tmp_path / "half").glob("llm/*.safetensors"), *(tmp_path / "half").glob("decoder/*/*.safetensors")]
    assert halved and all(torch.float32 not in dtypes(path) for path in halved)
    assert dtypes(tmp_path / "half" / "alignment.safetensors") == {torch.float32}
    full = OmniBridgePipeline.from_pretrained(tmp_path / "full")
    half = OmniBridgePipeline.from_pretrained(tmp_path / "half")
    for name, tensor in full.llm.state_dict().items():
        assert half.llm.state_dict()[name].dtype == tensor.dtype == torch.float32
        assert torch.allclose(half.llm.state_dict()[name], tensor, rtol=1e-3, atol=1e-4), name
    assert half.generate("a red circle", num_inference_steps=2, seed=0).images[0].size == (64, 64)


def test_command_line_options_reach_the_preset_and_a_zero_counts():
    """An option not given leaves the preset's value; one given, even 0 (`--vqa-share 0`), replaces it."""
    from omnibridge.training.cli import parse_args, preset_for
    from omnibridge.training.presets import get_preset

    assert preset_for(parse_args(["--out", "unused"])) == get_preset("shapes")
    given = preset_for(parse_args(["--out", "unused", "--partial-share", "0", "--vqa-share", "0",
                                   "--text-before-images", "--question-weight", "relation=2", "--llm-steps", "7",
                                   "--dit-lr", "2e-4"]))
    assert given.align.stage3_partial_share == 0 and given.llm.vqa_share == 0 and given.decoder.dit_lr == 2e-4
    assert given.llm.text_before_images is True and given.llm.question_weights == {"relation": 2.0}
    assert given.llm.steps == 7 and given.align == replace(get_preset("shapes").align, stage3_partial_share=0)


def test_the_package_takes_the_presets_sampler_and_steps(trained):
    from pathlib import Path

    from omnibridge.modeling.config import OmniBridgeConfig
    from omnibridge.modeling.decoder import HunyuanDecoder
    from omnibridge.training.assemble import shapes_config
    from omnibridge.training.presets import get_preset

    root, _ = trained
    packaged = OmniBridgeConfig.load(root / "model" / "omnibridge_config.json").generation
    quick = get_preset("quick")
    assert (packaged.sampler, packaged.num_inference_steps) == (quick.sampler, quick.inference_steps)
    # not the config's own defaults: a preset's choice reaches the package
    decoder = HunyuanDecoder.from_pretrained(root / "model" / "decoder")
    chosen = shapes_config(replace(quick, sampler="ddim", inference_steps=7), decoder, llm_hidden_size=32).generation
    assert (chosen.sampler, chosen.num_inference_steps) == ("ddim", 7)
    # the shapes recipe writes the defaults the built-in model ships with
    shipped = OmniBridgeConfig.load(Path("assets/omnibridge-shapes/omnibridge_config.json")).generation
    shapes = get_preset("shapes")
    assert (shipped.sampler, shipped.num_inference_steps, shipped.guidance_cutoff) == (
        shapes.sampler, shapes.inference_steps, shapes.guidance_cutoff)
    assert (shipped.cache_interval, shipped.edit_cache_interval) == (shapes.cache_interval, shapes.edit_cache_interval)
