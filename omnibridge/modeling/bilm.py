"""The BiLM: OmniBridge's bidirectional latent-alignment transformer (`bilm` in the official release).

A T5-encoder-shaped stack (RMSNorm, relative position bias computed in block 0 and shared by every
block, attention without 1/sqrt(d) scaling, gated-GELU feed-forward) that is bidirectional, and
whose chosen blocks also cross-attend into the projected LLM states. Its input is either decoder
text embeddings or learned queries (or a per-token mix of both, during semantic-guided training);
its output replaces the decoder's T5-slot conditioning.

Module and parameter names follow the official checkpoint (`block.{i}.layer.{k}.SelfAttention.q`,
`...EncDecAttention...`, `...DenseReluDense.wi_0`, `final_layer_norm`, `query_tokens`), so its
state dict loads by key. The code is our own (~150 lines) rather than transformers' T5 layers,
whose forward signatures change between versions.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import BiLMConfig


class T5RMSNorm(nn.Module):
    """Scale-only RMS norm, computed in float32 (T5's LayerNorm)."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.variance_epsilon = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        variance = x.float().pow(2).mean(-1, keepdim=True)
        x = x.float() * torch.rsqrt(variance + self.variance_epsilon)
        return self.weight * x.to(self.weight.dtype)


def relative_position_bucket(relative_position: torch.Tensor, num_buckets: int, max_distance: int) -> torch.Tensor:
    """T5's bidirectional bucketing: exact buckets for small offsets, log-spaced up to max_distance."""
    num_buckets //= 2
    buckets = (relative_position > 0).long() * num_buckets
    distance = relative_position.abs()
    max_exact = num_buckets // 2
    is_small = distance < max_exact
    log_bucket = max_exact + (
        torch.log(distance.float().clamp(min=1) / max_exact) / math.log(max_distance / max_exact)
        * (num_buckets - max_exact)
    ).long()
    log_bucket = log_bucket.clamp(max=num_buckets - 1)
    return buckets + torch.where(is_small, distance, log_bucket)


class Attention(nn.Module):
    """Multi-head attention with T5 conventions: no bias, no 1/sqrt(d) scaling, additive bias/mask."""

    def __init__(self, config: BiLMConfig, has_relative_bias: bool):
        super().__init__()
        inner = config.num_heads * config.d_kv
        self.num_heads, self.d_kv = config.num_heads, config.d_kv
        self.q = nn.Linear(config.d_model, inner, bias=False)
        self.k = nn.Linear(config.d_model, inner, bias=False)
        self.v = nn.Linear(config.d_model, inner, bias=False)
        self.o = nn.Linear(inner, config.d_model, bias=False)
        self.dropout = config.dropout_rate
        self.num_buckets = config.relative_attention_num_buckets
        self.max_distance = config.relative_attention_max_distance
        if has_relative_bias:
            self.relative_attention_bias = nn.Embedding(self.num_buckets, config.num_heads)

    def position_bias(self, query_length: int, key_length: int, device: torch.device) -> torch.Tensor:
        context = torch.arange(query_length, device=device)[:, None]
        memory = torch.arange(key_length, device=device)[None, :]
        buckets = relative_position_bucket(memory - context, self.num_buckets, self.max_distance)
        return self.relative_attention_bias(buckets).permute(2, 0, 1).unsqueeze(0)  # [1, H, Lq, Lk]

    def forward(self, x: torch.Tensor, memory: torch.Tensor | None, bias: torch.Tensor) -> torch.Tensor:
        batch, length, _ = x.shape
        source = x if memory is None else memory

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(batch, -1, self.num_heads, self.d_kv).transpose(1, 2)

        q, k, v = heads(self.q(x)), heads(self.k(source)), heads(self.v(source))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype), scale=1.0,
                                             dropout_p=self.dropout if self.training else 0.0)
        return self.o(out.transpose(1, 2).reshape(batch, length, -1))


class BiTLayerSelfAttention(nn.Module):
    def __init__(self, config: BiLMConfig, has_relative_bias: bool):
        super().__init__()
        self.SelfAttention = Attention(config, has_relative_bias)
        self.layer_norm = T5RMSNorm(config.d_model, config.layer_norm_epsilon)
        self.dropout = nn.Dropout(config.dropout_rate)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        return x + self.dropout(self.SelfAttention(self.layer_norm(x), None, bias))


class BiTLayerCrossAttention(nn.Module):
    def __init__(self, config: BiLMConfig):
        super().__init__()
        self.EncDecAttention = Attention(config, has_relative_bias=False)
        self.layer_norm = T5RMSNorm(config.d_model, config.layer_norm_epsilon)
        self.dropout = nn.Dropout(config.dropout_rate)

    def forward(self, x: torch.Tensor, memory: torch.Tensor, memory_bias: torch.Tensor) -> torch.Tensor:
        return x + self.dropout(self.EncDecAttention(self.layer_norm(x), memory, memory_bias))


class DenseGatedGeluDense(nn.Module):
    def __init__(self, config: BiLMConfig):
        super().__init__()
        self.wi_0 = nn.Linear(config.d_model, config.d_ff, bias=False)
        self.wi_1 = nn.Linear(config.d_model, config.d_ff, bias=False)
        self.wo = nn.Linear(config.d_ff, config.d_model, bias=False)
        self.dropout = nn.Dropout(config.dropout_rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.wo(self.dropout(F.gelu(self.wi_0(x), approximate="tanh") * self.wi_1(x)))


class BiTLayerFF(nn.Module):
    def __init__(self, config: BiLMConfig):
        super().__init__()
        self.DenseReluDense = DenseGatedGeluDense(config)
        self.layer_norm = T5RMSNorm(config.d_model, config.layer_norm_epsilon)
        self.dropout = nn.Dropout(config.dropout_rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.dropout(self.DenseReluDense(self.layer_norm(x)))


class BiTBlock(nn.Module):
    """layer[0] self-attention, layer[1] cross-attention (in cross blocks only), layer[-1] feed-forward."""

    def __init__(self, config: BiLMConfig, index: int):
        super().__init__()
        self.has_cross_attention = index in config.cross_attention_layers
        layers: list[nn.Module] = [BiTLayerSelfAttention(config, has_relative_bias=index == 0)]
        if self.has_cross_attention:
            layers.append(BiTLayerCrossAttention(config))
        layers.append(BiTLayerFF(config))
        self.layer = nn.ModuleList(layers)

    def forward(self, x, self_bias, memory, memory_bias):
        x = self.layer[0](x, self_bias)
        if self.has_cross_attention and memory is not None:
            x = self.layer[1](x, memory, memory_bias)
        return self.layer[-1](x)


def additive_mask(mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """[B, S] of 1/0 -> [B, 1, 1, S] of 0/-large (finite, so a fully masked row cannot give NaN)."""
    if mask is None:
        return None
    return (1.0 - mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min


class BiLM(nn.Module):
    def __init__(self, config: BiLMConfig):
        super().__init__()
        self.config = config
        self.block = nn.ModuleList(BiTBlock(config, i) for i in range(config.num_layers))
        self.final_layer_norm = T5RMSNorm(config.d_model, config.layer_norm_epsilon)
        self.dropout = nn.Dropout(config.dropout_rate)
        # Zero-initialised as in the official code: a replaced position starts as "no information".
        self.query_tokens = nn.Parameter(torch.zeros(1, config.num_query_tokens, config.d_model))

    def mix_inputs(self, inputs_embeds: torch.Tensor | None, query_mask: torch.Tensor | None, batch: int) -> torch.Tensor:
        """Learned queries where `query_mask` is True (everywhere when there are no inputs)."""
        queries = self.query_tokens.expand(batch, -1, -1)
        if inputs_embeds is None:
            return queries
        if query_mask is None:
            return inputs_embeds
        if inputs_embeds.shape[1] != queries.shape[1]:
            raise ValueError("query replacement is position-aligned: inputs must have num_query_tokens positions")
        return torch.where(query_mask[..., None], queries.to(inputs_embeds.dtype), inputs_embeds)

    def forward(
        self,
        encoder_hidden_states: torch.Tensor | None,
        encoder_attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        query_mask: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        batch_size: int | None = None,
    ) -> torch.Tensor:
        """-> [B, L, d_model].

        inputs_embeds: [B, L, d] decoder text embeddings, or None for queries only (the inference
            setting of text-to-image). query_mask: [B, L] bool, True where a query replaces the input.
        encoder_hidden_states: [B, S, d] projected LLM states; encoder_attention_mask: [B, S] 1/0.
        attention_mask: [B, L] 1/0 over the BiLM's own positions (retrieval pads its query banks).
        """
        batch = batch_size or (inputs_embeds if inputs_embeds is not None else encoder_hidden_states).shape[0]
        x = self.dropout(self.mix_inputs(inputs_embeds, query_mask, batch))
        dtype = x.dtype
        length = x.shape[1]
        self_bias = self.block[0].layer[0].SelfAttention.position_bias(length, length, x.device).to(dtype)
        pad = additive_mask(attention_mask, dtype)
        self_bias = self_bias if pad is None else self_bias + pad
        memory_bias = additive_mask(encoder_attention_mask, dtype)
        if memory_bias is None and encoder_hidden_states is not None:
            memory_bias = torch.zeros(1, 1, 1, encoder_hidden_states.shape[1], device=x.device, dtype=dtype)
        memory = encoder_hidden_states.to(x.dtype) if encoder_hidden_states is not None else None
        for block in self.block:
            x = block(x, self_bias, memory, memory_bias)
        return self.dropout(self.final_layer_norm(x))
