"""Generation: seconds per image through the pipeline vs a bare diffusers denoising loop, and with the DiT under
ONNX Runtime in int8 (the app's default on a CPU) vs in float32 and in PyTorch."""

from __future__ import annotations

import tempfile

import torch

from .harness import RequestThreads, Result, Timing, ratio

PROMPT = "a red circle to the left of a blue square"


def bare_loop(decoder, caption: str, steps: int, guidance: float, size: int, seed: int = 0,
              guidance_cutoff: float = 1.0, cache_interval: int = 1):
    """The same components called directly, as a diffusers user would write it (guiding the first
    `guidance_cutoff` share of the steps and reusing the middle blocks as `cache_interval` says, as the
    pipeline does, so that both do the same work)."""
    import math

    from diffusers.models.embeddings import get_2d_rotary_pos_embed

    from omnibridge.modeling.block_cache import MiddleBlockCache
    from omnibridge.modeling.decoder import get_resize_crop_region_for_grid

    transformer, vae, scheduler = decoder.transformer, decoder.vae, decoder.scheduler
    with torch.inference_mode(), MiddleBlockCache(transformer) as block_cache:
        cond = decoder.encode_captions([caption])
        negative = decoder.encode_captions([""])
        embeds = torch.cat([negative.embeds, cond.embeds])
        mask = torch.cat([negative.mask, cond.mask])
        embeds_2 = torch.cat([negative.embeds_2, cond.embeds_2])
        mask_2 = torch.cat([negative.mask_2, cond.mask_2])
        latent = size // decoder.vae_scale_factor
        patch = transformer.config.patch_size
        grid = (latent // patch, latent // patch)
        rotary = get_2d_rotary_pos_embed(transformer.inner_dim // transformer.num_heads,
                                         get_resize_crop_region_for_grid(grid, decoder.rope_base_size), grid,
                                         output_type="pt")
        latents = torch.randn(1, transformer.config.in_channels, latent, latent,
                              generator=torch.Generator().manual_seed(seed))
        scheduler.set_timesteps(steps)
        latents = latents * scheduler.init_noise_sigma
        guided_steps = math.ceil(steps * guidance_cutoff) if guidance > 1.0 else 0
        for step, t in enumerate(scheduler.timesteps):
            if step == guided_steps:  # the caption's branch alone from here on
                embeds, mask, embeds_2, mask_2 = embeds[1:], mask[1:], embeds_2[1:], mask_2[1:]
            model_input = torch.cat([latents] * len(embeds))
            model_input = scheduler.scale_model_input(model_input, t)
            block_cache.prepare(step, guided_steps, cache_interval, len(model_input))
            out = transformer(model_input, torch.full((len(embeds),), float(t)), encoder_hidden_states=embeds,
                              text_embedding_mask=mask, encoder_hidden_states_t5=embeds_2,
                              text_embedding_mask_t5=mask_2, image_rotary_emb=rotary, return_dict=False)[0]
            out = out[:, : latents.shape[1]]
            if len(embeds) == 2:
                uncond, text = out.chunk(2)
                out = uncond + guidance * (text - uncond)
            latents = scheduler.step(out, t, latents, return_dict=False)[0]
        shift = getattr(vae.config, "shift_factor", None) or 0.0
        return vae.decode(latents / vae.config.scaling_factor + shift).sample


def run(pipe, repeats: int = 5) -> Result:
    defaults = pipe.config.generation
    steps, guidance, size = defaults.num_inference_steps, defaults.guidance_scale, defaults.height
    cutoff, interval = defaults.guidance_cutoff, defaults.cache_interval
    with tempfile.TemporaryDirectory() as cache_dir:
        # as the app does (None when in use), but on the model thread: a second OpenMP team would skew the timings
        float32_unavailable = pipe.run_job(lambda: pipe.use_onnxruntime(cache_dir))
        float32_graphs = pipe.decoder.onnx_dit
        onnx_unavailable = pipe.run_job(lambda: pipe.use_onnxruntime(cache_dir, int8=True))
    runtime = pipe.decoder.dit_runtime
    onnx_dit = pipe.decoder.onnx_dit
    requests = RequestThreads()  # the pipeline is asked from request threads, as in the app

    def with_dit(graphs, call):
        def timed():
            pipe.decoder.onnx_dit = graphs
            try:
                return call()
            finally:
                pipe.decoder.onnx_dit = onnx_dit
        return timed

    try:
        timings = _timings(pipe, requests, with_dit, float32_graphs, steps, guidance, size, cutoff, interval, repeats)
    finally:
        pipe.decoder.onnx_dit = None  # the other benchmarks time the pipeline as loaded
    return _result(timings, defaults, runtime if onnx_unavailable is None else f"pytorch ({onnx_unavailable})",
                   float32_unavailable)


def _timings(pipe, requests, with_dit, float32_graphs, steps, guidance, size, cutoff, interval,
             repeats) -> dict[str, Timing]:
    return Timing.interleaved({
        "full": requests(lambda: pipe.generate(PROMPT, seed=0)),
        # the same with the DiT in PyTorch: the baseline of ONNX Runtime's speed-up, and the pipeline's side of
        # the overhead against the bare loop (which runs PyTorch's DiT)
        "full_pytorch": requests(with_dit(None, lambda: pipe.generate(PROMPT, seed=0))),
        # ONNX Runtime in float32: what int8 buys, against PyTorch's pixels at ONNX Runtime's speed
        "full_float32": requests(with_dit(float32_graphs, lambda: pipe.generate(PROMPT, seed=0))),
        "no_rewrite_pytorch": requests(with_dit(None, lambda: pipe.generate(PROMPT, rewrite=False, seed=0))),
        "no_rewrite": requests(lambda: pipe.generate(PROMPT, rewrite=False, seed=0)),
        # on the pipeline's model thread, where its own jobs run (the same OpenMP team)
        "bare": lambda: pipe.run_job(lambda: bare_loop(pipe.decoder, PROMPT, steps, guidance, size,
                                                       guidance_cutoff=cutoff, cache_interval=interval)),
        # what the model's block reuse saves: the same loop running every block on every step
        "bare_every_block": lambda: pipe.run_job(lambda: bare_loop(pipe.decoder, PROMPT, steps, guidance, size,
                                                                   guidance_cutoff=cutoff)),
        # what the model's guidance cutoff saves: the same loop guiding every step (every block too)
        "bare_every_step_guided": lambda: pipe.run_job(lambda: bare_loop(pipe.decoder, PROMPT, steps, guidance,
                                                                         size)),
        "four": requests(lambda: pipe.generate(PROMPT, rewrite=False, seed=0, num_images=4)),
        # the self-check draws 4 and keeps 1: its own cost is the rating, against 4 images drawn
        "self_check_4": requests(lambda: pipe.generate(PROMPT, rewrite=False, seed=0, candidates=4)),
    }, repeats)


def _result(timings: dict[str, Timing], defaults, runtime: str, float32_unavailable: str | None) -> Result:
    full, no_rewrite, bare, four, checked, every_step, every_block, full_pytorch, no_rewrite_pytorch = (
        timings[k] for k in ("full", "no_rewrite", "bare", "four", "self_check_4", "bare_every_step_guided",
                             "bare_every_block", "full_pytorch", "no_rewrite_pytorch"))
    full_float32 = timings["full_float32"]
    figures = {
        "steps": defaults.num_inference_steps, "guidance": defaults.guidance_scale,
        "guidance_cutoff": defaults.guidance_cutoff, "cache_interval": defaults.cache_interval,
        "size": defaults.height, "sampler": defaults.sampler,
        "dit_runtime": runtime,
        "image_s": full.median_s, "image_no_rewrite_s": no_rewrite.median_s, "bare_loop_s": bare.median_s,
        "image_pytorch_s": full_pytorch.median_s, "image_no_rewrite_pytorch_s": no_rewrite_pytorch.median_s,
        "onnxruntime_vs_pytorch": ratio(full.median_s, full_pytorch.median_s),
        "image_float32_s": full_float32.median_s if float32_unavailable is None else None,
        "int8_vs_float32": ratio(full.median_s, full_float32.median_s) if float32_unavailable is None else None,
        "float32_vs_pytorch": ratio(full_float32.median_s, full_pytorch.median_s),
        "bare_loop_every_step_guided_s": every_step.median_s, "bare_loop_every_block_s": every_block.median_s,
        "guidance_cutoff_vs_every_step_guided": ratio(every_block.median_s, every_step.median_s),
        "cache_interval_vs_every_block": ratio(bare.median_s, every_block.median_s),
        # the same DiT runtime on both sides (PyTorch): what the pipeline itself adds
        "overhead_vs_bare": ratio(no_rewrite_pytorch.median_s, bare.median_s),
        "overhead_with_rewrite_vs_bare": ratio(full_pytorch.median_s, bare.median_s),
        "four_images_s": four.median_s, "per_image_in_batch_of_4_s": round(four.median_s / 4, 4),
        "self_check_4_s": checked.median_s, "self_check_4_vs_four_images": ratio(checked.median_s, four.median_s),
        "spread_s": [full.min_s, full.max_s],
    }
    summary = (f"generate: {full.median_s:.3f} s/image with rewrite ({no_rewrite.median_s:.3f} s without), DiT in "
               f"{figures['dit_runtime']}; x{figures['int8_vs_float32']} the {full_float32.median_s:.3f} s in "
               f"float32 and x{figures['onnxruntime_vs_pytorch']} the {full_pytorch.median_s:.3f} s with PyTorch's "
               f"DiT; PyTorch pipeline vs bare diffusers loop {bare.median_s:.3f} s -> overhead "
               f"x{figures['overhead_vs_bare']}")
    return Result("generate", figures, summary, goal="overhead <= 1.10x; <= 0.3 s per 64x64 image")
