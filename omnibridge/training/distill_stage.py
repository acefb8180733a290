"""Step distillation of the DiT: a student that draws in N deterministic steps what the teacher draws in k*N.

The image's time is the DiT's calls (docs/performance-notes.md), and no sampler reaches the teacher's accuracy
in fewer calls: the sampling ODE is already solved at 15-20 steps. So the DiT itself is taught to take longer
steps. This is one round of progressive distillation (Salimans & Ho, 2022, with k:1 instead of 2:1), in the
v-parameterisation the DiT is trained in:

- a training latent is noised to a point t_i of the student's N-step DDIM grid (trailing spacing, as sampling
  uses);
- the teacher, frozen, walks from there to the next grid point t_{i+1} in k DDIM sub-steps, guided as the
  model's default sampling guides (classifier-free guidance at `guidance_scale` on the high-noise steps only),
  so the student needs no guidance: one batch-one call per step;
- the student is taught the one v that makes a single DDIM step land where the teacher did.

The text encoders and the VAE stay frozen, so the student replaces the teacher's transformer alone
(scripts/swap_dit.py builds and evaluates a model folder with it).
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F

from ..evaluation.generation import VALIDATION_SEED, evaluate_generation, generation_cases
from ..modeling.decoder import CaptionEncoding, HunyuanDecoder
from .builders import training_noise_schedule
from .common import EMA, StageRun, optimizer_step
from .decoder_stage import decoder_alone_generator, decoder_with, dit_batch


@dataclass
class DistillConfig:
    student_steps: int = 8
    teacher_substeps: int = 4  # the teacher's DDIM steps per student step
    guidance_scale: float = 2.0
    guided_from: int = 700  # the teacher guides timesteps >= this: the default (UniPC @15, cutoff 0.3) guides 999-732
    batch: int = 64
    lr: float = 1e-4
    minutes: float = 60.0
    max_steps: int = 0  # > 0: stop after this many steps instead of `minutes` (tests)
    ema_decay: float = 0.99
    eval_every: int = 100
    eval_prompts_per_category: int = 25
    caption_dropout: float = 0.1


@dataclass
class _BatchPreset:
    """What `dit_batch` reads from a decoder preset."""

    dit_batch: int
    caption_dropout: float


def student_timesteps(steps: int, num_train_timesteps: int = 1000) -> list[int]:
    """The student's grid, as diffusers' DDIM with trailing spacing walks it, ending at -1 (the clean image)."""
    ratio = num_train_timesteps // steps
    grid = [int(round(t)) - 1 for t in torch.arange(num_train_timesteps, 0, -num_train_timesteps / steps).tolist()]
    return grid + [grid[-1] - ratio]


class _Schedule:
    """alpha_t and sigma_t of the training noise schedule, with t = -1 meaning the clean image."""

    def __init__(self):
        self.alphas_cumprod = training_noise_schedule().alphas_cumprod.double()

    def __call__(self, t: torch.Tensor, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        t = t.cpu()
        alpha_bar = torch.where(t >= 0, self.alphas_cumprod[t.clamp(min=0)], torch.ones((), dtype=torch.float64))
        return (alpha_bar.sqrt().float().view(-1, 1, 1, 1).to(device),
                (1 - alpha_bar).sqrt().float().view(-1, 1, 1, 1).to(device))


def ddim_step(x: torch.Tensor, v: torch.Tensor, t: torch.Tensor, s: torch.Tensor, schedule: _Schedule) -> torch.Tensor:
    """x_t -> x_s, deterministically, for a v-prediction model."""
    alpha_t, sigma_t = schedule(t, x.device)
    alpha_s, sigma_s = schedule(s, x.device)
    clean = alpha_t * x - sigma_t * v
    noise = sigma_t * x + alpha_t * v
    return alpha_s * clean + sigma_s * noise


def v_landing_at(x_t: torch.Tensor, x_s: torch.Tensor, t: torch.Tensor, s: torch.Tensor,
                 schedule: _Schedule) -> torch.Tensor:
    """The v for which one DDIM step from (x_t, t) lands on x_s at s: the student's target."""
    alpha_t, sigma_t = schedule(t, x_t.device)
    alpha_s, sigma_s = schedule(s, x_t.device)
    ratio = sigma_s / sigma_t
    clean = (x_s - ratio * x_t) / (alpha_s - ratio * alpha_t)
    return (alpha_t * x_t - clean) / sigma_t


@torch.no_grad()
def teacher_walk(teacher: HunyuanDecoder, x: torch.Tensor, start: torch.Tensor, end: torch.Tensor,
                 cond: CaptionEncoding, negative: CaptionEncoding, config: DistillConfig, schedule: _Schedule,
                 rotary) -> torch.Tensor:
    """The teacher's k DDIM sub-steps from `start` to `end` (per sample), guided where the default guides."""
    k = config.teacher_substeps
    for j in range(k):
        t = (start - (start - end) * j / k).round().long()
        s = (start - (start - end) * (j + 1) / k).round().long()
        timesteps = t.float().to(x.device)
        v = teacher.predict(x, timesteps, cond, rotary)
        guided = ((t >= config.guided_from) & (config.guidance_scale > 1.0)).to(x.device)
        if guided.any():
            index = guided.nonzero().squeeze(1)
            uncond = teacher.predict(x[index], timesteps[index], negative.repeat(len(index)), rotary)
            v[index] = uncond + config.guidance_scale * (v[index] - uncond)
        x = ddim_step(x, v, t, s, schedule)
    return x


class DistillationExample(NamedTuple):
    noisy: torch.Tensor  # x at the grid point `start`
    start: torch.Tensor  # [B] the student's timesteps
    cond: CaptionEncoding
    target: torch.Tensor  # the v that lands where the teacher did


def distillation_example(teacher: HunyuanDecoder, batch, config: DistillConfig, seed: int, step: int,
                         schedule: _Schedule, negative: CaptionEncoding, rotary) -> DistillationExample:
    """A decoder training batch (`dit_batch`) turned into the student's inputs and targets: each latent is
    noised to a random point of the student's grid, and the teacher walks it to the next one."""
    grid = torch.tensor(student_timesteps(config.student_steps))
    generator = torch.Generator().manual_seed(seed * 1_000_003 + step)
    index = torch.randint(0, config.student_steps, (len(batch.captions),), generator=generator)
    start, end = grid[index], grid[index + 1]
    with torch.no_grad():
        clean = teacher.encode_images(batch.pixels.to(teacher.device))
        alpha, sigma = schedule(start, clean.device)
        noisy = alpha * clean + sigma * batch.noise.to(clean.device)
        cond = teacher.encode_captions(batch.captions)
        landing = teacher_walk(teacher, noisy, start, end, cond, negative, config, schedule, rotary)
        target = v_landing_at(noisy, landing, start, end, schedule)
    return DistillationExample(noisy, start, cond, target)


def distillation_loss(teacher: HunyuanDecoder, student: torch.nn.Module, example: DistillationExample,
                      rotary) -> torch.Tensor:
    timesteps = example.start.float().to(example.noisy.device)
    prediction = decoder_with(teacher, transformer=student).predict(example.noisy, timesteps, example.cond, rotary)
    return F.mse_loss(prediction, example.target)


def student_generator(decoder: HunyuanDecoder, student: torch.nn.Module, steps: int):
    """Prompts -> images with a distilled DiT: DDIM at its own step count, unguided (the guidance is learnt)."""
    return decoder_alone_generator(decoder_with(decoder, transformer=student), guidance=1.0, steps=steps,
                                   sampler="ddim")


def distill_dit(teacher: HunyuanDecoder, config: DistillConfig, work_dir: Path, seed: int,
                resume: bool) -> tuple[torch.nn.Module, dict]:
    """Train a student copy of the teacher's transformer for `config.minutes` (counted per run, so every
    `resume` trains that much longer); returns the best EMA student by the 150 validation prompts."""
    run = StageRun(work_dir, "distill", None, resume, seed)
    seconds_before_this_run = run.progress.seconds
    for module in teacher.modules().values():
        module.requires_grad_(False).eval()
    student = copy.deepcopy(teacher.transformer).train().requires_grad_(True)
    optimizer = torch.optim.AdamW(student.parameters(), lr=config.lr, weight_decay=0.0, betas=(0.9, 0.99))
    ema = EMA(student, max_decay=config.ema_decay)
    if run.saved_state:
        student.load_state_dict(run.saved_state["student"])
        optimizer.load_state_dict(run.saved_state["optimizer"])
        ema.load_state_dict(run.saved_state["ema"])
    ema_student = copy.deepcopy(student).eval().requires_grad_(False)
    schedule = _Schedule()
    negative = teacher.negative_encoding()
    latent_shape = teacher.latent_shape(teacher.sample_size, teacher.sample_size)
    rotary = teacher._rotary_embedding(latent_shape[1], latent_shape[2])
    cases = generation_cases(config.eval_prompts_per_category, seed=VALIDATION_SEED)
    best_path = Path(work_dir) / "distill" / "best.pt"
    # the decoder's batches, at this stage's own batch size and dropout; their timesteps are not used
    batch_preset = _BatchPreset(config.batch, config.caption_dropout)

    def save() -> None:
        run.save(student=student.state_dict(), optimizer=optimizer.state_dict(), ema=ema.state_dict())

    def evaluate_and_keep() -> None:
        run.pause_clock()
        ema.copy_to(ema_student)
        scores = evaluate_generation(student_generator(teacher, ema_student, config.student_steps), cases)
        run.log(event="eval", **scores)
        print(json.dumps({"step": run.progress.step, "overall": scores["overall"]}), flush=True)
        if scores["overall"] >= run.progress.best_metric:  # a tie: the more distilled one
            run.progress.best_metric = scores["overall"]
            torch.save(ema_student.state_dict(), best_path)
        save()
        run.resume_clock()

    def share_of_budget_spent() -> float:
        if config.max_steps:
            return run.progress.step / config.max_steps
        return (run.progress.seconds - seconds_before_this_run) / (config.minutes * 60)

    if run.progress.step == 0:
        evaluate_and_keep()  # the teacher's weights at the student's steps: what distillation starts from
    while share_of_budget_spent() < 1.0:
        batch = dit_batch(batch_preset, seed, run.progress.step, latent_shape, early_steps=0)
        example = distillation_example(teacher, batch, config, seed, run.progress.step, schedule, negative, rotary)
        loss = distillation_loss(teacher, student, example, rotary)
        # a short warm-up, then a cosine to zero over this run's budget (a resumed run starts a new cycle)
        warmup = min(1.0, (run.progress.step + 1) / 50)
        lr = config.lr * warmup * 0.5 * (1 + math.cos(math.pi * min(1.0, share_of_budget_spent())))
        optimizer_step(optimizer, loss, list(student.parameters()), lr)
        ema.update(student)
        run.tick(len(batch.captions), loss=loss.item())
        if run.progress.step % config.eval_every == 0:
            evaluate_and_keep()
    evaluate_and_keep()
    summary = run.close()
    student.load_state_dict(torch.load(best_path, map_location="cpu"))
    summary["best_validation_overall"] = run.progress.best_metric
    return student.eval(), summary

