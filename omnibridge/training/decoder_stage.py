"""Stage 0: train the tiny decoder (VAE, then HunyuanDiT with its two text encoders).

This stands in for the pretrained HunyuanDiT that OmniBridge keeps frozen. Recipe, chosen from the
measurements in `shared/research/decoder-feasibility.md`:
- VAE: foreground-weighted MSE + L1 and a tiny KL; latents are then standardised (shift and scale
  stored in the VAE config, as diffusers does for SD3/Flux).
- DiT: v-prediction on a cosine schedule, plain MSE (no min-SNR weighting) with timesteps drawn
  logit-normal towards high noise, where object count and layout are decided; EMA weights;
  10% empty captions for classifier-free guidance; a short curriculum of simple layouts first.
"""

from __future__ import annotations

import copy
import math
import random
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from ..evaluation.generation import VALIDATION_SEED, evaluate_generation, generation_cases
from ..modeling.decoder import HunyuanDecoder
from ..shapes.captions import describe
from ..shapes.detect import image_matches
from ..shapes.render import render_array
from ..shapes.world import BACKGROUND, sample_scene
from .builders import training_noise_schedule
from .common import EMA, StageRun, images_to_tensor, optimizer_step, step_rng
from .decoder_data import sample_decoder_pair
from .presets import DecoderPreset

EARLY_CURRICULUM_STEPS = 800
DEFAULT_GUIDANCE = 2.0
DEFAULT_STEPS = 20


def _foreground_weights(pixels: torch.Tensor) -> torch.Tensor:
    background = torch.tensor(BACKGROUND, dtype=pixels.dtype).view(1, 3, 1, 1) / 127.5 - 1
    is_object = ((pixels - background).abs().sum(1, keepdim=True) > 0.05).float()
    return 1.0 + 4.0 * is_object


def train_vae(decoder: HunyuanDecoder, preset: DecoderPreset, work_dir: Path, seed: int, resume: bool) -> dict:
    vae = decoder.vae.train()
    run = StageRun(work_dir, "vae", preset.vae_steps, resume, seed)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=preset.vae_lr, weight_decay=0.0)
    if run.saved_state:
        vae.load_state_dict(run.saved_state["vae"])
        optimizer.load_state_dict(run.saved_state["optimizer"])
    while run.progress.step < preset.vae_steps:
        rng = step_rng(seed, "vae", run.progress.step)
        pixels = images_to_tensor([render_array(sample_scene(rng)) for _ in range(preset.vae_batch)])
        posterior = vae.encode(pixels).latent_dist
        recon = vae.decode(posterior.sample()).sample
        weights = _foreground_weights(pixels)
        loss = (weights * (recon - pixels) ** 2).mean() + 0.2 * (weights * (recon - pixels).abs()).mean()
        loss = loss + 1e-8 * posterior.kl().mean()
        cosine = 0.5 * (1 + math.cos(math.pi * run.progress.step / preset.vae_steps))
        optimizer_step(optimizer, loss, vae.parameters(), preset.vae_lr * cosine)
        run.tick(preset.vae_batch, loss=loss.item())
        if run.progress.step % 100 == 0:
            run.save(vae=vae.state_dict(), optimizer=optimizer.state_dict())
    vae.eval()
    _standardise_latents(decoder, seed)
    fidelity = vae_fidelity(decoder)
    run.log(event="done", **fidelity)
    run.save(vae=vae.state_dict(), optimizer=optimizer.state_dict())
    return {**run.close(), **fidelity}


@torch.no_grad()
def _standardise_latents(decoder: HunyuanDecoder, seed: int, n: int = 512) -> None:
    rng = random.Random(f"{seed}/vae-stats")
    pixels = images_to_tensor([render_array(sample_scene(rng)) for _ in range(n)])
    latents = decoder.vae.encode(pixels).latent_dist.mode()
    decoder.vae.register_to_config(shift_factor=float(latents.mean()), scaling_factor=float(1.0 / latents.std()))


@torch.no_grad()
def vae_fidelity(decoder: HunyuanDecoder, n: int = 200, seed: int = 7_100_000) -> dict:
    """Share of held-out scenes whose reconstruction the detector reads exactly as the original."""
    rng = random.Random(seed)
    scenes = [sample_scene(rng) for _ in range(n)]
    pixels = images_to_tensor([render_array(s) for s in scenes]).to(decoder.device)
    images = decoder.decode_latents(decoder.encode_images(pixels))
    exact = [image_matches(img, describe(scene)) for img, scene in zip(images, scenes)]
    mse = float(((images_to_tensor([np.asarray(img) for img in images]) - pixels.cpu()) ** 2).mean())
    return {"vae_exact_reconstruction": round(sum(exact) / n, 4), "vae_mse": round(mse, 5)}


def logit_normal_timesteps(batch: int, generator: torch.Generator, num_train_timesteps: int = 1000) -> torch.Tensor:
    u = torch.sigmoid(0.4 + 1.2 * torch.randn(batch, generator=generator))
    return (u * num_train_timesteps).long().clamp(0, num_train_timesteps - 1)


class _Trainable(torch.nn.Module):
    """The decoder parts stage 0 trains together (the VAE is frozen by then)."""

    def __init__(self, decoder: HunyuanDecoder):
        super().__init__()
        self.transformer = decoder.transformer
        self.text_encoder = decoder.text_encoder
        self.text_encoder_2 = decoder.text_encoder_2


def decoder_with(decoder: HunyuanDecoder, **modules: torch.nn.Module) -> HunyuanDecoder:
    """The decoder with some modules swapped (`transformer=...`): a shallow copy, so the rest is shared, with a
    negative-prompt cache of its own (the cached encoding belongs to the text encoders it was made with)."""
    view = copy.copy(decoder)
    for name, module in modules.items():
        setattr(view, name, module)
    view._negative_cache = {}
    return view


def decoder_alone_generator(decoder: HunyuanDecoder, guidance: float = DEFAULT_GUIDANCE, steps: int = DEFAULT_STEPS,
                            sampler: str | None = None, guidance_cutoff: float = 1.0):
    """Prompts -> images through the decoder's own text encoders (the reference path); `sampler` None: the
    decoder's current one."""

    def generate(prompts: list[str], seeds: list[int]):
        size = decoder.sample_size
        latents = decoder.denoise(decoder.encode_captions(prompts), seeds, size, size, steps, guidance,
                                  sampler=sampler, guidance_cutoff=guidance_cutoff)
        return decoder.decode_latents(latents)

    return generate


def dit_learning_rate(step: int, preset: DecoderPreset) -> float:
    """Warm-up, then constant, as long runs resumed in pieces need; a cool-down may close a run. The
    DiT trains at a constant rate so that every resume can go on; a linear decay over its last steps
    (the "warmup-stable-decay" schedule) then settles the weights that constant-rate noise kept moving."""
    lr = preset.dit_lr * min(1.0, (step + 1) / 200)
    if preset.dit_cooldown_steps and preset.dit_steps:
        lr *= min(1.0, max(0.0, (preset.dit_steps - step) / preset.dit_cooldown_steps))
    return lr


class DitBatch(NamedTuple):
    step: int
    pixels: torch.Tensor  # [B, 3, H, W] in [-1, 1]
    captions: list[str]  # "" for the classifier-free-guidance dropout
    noise: torch.Tensor  # [B, C, h, w], the latents' shape
    timesteps: torch.Tensor  # [B]


def dit_batch(preset: DecoderPreset, seed: int, step: int, latent_shape: tuple[int, int, int],
              early_steps: int = EARLY_CURRICULUM_STEPS) -> DitBatch:
    """Step `step`'s training batch, drawn from that step's own seed (on the CPU: the same data on any device).
    The first `early_steps` draw the early mix (decoder_data.py): 0 for a DiT that is trained already."""
    rng = step_rng(seed, "dit", step)
    pairs = [sample_decoder_pair(rng, early=step < early_steps) for _ in range(preset.dit_batch)]
    captions = ["" if rng.random() < preset.caption_dropout else caption for _, caption in pairs]
    pixels = images_to_tensor([render_array(scene) for scene, _ in pairs])
    generator = torch.Generator().manual_seed(rng.randrange(2**31))
    noise = torch.randn((len(pairs), *latent_shape), generator=generator)
    return DitBatch(step, pixels, captions, noise, logit_normal_timesteps(len(pairs), generator))


class DitBatches(torch.utils.data.IterableDataset):
    """The batches from `first_step` on. Worker k of n draws steps first+k, first+k+n, ..., and a
    DataLoader hands workers' batches back in turn, so they arrive in step order: on a GPU, worker
    processes render ahead while the main process keeps the GPU busy."""

    def __init__(self, preset: DecoderPreset, seed: int, first_step: int, latent_shape: tuple[int, int, int],
                 early_steps: int = EARLY_CURRICULUM_STEPS):
        self.preset, self.seed, self.first_step, self.latent_shape = preset, seed, first_step, latent_shape
        self.early_steps = early_steps

    def __iter__(self):
        worker = torch.utils.data.get_worker_info()
        offset, stride = (worker.id, worker.num_workers) if worker else (0, 1)
        step = self.first_step + offset
        while True:
            yield dit_batch(self.preset, self.seed, step, self.latent_shape, self.early_steps)
            step += stride


def _batches(preset: DecoderPreset, seed: int, first_step: int, latent_shape, workers: int,
             early_steps: int = EARLY_CURRICULUM_STEPS):
    dataset = DitBatches(preset, seed, first_step, latent_shape, early_steps)
    loader = torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=workers,
                                         prefetch_factor=4 if workers else None)
    return iter(loader)


def train_dit(decoder: HunyuanDecoder, preset: DecoderPreset, work_dir: Path, seed: int, resume: bool,
              minutes: float | None = None, freeze_text_encoders: bool = False,
              data_workers: int = 0, trained_before: bool = False) -> tuple[HunyuanDecoder, dict]:
    """Train until this run's time budget (or the total step budget) is spent; returns the best EMA decoder.

    The time budget counts from this run's start, so every `--resume` trains that much longer.
    `freeze_text_encoders` trains the DiT alone on the decoder's text encoders as they are (a new
    DiT for an already aligned model); `data_workers` processes render the batches ahead (GPU runs).
    `trained_before`: the DiT comes trained (a run that goes on from a shipped one), so the early
    curriculum, meant for a DiT that starts from nothing, is skipped: its steps count from this run's
    work dir, and a short run on from a trained DiT would otherwise see only the early mix.
    `preset.dit_early_mix_steps`, when set, overrides both (a cool-down that over-samples lone objects).
    """
    budget_seconds = (minutes if minutes is not None else preset.dit_minutes) * 60
    run = StageRun(work_dir, "dit", preset.dit_steps or None, resume, seed)
    seconds_before_this_run = run.progress.seconds
    trainable = _Trainable(decoder).train()
    decoder.vae.requires_grad_(False)
    if freeze_text_encoders:
        for encoder in (trainable.text_encoder, trainable.text_encoder_2):
            encoder.requires_grad_(False).eval()  # eval: no dropout, the conditioning inference will see
    parameters = [p for p in trainable.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=preset.dit_lr, weight_decay=0.01, betas=(0.9, 0.99))
    ema = EMA(trainable)
    if run.saved_state:
        if run.saved_state.get("frozen_text_encoders", False) != freeze_text_encoders:
            raise ValueError(f"{run.state_path} was trained with frozen_text_encoders="
                             f"{not freeze_text_encoders}: resume it the same way (--decoder-from)")
        trainable.load_state_dict(run.saved_state["trainable"])
        optimizer.load_state_dict(run.saved_state["optimizer"])
        ema.load_state_dict(run.saved_state["ema"])
    noise_schedule = training_noise_schedule()
    cases = generation_cases(preset.eval_prompts_per_category, seed=VALIDATION_SEED)  # picks the best EMA
    best_dir = Path(work_dir) / "dit" / "best"
    ema_modules = copy.deepcopy(trainable).eval()

    def out_of_budget() -> bool:
        if preset.dit_steps:
            return run.progress.step >= preset.dit_steps
        return run.progress.seconds - seconds_before_this_run >= budget_seconds

    def save() -> None:
        run.save(trainable=trainable.state_dict(), optimizer=optimizer.state_dict(), ema=ema.state_dict(),
                 frozen_text_encoders=freeze_text_encoders)

    def evaluate_and_keep() -> None:
        run.pause_clock()
        ema.copy_to(ema_modules)
        view = decoder_with(decoder, transformer=ema_modules.transformer, text_encoder=ema_modules.text_encoder,
                            text_encoder_2=ema_modules.text_encoder_2)
        scores = evaluate_generation(decoder_alone_generator(view), cases)
        run.log(event="eval", **scores)
        if scores["overall"] > run.progress.best_metric:
            run.progress.best_metric = scores["overall"]
            torch.save(ema_modules.state_dict(), best_dir.with_suffix(".pt"))
        save()
        run.resume_clock()

    rotary = None
    latent_shape = decoder.latent_shape(preset.image_size, preset.image_size)
    early_steps = preset.dit_early_mix_steps
    if early_steps is None:
        early_steps = 0 if trained_before else EARLY_CURRICULUM_STEPS
    batches = _batches(preset, seed, run.progress.step, latent_shape, data_workers, early_steps)
    while not out_of_budget():
        batch = next(batches)
        assert batch.step == run.progress.step, "batches arrived out of step order"
        with torch.no_grad():
            latents = decoder.encode_images(batch.pixels.to(decoder.device))
        noise, timesteps = batch.noise.to(decoder.device), batch.timesteps.to(decoder.device)
        noisy = noise_schedule.add_noise(latents, noise, timesteps)
        target = noise_schedule.get_velocity(latents, noise, timesteps)
        cond = decoder.encode_captions(batch.captions)
        if rotary is None:
            rotary = decoder._rotary_embedding(latents.shape[-2], latents.shape[-1])
        prediction = decoder.predict(noisy, timesteps.float(), cond, rotary)
        loss = F.mse_loss(prediction, target)
        optimizer_step(optimizer, loss, parameters, dit_learning_rate(batch.step, preset))
        ema.update(trainable)
        run.tick(len(batch.captions), loss=loss.item())
        if preset.eval_every and run.progress.step % preset.eval_every == 0:
            evaluate_and_keep()
        elif run.progress.step % 200 == 0:
            save()
    del batches  # stops the worker processes
    evaluate_and_keep()
    if decoder.device.type == "cuda":  # the model card tells GPU time from CPU time
        run.log(event="done", device=torch.cuda.get_device_name(decoder.device))
    summary = run.close()
    best_path = best_dir.with_suffix(".pt")
    trainable.load_state_dict(torch.load(best_path, map_location="cpu") if best_path.exists() else ema.shadow)
    trainable.eval()
    summary["best_decoder_alone_overall"] = run.progress.best_metric
    return decoder, summary

