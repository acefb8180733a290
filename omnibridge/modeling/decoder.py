"""The image decoder: stock diffusers HunyuanDiT (transformer + VAE + scheduler) and its two text encoders.

OmniBridge keeps this decoder frozen and swaps only what enters its T5 slot: the BiLM output
replaces the T5 encoder's states, while the BERT ("CLIP") slot still encodes the caption text and
the T5 slot keeps the caption's own T5 mask. The folder layout is diffusers' HunyuanDiT layout
(`transformer/ vae/ scheduler/ text_encoder/ tokenizer/ text_encoder_2/ tokenizer_2/`), so the
same class loads HunyuanDiT-v1.2-Diffusers and the built-in tiny decoder.
"""

from __future__ import annotations

import functools
import inspect
import json
import math
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from diffusers import AutoencoderKL, DPMSolverMultistepScheduler, HunyuanDiT2DModel, SchedulerMixin
from diffusers.models.embeddings import get_2d_rotary_pos_embed
from diffusers.utils.torch_utils import is_compiled_module
from PIL import Image
from transformers import AutoTokenizer, BertModel, PreTrainedModel, PreTrainedTokenizerBase, T5EncoderModel

from .block_cache import MiddleBlockCache
from .fingerprint import files_fingerprint
from .onnx_dit import OnnxDiT, transformer_forward

# diffusers-style step callback: callback(decoder, step_index, timestep, {"latents": ...}) -> dict | None
StepCallback = Callable[["HunyuanDecoder", int, int, dict], "dict | None"]

DECODER_SUBFOLDERS = ("transformer", "vae", "scheduler", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2")


class GenerationCancelled(Exception):
    """Raised by a step callback to stop denoising between two steps."""


class DecoderNumericalError(RuntimeError):
    """The decoder produced NaN/inf or an all-black image instead of a picture."""


@dataclass
class CaptionEncoding:
    """What HunyuanDiT is conditioned on: the BERT slot and the T5 slot, each with its mask."""

    embeds: torch.Tensor  # [B, text_len, cross_attention_dim]
    mask: torch.Tensor  # [B, text_len]
    embeds_2: torch.Tensor  # [B, text_len_t5, cross_attention_dim_t5]
    mask_2: torch.Tensor  # [B, text_len_t5]

    def __len__(self) -> int:
        return self.embeds.shape[0]

    def repeat(self, n: int) -> "CaptionEncoding":
        return CaptionEncoding(*(t.repeat_interleave(n, 0) for t in (self.embeds, self.mask, self.embeds_2, self.mask_2)))

    @staticmethod
    def cat(parts: list["CaptionEncoding"]) -> "CaptionEncoding":
        return CaptionEncoding(*(torch.cat(ts) for ts in zip(*((p.embeds, p.mask, p.embeds_2, p.mask_2) for p in parts))))


class HunyuanDecoder:
    """The seven HunyuanDiT components plus text encoding, a denoising loop and VAE decoding."""

    def __init__(
        self,
        transformer: HunyuanDiT2DModel,
        vae: AutoencoderKL,
        scheduler: SchedulerMixin,
        text_encoder: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        text_encoder_2: PreTrainedModel,
        tokenizer_2: PreTrainedTokenizerBase,
        rope_base_size: int | None = None,
    ):
        self.transformer = transformer.eval()
        self.vae = vae.eval()
        self.scheduler = scheduler
        self.sampler_kind = "as saved"  # until set_sampler picks one of SAMPLERS
        self.text_encoder = text_encoder.eval()
        self.tokenizer = tokenizer
        self.text_encoder_2 = text_encoder_2.eval()
        self.tokenizer_2 = tokenizer_2
        # HunyuanDiT's pipeline centres its RoPE grid on a 512 px base (32 tokens at patch 2);
        # the tiny decoder uses its own full grid instead.
        self.rope_base_size = rope_base_size or 512 // self.vae_scale_factor // transformer.config.patch_size
        self._negative_cache: dict[str, CaptionEncoding] = {}
        # Where the decoder computes: set by `to`, and kept by model offload while the parts move (offload.py)
        self.execution_device: torch.device | None = None
        # what the negative-prompt encoding depends on; from_pretrained fills it from the folder's files
        self.text_side_fingerprint = ""
        self.onnx_dit: OnnxDiT | None = None  # the DiT's forward under ONNX Runtime (use_onnxruntime)

    # ----------------------------------------------------------------------------------------- io
    @classmethod
    def from_pretrained(
        cls, path: str | Path, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32, **hub
    ) -> "HunyuanDecoder":
        """Load a diffusers HunyuanDiT folder or hub id (HunyuanDiT-v1.2-Diffusers or the built-in one)."""
        path = str(path)
        kw = dict(**hub)
        transformer = HunyuanDiT2DModel.from_pretrained(path, subfolder="transformer", torch_dtype=dtype, **kw)
        vae = AutoencoderKL.from_pretrained(path, subfolder="vae", torch_dtype=dtype, **kw)
        scheduler_config = DPMSolverMultistepScheduler.load_config(path, subfolder="scheduler", **kw)
        scheduler = make_sampler(scheduler_config)
        text_encoder = BertModel.from_pretrained(path, subfolder="text_encoder", dtype=dtype, add_pooling_layer=False, **kw)
        text_encoder_2 = T5EncoderModel.from_pretrained(path, subfolder="text_encoder_2", dtype=dtype, **kw)
        tokenizer = AutoTokenizer.from_pretrained(path, subfolder="tokenizer", **kw)
        tokenizer_2 = AutoTokenizer.from_pretrained(path, subfolder="tokenizer_2", **kw)
        extra = _read_json(Path(path) / "omnibridge_decoder.json") if Path(path).is_dir() else {}
        decoder = cls(transformer, vae, scheduler, text_encoder, tokenizer, text_encoder_2, tokenizer_2,
                      rope_base_size=extra.get("rope_base_size"))
        if Path(path).is_dir():
            decoder.text_side_fingerprint = text_side_fingerprint(Path(path))
        return decoder.to(device)

    def save_pretrained(self, path: str | Path) -> None:
        path = Path(path)
        self.transformer.save_pretrained(path / "transformer")
        self.vae.save_pretrained(path / "vae")
        self.scheduler.save_config(path / "scheduler")
        self.text_encoder.save_pretrained(path / "text_encoder")
        self.tokenizer.save_pretrained(path / "tokenizer")
        self.text_encoder_2.save_pretrained(path / "text_encoder_2")
        self.tokenizer_2.save_pretrained(path / "tokenizer_2")
        model_index = {
            "_class_name": "HunyuanDiTPipeline",
            "transformer": ["diffusers", "HunyuanDiT2DModel"],
            "vae": ["diffusers", "AutoencoderKL"],
            "scheduler": ["diffusers", type(self.scheduler).__name__],
            "text_encoder": ["transformers", "BertModel"],
            "tokenizer": ["transformers", "PreTrainedTokenizerFast"],
            "text_encoder_2": ["transformers", "T5EncoderModel"],
            "tokenizer_2": ["transformers", "PreTrainedTokenizerFast"],
            "safety_checker": [None, None],
            "feature_extractor": [None, None],
        }
        (path / "model_index.json").write_text(json.dumps(model_index, indent=2))
        (path / "omnibridge_decoder.json").write_text(json.dumps({"rope_base_size": self.rope_base_size}))

    def set_sampler(self, kind: str) -> None:
        """Switch the denoising scheduler (same noise schedule), one of SAMPLERS."""
        self.scheduler = make_sampler(self.scheduler.config, kind)
        self.sampler_kind = kind

    def to(self, device: torch.device | str) -> "HunyuanDecoder":
        for module in self.modules().values():
            module.to(device)
        self.execution_device = torch.device(device)
        self._negative_cache.clear()
        return self

    def modules(self) -> dict[str, torch.nn.Module]:
        return {"transformer": self.transformer, "vae": self.vae, "text_encoder": self.text_encoder,
                "text_encoder_2": self.text_encoder_2}

    @property
    def device(self) -> torch.device:
        return self.execution_device or self.transformer.device

    @property
    def dtype(self) -> torch.dtype:
        return self.transformer.dtype

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def sample_size(self) -> int:
        """The native image side in pixels."""
        return self.transformer.config.sample_size * self.vae_scale_factor

    @property
    def t5_length(self) -> int:
        return self.transformer.config.text_len_t5

    # ------------------------------------------------------------------------------- text encoding
    def tokenize_t5(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = self.tokenizer_2(captions, padding="max_length", max_length=self.t5_length, truncation=True,
                                  return_tensors="pt")
        return tokens.input_ids.to(self.device), tokens.attention_mask.to(self.device)

    def t5_input_embeddings(self, input_ids: torch.Tensor) -> torch.Tensor:
        """The T5 token-embedding table (the BiLM's non-query input when editing). Looked up where the table
        is, so that model offload never brings the whole T5 encoder to the GPU for a few rows of it."""
        table = self.text_encoder_2.get_input_embeddings()
        return table(input_ids.to(table.weight.device)).to(self.device)

    def encode_bert_slot(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """The BERT ("CLIP") slot and its mask: all that OmniBridge's own conditioning needs of the text
        encoders, since the BiLM fills the T5 slot (and `tokenize_t5` gives that slot's mask)."""
        tokens = self.tokenizer(captions, padding="max_length", max_length=self.transformer.config.text_len,
                                truncation=True, return_tensors="pt").to(self.device)
        return self.text_encoder(tokens.input_ids, attention_mask=tokens.attention_mask)[0], tokens.attention_mask

    def encode_captions(self, captions: list[str]) -> CaptionEncoding:
        """Both text slots for captions, exactly as HunyuanDiT's own pipeline computes them.

        Gradients flow when called outside inference mode (stage 0 trains the text encoders).
        """
        embeds, mask = self.encode_bert_slot(captions)
        ids_2, mask_2 = self.tokenize_t5(captions)
        embeds_2 = self.text_encoder_2(ids_2, attention_mask=mask_2)[0]
        return CaptionEncoding(embeds, mask, embeds_2, mask_2)

    def has_negative_encoding(self, negative_prompt: str) -> bool:
        return negative_prompt in self._negative_cache

    def negative_encoding(self, negative_prompt: str = "") -> CaptionEncoding:
        """Computed once per negative prompt and cached: every guided generation needs it."""
        if negative_prompt not in self._negative_cache:
            with torch.inference_mode():
                self._negative_cache[negative_prompt] = self.encode_captions([negative_prompt])
        return self._negative_cache[negative_prompt]

    def load_negative_cache(self, folder: str | Path, key: str, negative_prompt: str = "") -> bool:
        """Reuse the negative-prompt encoding across restarts (HunyuanDiT's mT5 takes seconds to run)."""
        import hashlib

        # keyed by the text encoders' files, not only the model's name: a retrained decoder keeps its name
        identity = f"{key}|{self.text_side_fingerprint}|{self.text_encoder.dtype}|{negative_prompt}"
        name = hashlib.sha256(identity.encode()).hexdigest()[:24]
        path = Path(folder) / f"negative-{name}.pt"
        if path.exists():
            try:
                tensors = torch.load(path, map_location=self.device, weights_only=True)
                self._negative_cache[negative_prompt] = CaptionEncoding(*(t.to(self.device) for t in tensors))
                return True
            except (OSError, RuntimeError, TypeError, ValueError, EOFError, pickle.UnpicklingError):
                path.unlink(missing_ok=True)  # a damaged cache is rebuilt
        encoding = self.negative_encoding(negative_prompt)
        Path(folder).mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save([t.cpu() for t in (encoding.embeds, encoding.mask, encoding.embeds_2, encoding.mask_2)], tmp)
        tmp.replace(path)
        return False

    # ----------------------------------------------------------------------------------- sampling
    def latent_shape(self, height: int, width: int) -> tuple[int, int, int]:
        factor = self.vae_scale_factor * self.transformer.config.patch_size
        if height % factor or width % factor:
            raise ValueError(f"height and width must be multiples of {factor}, got {height}x{width}")
        return self.transformer.config.in_channels, height // self.vae_scale_factor, width // self.vae_scale_factor

    def initial_latents(self, seeds: list[int], height: int, width: int) -> torch.Tensor:
        """One generator per image, on the CPU, so an image depends only on its own seed."""
        shape = self.latent_shape(height, width)
        noise = [torch.randn(shape, generator=torch.Generator().manual_seed(int(s))) for s in seeds]
        return torch.stack(noise).to(self.device, self.dtype)

    def _rotary_embedding(self, latent_height: int, latent_width: int):
        patch = self.transformer.config.patch_size
        grid = (latent_height // patch, latent_width // patch)
        crops = get_resize_crop_region_for_grid(grid, self.rope_base_size)
        head_dim = self.transformer.inner_dim // self.transformer.num_heads
        return get_2d_rotary_pos_embed(head_dim, crops, grid, device=self.device, output_type="pt")

    def compile_blocks(self, **compile_options) -> None:
        """`torch.compile` the DiT's blocks, not the whole DiT (regional compilation, as diffusers'
        `compile_repeated_blocks`): one compiled forward of the block class serves every block, so a graph is
        built per block shape rather than per block, and the step loop stays in Python, where block reuse
        (block_cache.py) decides which blocks run. Each block gets it as its own `forward`, so the class, the
        weights and the state dict are untouched."""
        blocks = list(self.transformer.blocks)
        compiled = torch.compile(type(blocks[0]).forward, **compile_options)
        for block in blocks:
            block.forward = functools.partial(compiled, block)

    def use_onnxruntime(self, height: int, width: int, cache_dir: str | Path | None = None,
                        int8: bool = False) -> None:
        """Run the DiT's forward under ONNX Runtime for images of this size (onnx_dit.py), its matrix products
        in int8 with `int8`. The traced graphs are kept in `cache_dir`, keyed by the weights, so a
        restart reads them back instead of tracing again. Raises OnnxUnavailable where it cannot be done (a
        GPU, half precision, a DiT with style and size conditioning, a library missing): PyTorch then stays.
        It traces a copy of the DiT, so it may run beside the model thread, which switches at its next step."""
        from .onnx_dit import OnnxUnavailable

        if self.device.type != "cpu" or self.dtype != torch.float32:
            raise OnnxUnavailable("ONNX Runtime is used for a float32 DiT on the CPU only")
        if self.transformer.config.use_style_cond_and_image_meta_size or is_compiled_module(self.transformer):
            raise OnnxUnavailable("this DiT takes style and size conditioning, or is compiled")
        self.onnx_dit = OnnxDiT.build(self.transformer, self.example_dit_inputs(height, width),
                                      Path(cache_dir) if cache_dir else None, int8=int8)

    @property
    def dit_runtime(self) -> str:
        """What runs the DiT at the default image size: "onnxruntime" (float32) or "onnxruntime-int8" once
        `use_onnxruntime` is done, else "pytorch"."""
        if self.onnx_dit is None:
            return "pytorch"
        return "onnxruntime" if self.onnx_dit.precision == "float32" else f"onnxruntime-{self.onnx_dit.precision}"

    def example_dit_inputs(self, height: int, width: int) -> dict[str, torch.Tensor]:
        """One transformer call's inputs for an image of this size, by name (what a graph is traced on)."""
        latent_height, latent_width = height // self.vae_scale_factor, width // self.vae_scale_factor
        negative = self.negative_encoding()
        cos, sin = self._rotary_embedding(latent_height, latent_width)
        latents = self.initial_latents([0], height, width)
        return {"latents": latents, "timesteps": torch.full((1,), 500.0), "embeds": negative.embeds.float(),
                "mask": negative.mask, "embeds_2": negative.embeds_2.float(), "mask_2": negative.mask_2,
                "rotary_cos": cos.float(), "rotary_sin": sin.float()}

    def predict(self, latents: torch.Tensor, timesteps: torch.Tensor, cond: CaptionEncoding, rotary=None,
                block_cache: MiddleBlockCache | None = None) -> torch.Tensor:
        """One transformer call: the model output (v, epsilon or x0, by the scheduler's prediction type).
        `block_cache`: the denoising loop's, which the ONNX Runtime path follows (PyTorch's blocks read it
        through their wrapped forwards)."""
        batch, _, height, width = latents.shape
        meta_size = style = None
        if self.transformer.config.use_style_cond_and_image_meta_size:
            side = [height * self.vae_scale_factor, width * self.vae_scale_factor]
            meta_size = torch.tensor([side + side + [0, 0]] * batch, device=self.device, dtype=latents.dtype)
            style = torch.zeros(batch, dtype=torch.long, device=self.device)
        rotary = rotary if rotary is not None else self._rotary_embedding(height, width)
        inputs = {"latents": latents, "timesteps": timesteps.to(latents.dtype), "embeds": cond.embeds.to(latents.dtype),
                  "mask": cond.mask, "embeds_2": cond.embeds_2.to(latents.dtype), "mask_2": cond.mask_2,
                  "rotary_cos": rotary[0], "rotary_sin": rotary[1]}
        onnx_dit = self.onnx_dit  # read once: another thread may install it (use_onnxruntime)
        if onnx_dit is not None and onnx_dit.accepts(self.transformer, inputs):
            output = onnx_dit(inputs, block_cache)
        else:
            output = transformer_forward(self.transformer, inputs, image_meta_size=meta_size, style=style)
        if output.shape[1] != latents.shape[1]:  # learn_sigma: the second half is the variance
            output = output[:, : latents.shape[1]]
        return output

    @torch.inference_mode()
    def denoise(
        self,
        cond: CaptionEncoding,
        seeds: list[int],
        height: int,
        width: int,
        num_inference_steps: int,
        guidance_scale: float,
        negative: CaptionEncoding | None = None,
        callback: StepCallback | None = None,
        init_latents: torch.Tensor | None = None,
        strength: float = 1.0,
        sampler: str | None = None,
        guidance_cutoff: float = 1.0,
        cache_interval: int = 1,
    ) -> torch.Tensor:
        """Classifier-free-guided sampling; returns scaled latents [B, C, h, w].

        With `init_latents` and `strength` < 1, sampling starts from those latents noised to the
        matching timestep (SDEdit) and runs only the last `strength` share of the steps. `sampler`
        (one of SAMPLERS) uses a scheduler of its own for this call; None, the decoder's current one.
        `guidance_cutoff` is the share of the steps run, counted from the first, that are guided; the
        rest run the conditional branch alone, at about half the cost (as diffusers' SDCFGCutoffCallback):
        late, low-noise steps refine detail that the layout fixed by then no longer needs guided.
        `cache_interval` N > 1: after the guided steps, only every N-th step runs every block of the
        transformer; the steps between reuse its middle blocks' residual (block_cache.py).
        """
        scheduler = self.scheduler
        if sampler not in (None, self.sampler_kind):
            scheduler = make_sampler(self.scheduler.config, sampler)
        noise = self.initial_latents(seeds, height, width)
        batch = noise.shape[0]
        guided = guidance_scale > 1.0
        conditional_only = cond
        if guided:
            negative = negative or self.negative_encoding()
            cond = CaptionEncoding.cat([negative.repeat(batch) if len(negative) == 1 else negative, cond])
        scheduler.set_timesteps(num_inference_steps, device=self.device)
        timesteps = scheduler.timesteps
        if init_latents is not None and strength < 1.0:
            start = min(len(timesteps) - 1, int(round(len(timesteps) * (1.0 - strength))))
            timesteps = timesteps[start:]
            if hasattr(scheduler, "set_begin_index"):
                scheduler.set_begin_index(start)
            latents = scheduler.add_noise(init_latents.expand_as(noise), noise, timesteps[:1].repeat(batch))
        else:
            latents = noise * scheduler.init_noise_sigma
        rotary = self._rotary_embedding(latents.shape[-2], latents.shape[-1])
        step_noise = _step_generators(scheduler, seeds)
        guided_steps = math.ceil(len(timesteps) * float(np.clip(guidance_cutoff, 0.0, 1.0))) if guided else 0
        if is_compiled_module(self.transformer):  # compiled whole by a caller (compile_blocks keeps reuse working)
            cache_interval = 1  # swapping the blocks' forward in and out would recompile the graph at every step
        with MiddleBlockCache(self.transformer) as block_cache:
            for step, timestep in enumerate(timesteps):
                guide_this_step = step < guided_steps
                model_input = torch.cat([latents] * 2) if guide_this_step else latents
                model_input = scheduler.scale_model_input(model_input, timestep)
                t = torch.full((model_input.shape[0],), float(timestep), device=self.device)
                block_cache.prepare(step, guided_steps, cache_interval, model_input.shape[0])
                prediction = self.predict(model_input, t, cond if guide_this_step else conditional_only, rotary,
                                          block_cache)
                if guide_this_step:
                    uncond, text = prediction.chunk(2)
                    prediction = uncond + guidance_scale * (text - uncond)
                latents = scheduler.step(prediction, timestep, latents, return_dict=False, **step_noise)[0]
                if callback is not None:
                    outputs = callback(self, step, int(timestep), {"latents": latents})
                    if outputs:
                        latents = outputs.get("latents", latents)
        return latents

    # --------------------------------------------------------------------------------------- vae
    @torch.inference_mode()
    def decode_latents(self, latents: torch.Tensor) -> list[Image.Image]:
        config = self.vae.config
        if not torch.isfinite(latents).all():
            raise DecoderNumericalError(
                "the decoder produced NaN/inf latents; run it in float32 (or float16 on CUDA), not bfloat16"
            )
        shift = getattr(config, "shift_factor", None) or 0.0
        pixels = self.vae.decode(latents / config.scaling_factor + shift, return_dict=False)[0]
        pixels = ((pixels.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        arrays = pixels.permute(0, 2, 3, 1).cpu().numpy()
        if not np.isfinite(pixels.float().cpu().numpy()).all() or (arrays.max(axis=(1, 2, 3)) == 0).any():
            raise DecoderNumericalError("the decoder returned an all-black image (numerical overflow)")
        return [Image.fromarray(a, mode="RGB") for a in arrays]

    def encode_images(self, pixels: torch.Tensor, sample: bool = False) -> torch.Tensor:
        """Pixels in [-1, 1], [B, 3, H, W] -> scaled latents (training and tests)."""
        config = self.vae.config
        posterior = self.vae.encode(pixels).latent_dist
        latents = posterior.sample() if sample else posterior.mode()
        shift = getattr(config, "shift_factor", None) or 0.0
        return (latents - shift) * config.scaling_factor


def get_resize_crop_region_for_grid(grid: tuple[int, int], base_size: int):
    """HunyuanDiT's RoPE crop: the grid resized into a square of `base_size`, centred (as in diffusers)."""
    height, width = grid
    if height / width > 1:
        resize_height, resize_width = base_size, int(round(base_size / height * width))
    else:
        resize_width, resize_height = base_size, int(round(base_size / width * height))
    top, left = int(round((base_size - resize_height) / 2.0)), int(round((base_size - resize_width) / 2.0))
    return (top, left), (top + resize_height, left + resize_width)


STEP_NOISE_OFFSET = 1_000_003  # seeds step noise apart from the initial noise of the same seed
SAMPLERS = ("dpm++", "dpm++sde", "unipc", "ddim", "ddpm")


def _step_generators(scheduler: SchedulerMixin, seeds: list[int]) -> dict:
    """Stochastic samplers draw fresh noise at every step: from per-image generators (a stream apart
    from the initial noise's), so their images too depend only on their own seeds."""
    if "generator" not in inspect.signature(scheduler.step).parameters:
        return {}
    return {"generator": [torch.Generator().manual_seed(int(s) + STEP_NOISE_OFFSET) for s in seeds]}


def make_sampler(config: dict, kind: str = "dpm++") -> SchedulerMixin:
    """A sampler on the training noise schedule. DDPM is the official HunyuanDiT setting (100 steps);
    `benchmarks/bench_steps.py` measures what the deterministic (dpm++, unipc, ddim) and stochastic
    (dpm++sde, ddpm) ones reach in fewer steps. (Euler ancestral is left out: on this squared-cosine
    schedule its first sigma is so large that it overflows at a few steps.)"""
    from diffusers import DDIMScheduler, DDPMScheduler, UniPCMultistepScheduler

    config = {k: v for k, v in dict(config).items() if not k.startswith("_")}
    config["timestep_spacing"] = "trailing"  # start at the last training step: few-step samplers need it
    if kind == "dpm++":
        # Set, not defaulted: a config taken from the SDE variant must not keep its algorithm
        config["algorithm_type"] = "dpmsolver++"
        config.setdefault("solver_order", 2)
        return DPMSolverMultistepScheduler.from_config(config)
    if kind == "dpm++sde":
        config.update(algorithm_type="sde-dpmsolver++", solver_order=2)
        return DPMSolverMultistepScheduler.from_config(config)
    if kind == "unipc":
        return UniPCMultistepScheduler.from_config(config)
    if kind == "ddim":
        return DDIMScheduler.from_config(config)
    if kind == "ddpm":
        return DDPMScheduler.from_config(config)
    raise ValueError(f"sampler must be one of {SAMPLERS}")


def text_side_fingerprint(folder: Path) -> str:
    """A digest of the two text encoders and their tokenizers, which alone make a caption's encoding."""
    parts = ("text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2")
    return files_fingerprint(file for part in parts if (folder / part).is_dir()
                             for file in (folder / part).iterdir() if file.is_file())


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}
