"""Step distillation (omnibridge/training/distill_stage.py): its DDIM arithmetic must be exactly diffusers' (the
student samples with diffusers' DDIMScheduler), its target must make one student step land where the teacher's
sub-steps did, and a short run must lower its loss and resume."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from omnibridge.modeling.decoder import make_sampler
from omnibridge.training.builders import training_noise_schedule
from omnibridge.training.decoder_stage import dit_batch
from omnibridge.training.distill_stage import (
    DistillConfig,
    _BatchPreset,
    _Schedule,
    ddim_step,
    distill_dit,
    distillation_example,
    distillation_loss,
    student_timesteps,
    teacher_walk,
    v_landing_at,
)


@pytest.mark.parametrize("steps", [4, 8, 10])
def test_the_student_grid_is_the_one_ddim_samples_on(steps):
    sampler = make_sampler(training_noise_schedule().config, "ddim")
    sampler.set_timesteps(steps)
    grid = student_timesteps(steps)
    assert grid[:-1] == sampler.timesteps.tolist()
    assert grid[-1] == -1  # the last step lands on the clean image


def test_ddim_step_is_diffusers_ddim_step_and_the_target_inverts_it():
    sampler = make_sampler(training_noise_schedule().config, "ddim")
    schedule = _Schedule()
    x, v = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(0)), torch.randn(3, 4, 8, 8)
    start, end = torch.tensor([999, 499, 124]), torch.tensor([874, 374, -1])
    landed = ddim_step(x, v, start, end, schedule)
    for i in range(3):
        sampler.set_timesteps(8)
        expected = sampler.step(v[i:i + 1], int(start[i]), x[i:i + 1]).prev_sample
        torch.testing.assert_close(landed[i:i + 1], expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(v_landing_at(x, landed, start, end, schedule), v, atol=1e-4, rtol=1e-4)


def _example_inputs(decoder, config):
    latent_shape = decoder.latent_shape(decoder.sample_size, decoder.sample_size)
    rotary = decoder._rotary_embedding(latent_shape[1], latent_shape[2])
    batch = dit_batch(_BatchPreset(config.batch, 0.0), 3, 0, latent_shape, early_steps=0)
    return batch, rotary


def test_one_unguided_teacher_substep_is_one_ddim_step_of_the_teacher(tiny_model):
    decoder = tiny_model.decoder
    config = DistillConfig(teacher_substeps=1, guidance_scale=1.0, batch=3)
    batch, rotary = _example_inputs(decoder, config)
    schedule = _Schedule()
    x = torch.randn(3, *decoder.latent_shape(decoder.sample_size, decoder.sample_size))
    start, end = torch.tensor([999, 624, 124]), torch.tensor([874, 499, -1])
    cond = decoder.encode_captions(batch.captions)
    walked = teacher_walk(decoder, x, start, end, cond, decoder.negative_encoding(), config, schedule, rotary)
    with torch.no_grad():
        v = decoder.predict(x, start.float(), cond, rotary)
    torch.testing.assert_close(walked, ddim_step(x, v, start, end, schedule))


def test_the_teacher_guides_only_the_high_noise_substeps(tiny_model):
    decoder = tiny_model.decoder
    schedule = _Schedule()
    batch, rotary = _example_inputs(decoder, DistillConfig(batch=2))
    x = torch.randn(2, *decoder.latent_shape(decoder.sample_size, decoder.sample_size))
    start, end = torch.tensor([999, 249]), torch.tensor([874, 124])
    cond, negative = decoder.encode_captions(batch.captions), decoder.negative_encoding()
    guided = teacher_walk(decoder, x, start, end, cond, negative,
                          DistillConfig(teacher_substeps=2, guidance_scale=3.0), schedule, rotary)
    unguided = teacher_walk(decoder, x, start, end, cond, negative,
                            DistillConfig(teacher_substeps=2, guidance_scale=1.0), schedule, rotary)
    assert not torch.allclose(guided[0], unguided[0])  # 999 -> 874 is above guided_from
    torch.testing.assert_close(guided[1], unguided[1])  # 249 -> 124 is not


def test_distillation_lowers_its_loss_and_resumes(tiny_model, tmp_path):
    teacher = copy.deepcopy(tiny_model.decoder)  # distill_dit freezes the teacher's modules
    config = DistillConfig(batch=4, lr=3e-3, max_steps=30, eval_every=1000, eval_prompts_per_category=1)
    batch, rotary = _example_inputs(teacher, config)
    example = distillation_example(teacher, batch, config, 5, 0, _Schedule(), teacher.negative_encoding(), rotary)
    with torch.no_grad():
        before = distillation_loss(teacher, teacher.transformer, example, rotary).item()

    student, summary = distill_dit(teacher, config, tmp_path, seed=5, resume=False)
    with torch.no_grad():
        after = distillation_loss(teacher, student, example, rotary).item()
    assert summary["steps"] == 30
    assert after < 0.7 * before, (before, after)

    resumed, summary = distill_dit(teacher, DistillConfig(**{**vars(config), "max_steps": 35}), tmp_path, seed=5,
                                   resume=True)
    assert summary["steps"] == 35
    logged = [json.loads(line) for line in (tmp_path / "distill" / "log.jsonl").read_text().splitlines()]
    assert [row["step"] for row in logged if row.get("event") == "eval"] == [0, 30, 35]
