"""`python -m benchmarks.gpu_check`: the full-size OmniBridge path on a GPU, with random weights.

No weights can be downloaded, so the architecture is built at full size on the meta device and
materialised directly on the GPU with random values: a Qwen2-VL-7B-shaped LLM (bf16), the 24-layer
BiLM with its retrieval heads, and a HunyuanDiT-v1.2-shaped decoder (DiT-g/2, SDXL VAE, BERT and
mT5-XL encoders; fp16). It times chat tokens/s, one 1024x1024 image at 25 DPM-Solver++ steps
against 100 DDPM steps (the official setting) and against the built-in model's cheaper steps (guidance on
the first 30%, then every block on 1 unguided step in 3: block_cache.py), embeddings/s and peak GPU memory,
and prints one JSON line. With `--max-gpu-memory GB` it then times a 24 GB card's use of the model on this one: an
image and an answer about a picture, with the whole model on the card and with model offload at that
budget (offload.py), their peak memory and what moved. With `--quantize 8bit|4bit` the LLM is quantized
as `--quantize` loads it (bitsandbytes), so the same figures show what that saves and costs. `--tiny` runs
the same script at toy sizes on any device (the tests use it).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import tempfile
import time

import torch

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def full_sizes(tiny: bool) -> dict:
    if tiny:  # widths of 64 at least: bitsandbytes' 4-bit path on a CPU quantizes in blocks of 64 inputs
        return dict(llm=dict(hidden=64, layers=2, heads=4, kv=2, inter=128, vocab=512, vis_depth=1, vis_dim=64,
                             vis_heads=2),
                    bilm=dict(d=64, layers=3, heads=4, d_ff=96, cross=(0, 2), queries=16),
                    retrieval=dict(image=8, text=6, dim=32),
                    dit=dict(heads=2, head_dim=16, layers=4, sample=16, text_len=8, text_len_t5=16, mlp=2.0),
                    vae=(32, 32, 32, 32), bert=dict(hidden=32, layers=1, heads=2, vocab=512),
                    t5=dict(d=64, d_kv=16, heads=4, d_ff=96, layers=1, vocab=512), size=128, image=112)
    return dict(llm=dict(hidden=3584, layers=28, heads=28, kv=4, inter=18944, vocab=152064, vis_depth=32,
                         vis_dim=1280, vis_heads=16),
                bilm=dict(d=2048, layers=24, heads=32, d_ff=5120, cross=(0, 2, 4, 8, 12, 16, 20), queries=256),
                retrieval=dict(image=128, text=96, dim=1024),
                dit=dict(heads=16, head_dim=88, layers=40, sample=128, text_len=77, text_len_t5=256, mlp=4.3637),
                vae=(128, 256, 512, 512), bert=dict(hidden=1024, layers=24, heads=16, vocab=47020),
                t5=dict(d=2048, d_kv=64, heads=32, d_ff=5120, layers=24, vocab=250112), size=1024, image=448)


def _random_init(module: torch.nn.Module) -> None:
    """Small random weights (std 0.02), unit norms, zero biases: finite activations for timing."""
    with torch.no_grad():
        for name, parameter in module.named_parameters():
            if parameter.dim() == 1:
                parameter.fill_(1.0 if "norm" in name or name.endswith("weight") else 0.0)
            else:
                parameter.normal_(0.0, 0.02)
        for name, buffer in module.named_buffers():
            if buffer.is_floating_point() and not torch.isfinite(buffer).all():
                buffer.zero_()


def materialise(build, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """Build on the meta device (no host memory), allocate on `device`, then fill: weights random,
    and the buffers a constructor computes (positions, rotary frequencies) computed again."""
    with torch.device("meta"):
        module = build()
    module = module.to_empty(device=device).to(dtype)
    _random_init(module)
    with torch.no_grad():
        for name, buffer in module.named_buffers():
            leaf = name.rsplit(".", 1)[-1]
            if leaf == "position_ids":
                buffer.copy_(torch.arange(buffer.shape[-1], device=device).expand_as(buffer))
            elif leaf == "token_type_ids":
                buffer.zero_()
        for submodule in module.modules():
            if hasattr(submodule, "inv_freq") and hasattr(submodule, "config"):
                fresh = type(submodule)(submodule.config)  # tiny: just the frequency table
                submodule.inv_freq = fresh.inv_freq.to(device)
                submodule.original_inv_freq = fresh.original_inv_freq.to(device)
    return module.eval()


def build_llm(llm_config, device: torch.device, where):
    """The random Qwen2-VL, on the device; quantized, it goes through the loader `--quantize` uses, since
    bitsandbytes quantizes weights as from_pretrained places them: written once to disk, then loaded back."""
    from transformers import Qwen2VLForConditionalGeneration

    from omnibridge.modeling.loading import quantized_loading

    if where.llm_quantization is None:
        return materialise(lambda: Qwen2VLForConditionalGeneration(llm_config), device, where.llm_dtype)
    random_llm = materialise(lambda: Qwen2VLForConditionalGeneration(llm_config), torch.device("cpu"),
                             where.llm_dtype)
    with tempfile.TemporaryDirectory() as folder:
        random_llm.save_pretrained(folder)
        del random_llm
        return Qwen2VLForConditionalGeneration.from_pretrained(folder, dtype=where.llm_dtype,
                                                               **quantized_loading(where)).eval()


def build_pipeline(sizes: dict, device: torch.device, quantization: str | None = None):
    from diffusers import AutoencoderKL, DDPMScheduler, HunyuanDiT2DModel
    from transformers import BertConfig, BertModel, Qwen2VLConfig, T5Config, T5EncoderModel, \
        Qwen2VLImageProcessorPil

    from omnibridge.modeling.alignment import OmniBridgeAlignment
    from omnibridge.modeling.config import BiLMConfig, OmniBridgeConfig, RetrievalConfig
    from omnibridge.modeling.decoder import HunyuanDecoder, make_sampler
    from omnibridge.modeling.devices import placement
    from omnibridge.modeling.loading import LoadedModel
    from omnibridge.pipeline import OmniBridgePipeline
    from omnibridge.training.builders import build_caption_tokenizer, build_llm_tokenizer

    where = placement(device, quantization=quantization)
    tokenizer = build_llm_tokenizer(["You are a helpful assistant.", "a red circle", "Describe the image."] * 20, 400)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in ("<|endoftext|>", "<|im_end|>", "<|image_pad|>",
                                                            "<|video_pad|>", "<|vision_start|>", "<|vision_end|>")}
    l = sizes["llm"]
    head_dim = l["hidden"] // l["heads"]
    half = head_dim // 2
    mrope = [half // 4, (half - half // 4) // 2, half - half // 4 - (half - half // 4) // 2]
    llm_config = Qwen2VLConfig(
        text_config=dict(vocab_size=l["vocab"], hidden_size=l["hidden"], intermediate_size=l["inter"],
                         num_hidden_layers=l["layers"], num_attention_heads=l["heads"], num_key_value_heads=l["kv"],
                         rope_parameters={"rope_type": "default", "mrope_section": mrope, "rope_theta": 1e6},
                         bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
                         pad_token_id=ids["<|endoftext|>"], max_position_embeddings=32768),
        vision_config=dict(depth=l["vis_depth"], embed_dim=l["vis_dim"], hidden_size=l["hidden"],
                           num_heads=l["vis_heads"], mlp_ratio=4, patch_size=14, spatial_merge_size=2,
                           temporal_patch_size=2),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])
    llm = build_llm(llm_config, device, where)
    b, r = sizes["bilm"], sizes["retrieval"]
    config = OmniBridgeConfig(model_id="omnibridge-full-size-random", llm_hidden_size=l["hidden"],
                              bilm=BiLMConfig(d_model=b["d"], d_kv=b["d"] // b["heads"], num_heads=b["heads"],
                                              d_ff=b["d_ff"], num_layers=b["layers"], cross_attention_layers=b["cross"],
                                              num_query_tokens=b["queries"], dropout_rate=0.0),
                              retrieval=RetrievalConfig(num_image_queries=r["image"], num_text_queries=r["text"],
                                                        embed_dim=r["dim"], pool_heads=16 if b["d"] >= 256 else 4))
    config.generation.height = config.generation.width = sizes["size"]
    config.generation.allowed_sizes = (sizes["size"],)
    config.generation.max_new_tokens = 32
    alignment = materialise(lambda: OmniBridgeAlignment(config), device, where.llm_dtype)
    alignment.logit_scale.data = alignment.logit_scale.data.float()
    d, t5, bert = sizes["dit"], sizes["t5"], sizes["bert"]
    transformer = materialise(lambda: HunyuanDiT2DModel(
        num_attention_heads=d["heads"], attention_head_dim=d["head_dim"], in_channels=4, patch_size=2,
        sample_size=d["sample"], hidden_size=d["heads"] * d["head_dim"], num_layers=d["layers"], mlp_ratio=d["mlp"],
        learn_sigma=True, cross_attention_dim=bert["hidden"], cross_attention_dim_t5=t5["d"],
        pooled_projection_dim=bert["hidden"], text_len=d["text_len"], text_len_t5=d["text_len_t5"],
        use_style_cond_and_image_meta_size=False), device, where.decoder_dtype)
    vae = materialise(lambda: AutoencoderKL(block_out_channels=sizes["vae"], layers_per_block=2, latent_channels=4,
                                            down_block_types=("DownEncoderBlock2D",) * 4,
                                            up_block_types=("UpDecoderBlock2D",) * 4), device, where.decoder_dtype)
    vae.register_to_config(scaling_factor=0.13025)
    text_encoder = materialise(lambda: BertModel(BertConfig(
        vocab_size=bert["vocab"], hidden_size=bert["hidden"], num_hidden_layers=bert["layers"],
        num_attention_heads=bert["heads"], intermediate_size=bert["hidden"] * 4), add_pooling_layer=False),
        device, where.decoder_dtype)
    text_encoder_2 = materialise(lambda: T5EncoderModel(T5Config(
        vocab_size=t5["vocab"], d_model=t5["d"], d_kv=t5["d_kv"], num_heads=t5["heads"], d_ff=t5["d_ff"],
        num_layers=t5["layers"], feed_forward_proj="gated-gelu")), device, where.decoder_dtype)
    caption_tokenizer = build_caption_tokenizer()
    sampler = make_sampler(DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.02,
                                         prediction_type="v_prediction", steps_offset=1, clip_sample=False).config)
    decoder = HunyuanDecoder(transformer, vae, sampler, text_encoder, caption_tokenizer, text_encoder_2,
                             caption_tokenizer)
    side = sizes["image"]
    processor = Qwen2VLImageProcessorPil(min_pixels=side * side, max_pixels=side * side, patch_size=14)
    model = LoadedModel(config, llm, tokenizer, processor, alignment, decoder, "omnibridge", "random full size")
    return OmniBridgePipeline(model, where)


def timed(fn, repeats: int = 2, warmup: int = 1, device: torch.device | None = None) -> float:
    def sync():
        if device is not None and device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(warmup):
        fn()
    sync()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    sync()
    return (time.perf_counter() - start) / repeats


def offload_check(pipe, budget_gb: float, device: torch.device, size: int, image) -> dict:
    """One image then one answer about a picture, timed with the whole model on the GPU (the baseline, in
    the same run) and then with model offload at `budget_gb`: the cycle in which offload moves most."""
    if device.type != "cuda":
        return {"skipped": "model offload needs a GPU"}

    def cycle():
        pipe.generate("a red circle", rewrite=False, seed=0, num_inference_steps=25, guidance_scale=6.0,
                      height=size, width=size)
        pipe.chat([{"role": "user", "content": "Describe the image."}], images=[image], max_new_tokens=16)

    whole_s = timed(cycle, 1, 1, device)
    pipe.enable_model_offload(budget_gb)
    torch.cuda.reset_peak_memory_stats(device)
    cycle()  # from nothing on the card to the steady state
    moved_before = pipe.offload.stats().moved_bytes
    offload_s = timed(cycle, 1, 0, device)
    return {"max_gpu_memory_gb": budget_gb, "cycle_whole_model_s": round(whole_s, 2),
            "cycle_offload_s": round(offload_s, 2), "offload_vs_whole": round(offload_s / whole_s, 2),
            "peak_gpu_memory_gb": round(torch.cuda.max_memory_allocated(device) / 2**30, 2),
            "moved_gb_per_cycle": round((pipe.offload.stats().moved_bytes - moved_before) / 2**30, 1),
            "on_gpu_after": pipe.offload.stats().resident}


def main(argv: list[str] | None = None) -> dict:
    from PIL import Image

    from omnibridge.modeling.chat_format import Message
    from omnibridge.modeling.devices import QUANTIZATIONS

    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__)
    parser.add_argument("--tiny", action="store_true", help="toy sizes, any device (a dry run)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default=None)
    parser.add_argument("--max-gpu-memory", type=float, default=None, metavar="GB",
                        help="then time model offload at this budget (e.g. 20 for a 24 GB card)")
    parser.add_argument("--quantize", choices=QUANTIZATIONS, help="the LLM quantized, as --quantize loads it")
    args = parser.parse_args(argv)
    if args.quantize and args.max_gpu_memory is not None:
        parser.error("--quantize and --max-gpu-memory do not combine (bitsandbytes weights cannot move)")
    device = torch.device(args.device)
    sizes = full_sizes(args.tiny)
    started = time.perf_counter()
    pipe = build_pipeline(sizes, device, args.quantize)
    report = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else str(device),
              "tiny": args.tiny, "quantization": args.quantize, "build_s": round(time.perf_counter() - started, 1),
              "parameters_billion": {k: round(v / 1e9, 3) for k, v in pipe.info()["parameters"].items()},
              "llm_weights_mb": round(pipe.llm.get_memory_footprint() / 2**20, 2)}
    image = Image.new("RGB", (sizes["image"], sizes["image"]), (120, 40, 200))
    encoded = pipe.format.encode([Message("user", [image, "Describe the image in detail."])])
    batch = pipe._to_device(pipe.format.collate([encoded], "left")["inputs"])
    tokens = 128

    def chat():
        with torch.inference_mode():
            pipe.llm.generate(**batch, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False,
                              pad_token_id=pipe.format.pad_id)

    report["chat_prompt_tokens"] = int(batch["input_ids"].shape[1])
    report["chat_tokens_per_s"] = round(tokens / timed(chat, 1, 1, device), 1)
    size = sizes["size"]
    for sampler, steps in (("dpm++", 25), ("ddpm", 100)):
        pipe.set_sampler(sampler)
        seconds = timed(lambda: pipe.generate("a red circle", rewrite=False, seed=0, num_inference_steps=steps,
                                              guidance_scale=6.0, height=size, width=size), 1, 1, device)
        report[f"image_{size}px_{sampler}_{steps}_steps_s"] = round(seconds, 2)
    pipe.set_sampler("dpm++")
    # What the built-in model's step settings would buy the full-size DiT (their accuracy on it is unknown:
    # its weights cannot be fetched here)
    every_step = pipe.config.generation
    pipe.config.generation = dataclasses.replace(every_step, guidance_cutoff=0.3, cache_interval=3)
    try:
        seconds = timed(lambda: pipe.generate("a red circle", rewrite=False, seed=0, num_inference_steps=25,
                                              guidance_scale=6.0, height=size, width=size), 1, 1, device)
    finally:  # the embedding figures below are taken at the model's own settings
        pipe.config.generation = every_step
    report[f"image_{size}px_dpm++_25_steps_guided_30pct_reuse_3_s"] = round(seconds, 2)
    images = [image] * 16
    texts = ["a red circle to the left of a blue square"] * 64
    report["embed_images_per_s"] = round(len(images) / timed(lambda: pipe.embed_images(images), 1, 1, device), 1)
    report["embed_texts_per_s"] = round(len(texts) / timed(lambda: pipe.embed_texts(texts), 1, 1, device), 1)
    if device.type == "cuda":
        report["peak_gpu_memory_gb"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    if args.max_gpu_memory is not None:
        report["offload"] = offload_check(pipe, args.max_gpu_memory, device, size, image)
    report["total_s"] = round(time.perf_counter() - started, 1)
    line = json.dumps(report)
    print(line, flush=True)
    if args.out:
        with open(args.out, "w") as handle:
            handle.write(line + "\n")
    return report


if __name__ == "__main__":
    main()
