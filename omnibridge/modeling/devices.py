"""Where the one pipeline runs, and in which precision each part runs there."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch


QUANTIZATIONS = ("8bit", "4bit")


class PlacementError(ValueError):
    """An impossible device, precision or quantization request; the message says which and why."""


@dataclass(frozen=True)
class Placement:
    device: torch.device
    llm_dtype: torch.dtype  # the Qwen2-VL LLM, the projector and the BiLM
    decoder_dtype: torch.dtype  # HunyuanDiT, its text encoders and the VAE
    # bitsandbytes weights for the LLM's linear layers: None, "8bit" (LLM.int8) or "4bit" (NF4). The LLM is
    # most of the full-size model's weights (Qwen2-VL-7B: 8.3B of its 13.75B parameters), so it alone is quantized
    llm_quantization: str | None = None


_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float16": torch.float16, "fp16": torch.float16}


def best_device() -> torch.device:
    """CUDA, else Apple MPS, else CPU; `OMNIBRIDGE_DEVICE` overrides."""
    override = os.environ.get("OMNIBRIDGE_DEVICE")
    if override:
        return torch.device(override)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def parse_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    try:
        return _DTYPES[dtype.lower()]
    except KeyError:
        raise PlacementError(f"unknown dtype {dtype!r}; use one of {sorted(_DTYPES)}") from None


def check_quantization(quantization: str | None, device: torch.device) -> None:
    if quantization is None:
        return
    if quantization not in QUANTIZATIONS:
        raise PlacementError(f"unknown quantization {quantization!r}; use one of {list(QUANTIZATIONS)}")
    if device.type not in ("cuda", "cpu"):
        raise PlacementError(f"bitsandbytes quantization runs on CUDA or the CPU, not on {device.type}")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise PlacementError("quantization needs bitsandbytes: pip install bitsandbytes") from None


def placement(device: str | torch.device | None = None, dtype: str | torch.dtype | None = None,
              quantization: str | None = None) -> Placement:
    """The official recipe on CUDA (bf16 LLM and BiLM, fp16 decoder), float32 elsewhere.

    HunyuanDiT-v1.2 is known to overflow into black images outside fp16/fp32, hence fp16 for the
    decoder on CUDA. An explicit `dtype` applies to every part. `quantization` ("8bit" or "4bit")
    stores the LLM's linear layers in bitsandbytes formats; they compute in the LLM's dtype.
    """
    device = torch.device(device) if device is not None else best_device()
    check_quantization(quantization, device)
    forced = parse_dtype(dtype)
    if forced is not None:
        return Placement(device, forced, forced, quantization)
    if device.type == "cuda":
        return Placement(device, torch.bfloat16, torch.float16, quantization)
    return Placement(device, torch.float32, torch.float32, quantization)
