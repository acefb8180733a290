"""The DiT's forward under ONNX Runtime (modeling/onnx_dit.py): the same images as PyTorch, block reuse
included, graphs cached by weights, and PyTorch kept wherever the graphs cannot serve."""

from __future__ import annotations

import copy
import sys

import numpy as np
import pytest
import torch

from omnibridge.modeling import onnx_dit
from omnibridge.modeling.onnx_dit import OnnxDiT, OnnxUnavailable


@pytest.fixture
def decoder_with(tiny_pipeline):
    """The tiny pipeline's decoder with another DiT swapped in, ONNX Runtime off again afterwards (the pipeline
    is shared by the whole session)."""
    decoder = tiny_pipeline.decoder
    own = decoder.transformer

    def swap(transformer):
        decoder.transformer = transformer
        return decoder

    yield swap
    decoder.transformer, decoder.onnx_dit = own, None


@pytest.fixture
def onnx_runs(monkeypatch):
    """The kind of each graph ONNX Runtime ran ('full' or 'reuse')."""
    runs = []
    run = OnnxDiT._run
    monkeypatch.setattr(OnnxDiT, "_run", lambda self, kind, inputs: runs.append(kind) or run(self, kind, inputs))
    return runs


def _denoise(decoder, seed: int = 3, **options):
    cond = decoder.encode_captions(["a red circle"])
    with torch.inference_mode():
        return decoder.denoise(cond, [seed], 64, 64, num_inference_steps=8, guidance_scale=2.0,
                               guidance_cutoff=0.25, cache_interval=3, **options)


def test_denoising_under_onnxruntime_gives_pytorchs_latents_with_block_reuse(decoder_with, deeper_dit, tmp_path,
                                                                            onnx_runs):
    decoder = decoder_with(deeper_dit)  # six blocks: four middle ones to reuse
    expected = _denoise(decoder)
    decoder.use_onnxruntime(64, 64, tmp_path)
    assert sorted(path.name.rsplit("-", 1)[1] for path in tmp_path.iterdir()) == ["full.onnx", "reuse.onnx"]
    onnx_runs.clear()  # the build's own check
    got = _denoise(decoder)
    # 8 steps: 2 guided (batch 2), then every third of the unguided ones runs every block, the others reuse
    assert onnx_runs == ["full", "full", "full", "reuse", "reuse", "full", "reuse", "reuse"]
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_the_pipeline_draws_the_same_image_and_reads_the_graphs_back_after_a_restart(tiny_pipeline, decoder_with,
                                                                                    tmp_path, monkeypatch, onnx_runs):
    decoder_with(tiny_pipeline.decoder.transformer)  # two blocks: no middle ones, `full` alone
    before = np.asarray(tiny_pipeline.generate("a blue square", seed=5).images[0], dtype=int)
    assert tiny_pipeline.info()["dit_runtime"] == "pytorch"
    assert tiny_pipeline.use_onnxruntime(tmp_path) is None
    assert tiny_pipeline.info()["dit_runtime"] == "onnxruntime"  # the About tab says which runs
    decoder = tiny_pipeline.decoder
    example = decoder.example_dit_inputs(64, 64)
    assert decoder.onnx_dit.accepts(decoder.transformer, example)
    assert not decoder.onnx_dit.accepts(decoder.transformer, {**example, "embeds": example["embeds"][:, :1]})
    onnx_runs.clear()
    after = np.asarray(tiny_pipeline.generate("a blue square", seed=5).images[0], dtype=int)
    assert np.abs(after - before).max() <= 1
    assert set(onnx_runs) == {"full"} and len(onnx_runs) == tiny_pipeline.config.generation.num_inference_steps
    files = {path.name: path.read_bytes() for path in tmp_path.iterdir()}
    assert len(files) == 1

    def no_tracing(*args):
        raise AssertionError("traced again")

    monkeypatch.setattr(OnnxDiT, "_trace", staticmethod(no_tracing))
    tiny_pipeline.decoder.onnx_dit = None
    assert tiny_pipeline.use_onnxruntime(tmp_path) is None  # read back, not traced
    assert {path.name: path.read_bytes() for path in tmp_path.iterdir()} == files


def test_other_weights_get_other_graphs_and_a_mismatching_graph_is_refused(decoder_with, deeper_dit, tmp_path,
                                                                          onnx_runs):
    decoder = decoder_with(deeper_dit)
    decoder.use_onnxruntime(64, 64, tmp_path)
    runner, digest = decoder.onnx_dit, onnx_dit.weights_digest(deeper_dit)
    with torch.no_grad():
        for parameter in deeper_dit.blocks[0].parameters():  # a retrained DiT, say
            parameter.add_(0.05 * torch.randn_like(parameter))
    assert onnx_dit.weights_digest(deeper_dit) != digest
    example = {name: tensor.expand(2, *tensor.shape[1:]) if name in onnx_dit.BATCHED else tensor
               for name, tensor in decoder.example_dit_inputs(64, 64).items()}
    with pytest.raises(OnnxUnavailable, match="differs from PyTorch"):
        runner.check(deeper_dit, example)  # the old graphs against the new weights
    student = copy.deepcopy(deeper_dit)  # a decoder that swaps its DiT runs the new one in PyTorch
    decoder_with(student)
    onnx_runs.clear()
    assert not runner.accepts(student, example) and _denoise(decoder).isfinite().all() and onnx_runs == []


def test_without_the_exporter_the_pipeline_says_why_and_keeps_pytorch(tiny_pipeline, decoder_with, tmp_path,
                                                                     monkeypatch):
    decoder_with(tiny_pipeline.decoder.transformer)
    monkeypatch.setitem(sys.modules, "onnx", None)  # as if not installed
    assert "needs the `onnx` package" in tiny_pipeline.use_onnxruntime(tmp_path)
    assert tiny_pipeline.decoder.onnx_dit is None and not any(tmp_path.iterdir())
    assert tiny_pipeline.generate("a blue square", seed=5).images[0].size == (64, 64)


def test_a_half_precision_decoder_is_not_offered_onnxruntime(tiny_pipeline, decoder_with, monkeypatch):
    decoder = decoder_with(tiny_pipeline.decoder.transformer)
    monkeypatch.setattr(type(decoder), "dtype", property(lambda self: torch.bfloat16))
    with pytest.raises(OnnxUnavailable, match="float32 DiT on the CPU only"):
        decoder.use_onnxruntime(64, 64)


def test_the_app_moves_the_dit_behind_it_and_a_failure_leaves_it_serving(tiny_pipeline, decoder_with, tmp_path,
                                                                         capsys):
    from omnibridge.ui.context import _run_dit_under_onnxruntime

    decoder_with(tiny_pipeline.decoder.transformer)

    class Broken:  # a Compare checkpoint whose graphs fail in a way nobody foresaw
        model_id = "broken"

        def use_onnxruntime(self, cache_dir, int8):
            raise RuntimeError("boom")

    _run_dit_under_onnxruntime([Broken(), tiny_pipeline, None], tmp_path, int8=True)
    printed = capsys.readouterr()
    assert "RuntimeError: boom" in printed.err
    assert f"{tiny_pipeline.model_id}: the DiT runs under ONNX Runtime, in int8" in printed.out
    assert tiny_pipeline.decoder.onnx_dit is not None


def test_onnxruntime_is_on_by_default_and_can_be_turned_off(monkeypatch):
    from omnibridge.config import AppSettings

    monkeypatch.delenv("OMNIBRIDGE_ONNX_DIT", raising=False)
    assert AppSettings.from_args([]).onnx_dit and not AppSettings.from_args(["--no-onnx-dit"]).onnx_dit
    monkeypatch.setenv("OMNIBRIDGE_ONNX_DIT", "0")
    assert not AppSettings.from_args([]).onnx_dit


def test_a_damaged_cached_graph_is_traced_again(tiny_pipeline, decoder_with, tmp_path, caplog):
    decoder = decoder_with(tiny_pipeline.decoder.transformer)
    decoder.use_onnxruntime(64, 64, tmp_path)
    (graph,) = tmp_path.iterdir()
    graph.write_bytes(graph.read_bytes()[:1000])  # a disk that filled up under an older version, say
    decoder.onnx_dit = None
    decoder.use_onnxruntime(64, 64, tmp_path)
    assert "tracing them again" in caplog.text and decoder.onnx_dit is not None
    assert graph.stat().st_size > 1000


def test_the_evaluator_times_onnxruntime_against_pytorchs_dit_in_the_same_run(tiny_pipeline, decoder_with, tmp_path,
                                                                             monkeypatch):
    from omnibridge.evaluation.evaluate import measure_speed

    decoder_with(tiny_pipeline.decoder.transformer)
    tiny_pipeline.use_onnxruntime(tmp_path)
    graphs = tiny_pipeline.decoder.onnx_dit
    drawn_with = []
    generate = tiny_pipeline.generate

    def recording_generate(*args, **kwargs):
        drawn_with.append(tiny_pipeline.decoder.onnx_dit)
        return generate(*args, **kwargs)

    monkeypatch.setattr(tiny_pipeline, "generate", recording_generate)
    speed = measure_speed(tiny_pipeline, repeats=1, same_run_repeats=2)
    assert speed["dit_runtime"] == "onnxruntime" and speed["pytorch_dit_image_s"] > 0
    assert drawn_with[-6:] == [graphs, None] * 3  # a warm-up round and two timed ones, interleaved
    assert tiny_pipeline.decoder.onnx_dit is graphs  # put back as it was


def test_a_dit_too_large_for_one_graph_is_neither_copied_nor_traced(tiny_pipeline, decoder_with, tmp_path,
                                                                   monkeypatch):
    decoder_with(tiny_pipeline.decoder.transformer)
    monkeypatch.setattr(onnx_dit, "MAX_WEIGHT_BYTES", 1000)  # as the full-size HunyuanDiT's 6 GB against 2 GB
    monkeypatch.setattr(onnx_dit.copy, "deepcopy", lambda *args: pytest.fail("copied"))
    assert "pass the 2 GB a graph can hold" in tiny_pipeline.use_onnxruntime(tmp_path)
    assert tiny_pipeline.decoder.onnx_dit is None and not any(tmp_path.iterdir())


def test_the_cache_keeps_the_graphs_of_the_most_recently_used_dits_only(tiny_pipeline, decoder_with, tmp_path,
                                                                       monkeypatch):
    import os

    decoder = decoder_with(tiny_pipeline.decoder.transformer)
    for age, key in enumerate(["dit-old-4x8x8", "dit-older-4x8x8"], start=1):  # two earlier checkpoints' graphs
        stale = tmp_path / f"{key}-full.onnx"
        stale.write_bytes(b"graph")
        os.utime(stale, ns=(0, age * -10**9 + 10**12))
    monkeypatch.setattr(onnx_dit, "CACHED_DITS", 2)
    decoder.use_onnxruntime(64, 64, tmp_path)
    kept = sorted(path.name.rsplit("-", 1)[0] for path in tmp_path.iterdir())
    assert len(kept) == 2 and "dit-old-4x8x8" in kept and "dit-older-4x8x8" not in kept


def test_int8_graphs_follow_the_block_cache_and_stay_close_to_pytorch(decoder_with, deeper_dit, tmp_path, onnx_runs,
                                                                      monkeypatch, caplog):
    decoder = decoder_with(deeper_dit)
    expected = _denoise(decoder)
    decoder.use_onnxruntime(64, 64, tmp_path, int8=True)
    assert decoder.dit_runtime == "onnxruntime-int8" and decoder.onnx_dit.precision == "int8"
    assert sorted(path.name.rsplit("-", 1)[1] for path in tmp_path.iterdir()) == [
        "full.onnx", "full_int8.onnx", "reuse.onnx", "reuse_int8.onnx"]  # float32 kept: int8 is made from it
    assert "pre-processing" not in caplog.text  # the quantizer's advice, which these graphs do not need
    onnx_runs.clear()
    got = _denoise(decoder)
    assert onnx_runs == ["full", "full", "full", "reuse", "reuse", "full", "reuse", "reuse"]
    assert not torch.equal(got, expected)  # int8 ran: not PyTorch's float32 numbers ...
    torch.testing.assert_close(got, expected, rtol=0.1, atol=0.1 * float(expected.abs().max()))  # ... but near

    # a restart reads the int8 graphs back: neither traced nor quantized again
    monkeypatch.setattr(OnnxDiT, "_trace", lambda *args: pytest.fail("traced"))
    monkeypatch.setattr(onnx_dit, "_quantized", lambda graph: pytest.fail("quantized"))
    decoder.onnx_dit = None
    decoder.use_onnxruntime(64, 64, tmp_path, int8=True)
    assert decoder.dit_runtime == "onnxruntime-int8"


def test_int8_graphs_that_fail_their_check_leave_float32_serving(decoder_with, tiny_pipeline, tmp_path, monkeypatch,
                                                                 caplog):
    decoder = decoder_with(tiny_pipeline.decoder.transformer)
    monkeypatch.setitem(onnx_dit.MAX_DIFFERENCE, "int8", 0.0)  # as a quantization gone wrong
    decoder.use_onnxruntime(64, 64, tmp_path, int8=True)
    assert decoder.dit_runtime == "onnxruntime"
    assert "int8 graphs cannot be used" in caplog.text and "differs from PyTorch" in caplog.text


def test_the_app_runs_the_dit_in_int8_unless_told_float32(monkeypatch):
    from omnibridge.config import AppSettings

    monkeypatch.delenv("OMNIBRIDGE_DIT_INT8", raising=False)
    assert AppSettings.from_args([]).dit_int8 and not AppSettings.from_args(["--float32-dit"]).dit_int8
    monkeypatch.setenv("OMNIBRIDGE_DIT_INT8", "0")
    assert not AppSettings.from_args([]).dit_int8
