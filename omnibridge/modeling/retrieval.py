"""Retrieval pooling heads: one learned-average query attending over a token sequence.

Names follow the official `AttentionPoolingBlock` (`norm1_q/k/v`, `cross_attn.{q,k,v,proj}`). The
official block averages and attends over padded (zeroed) positions as well, so an embedding changes
with the longest item in its batch; with `mask_padding=True` (our default) the mean and the
attention skip padding and a vector is the same alone or in any batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class PoolingAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int, out_dim: int):
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, out_dim)

    def forward(self, query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                key_mask: torch.Tensor | None) -> torch.Tensor:
        batch, length, dim = keys.shape
        head_dim = dim // self.num_heads

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(batch, -1, self.num_heads, head_dim).transpose(1, 2)

        bias = None
        if key_mask is not None:
            bias = (~key_mask.bool())[:, None, None, :].to(keys.dtype) * torch.finfo(keys.dtype).min
        out = F.scaled_dot_product_attention(heads(self.q(query)), heads(self.k(keys)), heads(self.v(values)),
                                             attn_mask=bias)
        return self.proj(out.transpose(1, 2).reshape(batch, dim))


class AttentionPoolingBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, out_dim: int):
        super().__init__()
        self.norm1_q = nn.LayerNorm(dim, eps=1e-5)
        self.norm1_k = nn.LayerNorm(dim, eps=1e-5)
        self.norm1_v = nn.LayerNorm(dim, eps=1e-5)
        self.cross_attn = PoolingAttention(dim, num_heads, out_dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: [B, N, dim]; mask: [B, N] 1 for real tokens, or None to pool over everything -> [B, out_dim]."""
        if mask is None:
            query = x.mean(1, keepdim=True)
        else:
            weights = mask.to(x.dtype)[..., None]
            query = (x * weights).sum(1, keepdim=True) / weights.sum(1, keepdim=True).clamp(min=1.0)
        return self.cross_attn(self.norm1_q(query), self.norm1_k(x), self.norm1_v(x), mask)
