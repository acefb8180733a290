"""scripts/swap_dit.py puts a newly trained DiT into a copy of a model folder; these tests pin that the copy
differs from the original in its DiT alone, and that any other change is caught (a candidate that changed
more than its DiT could move understanding or retrieval, which its evaluation does not re-measure)."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "swap_dit.py"


@pytest.fixture(scope="module")
def swap_dit():
    spec = importlib.util.spec_from_file_location("swap_dit", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def perturb_first_tensor(folder: Path) -> None:
    weights = next(folder.glob("*.safetensors"))
    tensors = load_file(weights)
    key = sorted(key for key, tensor in tensors.items() if tensor.is_floating_point())[0]
    tensors[key] = tensors[key].float() + 0.5
    save_file(tensors, weights, metadata={"format": "pt"})


@pytest.fixture
def work_dir_with_new_dit(tiny_model_dir, tmp_path):
    work_dir = tmp_path / "W"
    shutil.copytree(tiny_model_dir / "decoder" / "transformer", work_dir / "decoder" / "transformer")
    perturb_first_tensor(work_dir / "decoder" / "transformer")
    config = work_dir / "decoder" / "transformer" / "config.json"  # as save_pretrained writes it in a work dir
    config.write_text(json.dumps({"_name_or_path": "some/work/dir", **json.loads(config.read_text())}))
    (work_dir / "dit").mkdir()
    rows = [{"step": 1, "seconds": 2.0, "images_seen": 8, "loss": 0.5},
            {"step": 2, "seconds": 4.0, "images_seen": 16, "loss": 0.4}]
    (work_dir / "dit" / "log.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return work_dir


def test_the_candidate_differs_from_the_model_in_its_dit_alone(swap_dit, tiny_model_dir, work_dir_with_new_dit,
                                                                tmp_path):
    candidate = tmp_path / "cand"
    swap_dit.build_candidate(tiny_model_dir, work_dir_with_new_dit, candidate)

    assert swap_dit.changed_files(tiny_model_dir, candidate) == []
    config = Path("decoder") / "transformer" / "config.json"  # the same DiT retrained keeps the shipped config
    assert (candidate / config).read_bytes() == (tiny_model_dir / config).read_bytes()
    new_dit = load_file(next((candidate / "decoder" / "transformer").glob("*.safetensors")))
    old_dit = load_file(next((tiny_model_dir / "decoder" / "transformer").glob("*.safetensors")))
    assert any(not new_dit[key].float().equal(old_dit[key].float()) for key in old_dit)
    assert {tensor.dtype for tensor in new_dit.values() if tensor.is_floating_point()} == {torch.float16}


def test_a_change_outside_the_dit_is_refused(swap_dit, tiny_model_dir, work_dir_with_new_dit, tmp_path):
    candidate = tmp_path / "cand"
    swap_dit.build_candidate(tiny_model_dir, work_dir_with_new_dit, candidate)
    outside = [path for path in candidate.rglob("*.safetensors") if "transformer" not in path.parts]
    perturb_first_tensor(outside[0].parent)

    assert swap_dit.changed_files(tiny_model_dir, candidate) == [str(outside[0].relative_to(candidate))]


def test_the_dit_training_is_recorded(swap_dit, tiny_model_dir, work_dir_with_new_dit, tmp_path):
    candidate = tmp_path / "cand"
    swap_dit.build_candidate(tiny_model_dir, work_dir_with_new_dit, candidate)
    swap_dit.record_training(candidate, work_dir_with_new_dit, "dit_cooldown", "a note", "python -m ...")

    report = json.loads((candidate / "training_report.json").read_text())
    assert report["dit_cooldown"]["steps"] == 2 and report["dit_cooldown"]["note"] == "a note"
    assert report["commands"][-1] == {"command": "python -m ...", "note": "a note"}


def test_a_work_dir_without_a_trained_dit_is_refused(swap_dit, tiny_model_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="no trained transformer"):
        swap_dit.build_candidate(tiny_model_dir, tmp_path / "empty", tmp_path / "cand")


def test_a_blend_averages_the_two_dits_tensor_by_tensor(swap_dit, tiny_model_dir, work_dir_with_new_dit, tmp_path):
    transformer = Path("decoder") / "transformer"
    weights = next((tiny_model_dir / transformer).glob("*.safetensors")).name
    old = load_file(tiny_model_dir / transformer / weights)
    new = load_file(work_dir_with_new_dit / transformer / weights)
    swap_dit.build_candidate(tiny_model_dir, work_dir_with_new_dit, tmp_path / "cand", blend=0.25)

    blended = load_file(tmp_path / "cand" / transformer / weights)
    moved = [key for key in old if not old[key].equal(new[key])]
    assert moved  # the fixture changed one tensor: the blend puts it a quarter of the way to the new one
    for key in moved:
        expected = (0.75 * old[key].float() + 0.25 * new[key].float()).half()
        assert torch.allclose(blended[key].float(), expected.float(), atol=1e-3)
    assert swap_dit.changed_files(tiny_model_dir, tmp_path / "cand") == []


def test_a_blend_outside_zero_to_one_is_refused(swap_dit, tiny_model_dir, work_dir_with_new_dit, tmp_path):
    with pytest.raises(ValueError, match="from 0 to 1"):
        swap_dit.build_candidate(tiny_model_dir, work_dir_with_new_dit, tmp_path / "cand", blend=1.5)


def test_the_screen_runs_the_decoder_stage_check(swap_dit, tiny_model_dir, monkeypatch):
    all_cases = swap_dit.generation_cases
    monkeypatch.setattr(swap_dit, "generation_cases", lambda per_category, seed: all_cases(1, seed))  # 6, not 150
    scores = swap_dit.screen(tiny_model_dir)
    assert scores["n_prompts"] == 6 and 0.0 <= scores["overall"] <= 1.0


def test_a_distilled_dit_brings_its_generation_defaults_and_nothing_else(swap_dit, tiny_model_dir,
                                                                         work_dir_with_new_dit, tmp_path):
    candidate = tmp_path / "cand"
    settings = {"sampler": "ddim", "num_inference_steps": "8", "guidance_scale": "1"}
    swap_dit.build_candidate(tiny_model_dir, work_dir_with_new_dit, candidate)
    swap_dit.set_generation_defaults(candidate, settings)

    generation = json.loads((candidate / "omnibridge_config.json").read_text())["generation"]
    assert (generation["sampler"], generation["num_inference_steps"], generation["guidance_scale"]) == ("ddim", 8, 1.0)
    assert swap_dit.changed_files(tiny_model_dir, candidate, settings) == []
    assert swap_dit.changed_files(tiny_model_dir, candidate) == ["omnibridge_config.json"]  # without the allowance

    config = json.loads((candidate / "omnibridge_config.json").read_text())
    config["generation"]["max_new_tokens"] += 1  # a default the DiT does not bring
    (candidate / "omnibridge_config.json").write_text(json.dumps(config))
    assert swap_dit.changed_files(tiny_model_dir, candidate, settings) == ["omnibridge_config.json"]


def test_an_unknown_generation_default_is_refused(swap_dit, tiny_model_dir, work_dir_with_new_dit, tmp_path):
    swap_dit.build_candidate(tiny_model_dir, work_dir_with_new_dit, tmp_path / "cand")
    with pytest.raises(ValueError, match="not a generation setting"):
        swap_dit.set_generation_defaults(tmp_path / "cand", {"sampler_kind": "ddim"})
