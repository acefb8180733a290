"""Reusing the DiT's middle blocks between denoising steps (block_cache.py, `cache_interval`)."""

from __future__ import annotations

import functools
import numpy as np
import pytest
import torch

from omnibridge.modeling.block_cache import MiddleBlockCache


def _dit_inputs(tiny_pipeline, seed: int):
    decoder = tiny_pipeline.decoder
    cond = tiny_pipeline._condition(["a red circle"])
    latents = decoder.initial_latents([seed], 64, 64)
    return latents, torch.full((1,), 500.0), cond


def _call(decoder, transformer, inputs):
    latents, t, cond = inputs
    decoder_transformer, decoder.transformer = decoder.transformer, transformer
    try:
        return decoder.predict(latents, t, cond)
    finally:
        decoder.transformer = decoder_transformer


def test_a_reused_step_runs_only_the_outer_blocks_and_on_the_same_input_matches_a_full_one(
        tiny_pipeline, deeper_dit, block_calls):
    decoder = tiny_pipeline.decoder
    inputs = _dit_inputs(tiny_pipeline, seed=1)
    with torch.inference_mode(), MiddleBlockCache(deeper_dit) as cache:
        full = _call(decoder, deeper_dit, inputs)
        assert len(block_calls) == 6
        cache.reuse = True
        reused = _call(decoder, deeper_dit, inputs)
        assert block_calls[6:] == [deeper_dit.blocks[0], deeper_dit.blocks[5]]
        # the residual of blocks 1-4 is exact for the input it was computed on
        torch.testing.assert_close(reused, full, rtol=1e-5, atol=1e-5)
        # on another input the reused residual is stale: an approximation, not the full step
        other = _dit_inputs(tiny_pipeline, seed=2)
        approximate = _call(decoder, deeper_dit, other)
        cache.reuse = False
        exact = _call(decoder, deeper_dit, other)
    assert not torch.allclose(approximate, exact)
    assert torch.isfinite(approximate).all()


def test_leaving_the_cache_restores_the_blocks(tiny_pipeline, deeper_dit):
    keys = list(deeper_dit.state_dict())
    inputs = _dit_inputs(tiny_pipeline, seed=1)
    with torch.inference_mode():
        before = _call(tiny_pipeline.decoder, deeper_dit, inputs)
        with MiddleBlockCache(deeper_dit) as cache:
            _call(tiny_pipeline.decoder, deeper_dit, inputs)
            cache.reuse = True
        after = _call(tiny_pipeline.decoder, deeper_dit, _dit_inputs(tiny_pipeline, seed=3))
        again = _call(tiny_pipeline.decoder, deeper_dit, inputs)
    assert all("forward" not in vars(block) for block in deeper_dit.blocks)
    assert list(deeper_dit.state_dict()) == keys
    assert torch.equal(before, again) and not torch.equal(before, after)


def test_leaving_the_cache_gives_back_a_blocks_own_forward(tiny_pipeline, deeper_dit, block_calls):
    own = functools.partial(type(deeper_dit.blocks[2]).forward, deeper_dit.blocks[2])  # as compile_blocks binds
    deeper_dit.blocks[2].forward = own
    with torch.inference_mode(), MiddleBlockCache(deeper_dit):
        _call(tiny_pipeline.decoder, deeper_dit, _dit_inputs(tiny_pipeline, seed=1))
    assert vars(deeper_dit.blocks[2])["forward"] is own
    assert "forward" not in vars(deeper_dit.blocks[1])
    assert block_calls.count(deeper_dit.blocks[2]) == 1


def test_compiled_blocks_keep_block_reuse_and_draw_the_same_image(tiny_pipeline, deeper_dit, block_calls,
                                                                   monkeypatch):
    monkeypatch.setattr(tiny_pipeline.decoder, "transformer", deeper_dit)
    monkeypatch.setattr(tiny_pipeline.config.generation, "guidance_cutoff", 0.0)
    monkeypatch.setattr(tiny_pipeline.config.generation, "cache_interval", 3)
    settings = dict(rewrite=False, seed=2, num_inference_steps=6, guidance_scale=3.0)
    eager = tiny_pipeline.generate("a red circle", **settings).images[0]
    keys = list(deeper_dit.state_dict())
    # dynamo's "eager" backend traces and runs the graphs without a C++ compiler: the wiring, in seconds
    tiny_pipeline.compile(backend="eager")
    block_calls.clear()
    compiled = tiny_pipeline.generate("a red circle", **settings).images[0]
    assert block_calls.count(deeper_dit.blocks[2]) == 2  # steps 0 and 3: the middle blocks were still reused
    assert block_calls.count(deeper_dit.blocks[0]) == 6
    assert np.array_equal(np.asarray(compiled), np.asarray(eager))
    assert all(isinstance(vars(block)["forward"], functools.partial) for block in deeper_dit.blocks)
    assert list(deeper_dit.state_dict()) == keys
    torch._dynamo.reset()


def test_denoise_runs_every_block_on_the_guided_steps_and_every_nth_step_after(
        tiny_pipeline, deeper_dit, block_calls, monkeypatch):
    decoder = tiny_pipeline.decoder
    monkeypatch.setattr(decoder, "transformer", deeper_dit)
    cond = tiny_pipeline._condition(["a red circle"])
    middle = deeper_dit.blocks[2]

    def denoise(interval, cutoff=0.3):
        block_calls.clear()
        latents = decoder.denoise(cond, [4], 64, 64, 7, 3.0, guidance_cutoff=cutoff, cache_interval=interval)
        return latents, block_calls.count(middle)

    plain, full_steps = denoise(1)
    assert full_steps == 7
    # 7 steps, the first ceil(2.1) = 3 guided; then steps 3 and 5 in full, 4 and 6 reusing
    cached, full_steps = denoise(2)
    assert full_steps == 5
    assert denoise(3)[1] == 3 + 2  # steps 3 and 6
    assert denoise(2, cutoff=0.0)[1] == 4  # unguided: steps 0, 2, 4, 6
    assert torch.equal(plain, decoder.denoise(cond, [4], 64, 64, 7, 3.0, guidance_cutoff=0.3))
    assert not torch.equal(plain, cached)
    assert all("forward" not in vars(block) for block in deeper_dit.blocks)


def test_the_models_cache_interval_is_used_and_recorded(tiny_pipeline, deeper_dit, block_calls, monkeypatch):
    monkeypatch.setattr(tiny_pipeline.decoder, "transformer", deeper_dit)
    monkeypatch.setattr(tiny_pipeline.config.generation, "guidance_cutoff", 0.0)  # the quick preset guides all
    settings = dict(rewrite=False, seed=2, num_inference_steps=6, guidance_scale=3.0)
    every_step = tiny_pipeline.generate("a red circle", **settings)
    assert block_calls.count(deeper_dit.blocks[2]) == 6
    block_calls.clear()
    monkeypatch.setattr(tiny_pipeline.config.generation, "cache_interval", 3)
    reused = tiny_pipeline.generate("a red circle", **settings)
    assert block_calls.count(deeper_dit.blocks[2]) == 2  # steps 0 and 3
    assert (every_step.parameters["cache_interval"], reused.parameters["cache_interval"]) == (1, 3)
    block_calls.clear()
    edit = lambda: tiny_pipeline.edit(every_step.images[0], "make the circle blue", seed=1, num_inference_steps=6)
    assert edit().parameters["cache_interval"] == 1  # edits keep every block unless edit_cache_interval says so
    assert block_calls.count(deeper_dit.blocks[2]) == block_calls.count(deeper_dit.blocks[0])
    block_calls.clear()
    monkeypatch.setattr(tiny_pipeline.config.generation, "edit_cache_interval", 2)
    assert edit().parameters["cache_interval"] == 2
    assert 0 < block_calls.count(deeper_dit.blocks[2]) < block_calls.count(deeper_dit.blocks[0])
