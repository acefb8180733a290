"""Where the one pipeline runs, and in which precision each part runs there."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Placement:
    device: torch.device
    llm_dtype: torch.dtype  # the Qwen2-VL LLM, the projector and the BiLM
    decoder_dtype: torch.dtype  # HunyuanDiT, its text encoders and the VAE


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
        raise ValueError(f"unknown dtype {dtype!r}; use one of {sorted(_DTYPES)}") from None


def placement(device: str | torch.device | None = None, dtype: str | torch.dtype | None = None) -> Placement:
    """The official recipe on CUDA (bf16 LLM and BiLM, fp16 decoder), float32 elsewhere.

    HunyuanDiT-v1.2 is known to overflow into black images outside fp16/fp32, hence fp16 for the
    decoder on CUDA. An explicit `dtype` applies to every part.
    """
    device = torch.device(device) if device is not None else best_device()
    forced = parse_dtype(dtype)
    if forced is not None:
        return Placement(device, forced, forced)
    if device.type == "cuda":
        return Placement(device, torch.bfloat16, torch.float16)
    return Placement(device, torch.float32, torch.float32)
