"""The language model in 8-bit or 4-bit (bitsandbytes, which also runs on the CPU): it loads in place of
the full-precision one, every path runs, and the answers, embeddings and drawings stay close to the
full-precision model's. The built-in model is the one measured: its trained weights give real answers."""

from __future__ import annotations

import logging
import os
import random
import subprocess
import sys

import numpy as np
import pytest

from omnibridge import DEFAULT_MODEL, OffloadError, OmniBridgePipeline, PlacementError
from omnibridge.config import AppSettings
from omnibridge.modeling.devices import placement
from omnibridge.shapes import render, sample_scene

QUESTIONS = ("Describe the image.", "How many circles are there?", "What color is the square?")
PROMPTS = ["two red circles", "a blue square to the left of a green triangle", "three yellow triangles"]
LINEAR_CLASSES = {"8bit": "Linear8bitLt", "4bit": "Linear4bit"}


def outputs(pipe) -> dict:
    rng = random.Random(11)
    scenes = [render(sample_scene(rng, 2)) for _ in range(4)]
    return {
        "answers": [pipe.chat([{"role": "user", "content": q}], images=[scene], max_new_tokens=24)
                    for scene in scenes[:3] for q in QUESTIONS],
        "texts": pipe.embed_texts(PROMPTS),
        "images": pipe.embed_images(scenes),
        "drawing": np.asarray(pipe.generate("two red circles above a blue square", seed=3).images[0], dtype=float),
        "llm_mb": pipe.info()["memory"]["llm_weights_mb"],
        "llm_parameters": pipe.info()["parameters"]["llm"],
    }


@pytest.fixture(scope="module")
def full_precision() -> dict:
    return outputs(OmniBridgePipeline.from_pretrained(DEFAULT_MODEL, device="cpu"))


@pytest.mark.parametrize("mode", ["8bit", "4bit"])
def test_the_builtin_model_quantized_answers_embeds_and_draws_as_it_does_whole(full_precision, mode):
    pipe = OmniBridgePipeline.from_pretrained(DEFAULT_MODEL, device="cpu", quantization=mode)
    assert type(pipe.llm.model.language_model.layers[0].mlp.up_proj).__name__ == LINEAR_CLASSES[mode]
    assert pipe.info()["quantization"] == {"llm": mode}
    # 4-bit weights are stored two to an element: the About tab's count must still be the model's
    assert pipe.info()["parameters"]["llm"] == full_precision["llm_parameters"]
    quantized = outputs(pipe)
    # measured: 8-bit 0.27x and 4-bit 0.15x the full-precision LLM's 26.8 MB
    assert quantized["llm_mb"] < 0.4 * full_precision["llm_mb"]
    # measured: 8 of 9 answers the same at 8-bit (one colour differs), 9 of 9 at 4-bit
    agreeing = sum(a == b for a, b in zip(quantized["answers"], full_precision["answers"]))
    assert agreeing >= 7, list(zip(quantized["answers"], full_precision["answers"]))
    # unit vectors; measured cosines >= 0.999 at 8-bit, >= 0.99 at 4-bit
    assert np.min(np.sum(quantized["texts"] * full_precision["texts"], axis=1)) > 0.97
    assert np.min(np.sum(quantized["images"] * full_precision["images"], axis=1)) > 0.97
    # the same seed draws nearly the same picture (measured: a mean difference of 0.05 of 255 at 4-bit)
    assert np.abs(quantized["drawing"] - full_precision["drawing"]).mean() < 3


def test_a_gallery_indexed_at_full_precision_asks_a_quantized_model_to_reindex(tiny_model_dir, tmp_path):
    from PIL import Image

    from omnibridge.gallery.store import GalleryStore

    full = OmniBridgePipeline.from_pretrained(tiny_model_dir, device="cpu")
    store = GalleryStore(tmp_path / "data", full)
    store.add([Image.new("RGB", (64, 64), (200, 30, 30))], ["a red square"])
    quantized = OmniBridgePipeline.from_pretrained(tiny_model_dir, device="cpu", quantization="8bit")
    assert quantized.embedding_model_id == full.embedding_model_id + "+8bit"
    # and the feedback tab's records name what was served, so 8-bit ratings never count as full precision's
    assert full.variant_id == full.model_id and quantized.variant_id == full.model_id + "+8bit"
    reopened = GalleryStore(tmp_path / "data", quantized)
    assert reopened.needs_reindex() and reopened.reindex() == 1 and not reopened.needs_reindex()


def test_the_gallery_tab_says_what_4bit_costs_search(tiny_pipeline):
    from dataclasses import replace

    from omnibridge.ui.gallery import FOUR_BIT_SEARCH, quantization_note

    assert quantization_note(tiny_pipeline) == ""
    for mode, note in (("8bit", ""), ("4bit", FOUR_BIT_SEARCH)):
        as_if = type("Loaded", (), {"placement": replace(tiny_pipeline.placement, llm_quantization=mode)})()
        assert quantization_note(as_if) == note


def test_impossible_quantization_requests_say_why(monkeypatch):
    with pytest.raises(PlacementError, match="unknown quantization"):
        placement("cpu", quantization="3bit")
    with pytest.raises(PlacementError, match="CUDA or the CPU"):
        placement("mps", quantization="8bit")
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # as if it were not installed
    with pytest.raises(PlacementError, match="pip install bitsandbytes"):
        placement("cpu", quantization="4bit")


def test_quantized_weights_refuse_model_offload_and_keep_the_log_quiet(tiny_model_dir, scene_image, caplog):
    pipe = OmniBridgePipeline.from_pretrained(tiny_model_dir, device="cpu", quantization="8bit")
    with pytest.raises(OffloadError, match="do not combine"):
        pipe.enable_model_offload(8)
    with caplog.at_level(logging.WARNING):
        pipe.chat([{"role": "user", "content": "What is this?"}], images=[scene_image], max_new_tokens=4)
    # bitsandbytes warns on each 8-bit product of float32 inputs: once a layer and token, unless told not to
    assert not [r for r in caplog.records if r.name.startswith("bitsandbytes")], caplog.text[:300]


def test_the_app_takes_quantize_from_a_flag_or_the_environment_and_refuses_a_wrong_one(monkeypatch, tmp_path):
    assert AppSettings.from_args([]).quantize is None
    assert AppSettings.from_args(["--quantize", "4bit"]).quantize == "4bit"
    monkeypatch.setenv("OMNIBRIDGE_QUANTIZE", "8bit")
    assert AppSettings.from_args([]).quantize == "8bit"
    result = subprocess.run([sys.executable, "app.py", "--data-dir", str(tmp_path / "d"), "--seed-gallery", "0"],
                            capture_output=True, text=True, timeout=180,
                            env={**os.environ, "OMNIBRIDGE_QUANTIZE": "3bit"})
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == ("OmniBridge Studio cannot start: unknown quantization '3bit'; "
                                                      "use one of ['8bit', '4bit']")


def test_the_app_starts_without_importing_bitsandbytes_and_it_prints_no_kernel_warning_when_imported():
    """diffusers would import bitsandbytes at every start (about 1.4 s: it pulls in torch's compiler), for
    quantized diffusers models the app never loads; and on a CPU with AVX512-BF16 bitsandbytes warns at import
    that an optional Hub kernel is missing."""
    code = ("import sys, omnibridge.pipeline, omnibridge.ui.app; print('bitsandbytes' in sys.modules); "
            "import bitsandbytes")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-500:]
    assert result.stdout.strip() == "False"
    assert "kernels-community" not in result.stderr
