"""Everything OmniBridge adds to the LLM: projector, BiLM with learned queries, retrieval heads.

Attribute names are the official release's top-level keys (`downsampling_linear_layer`, `bilm.*`,
`image_queries`, `text_queries`, `image_proj`, `image_proj_1`, `text_proj`, `text_proj_1`,
`fusion_alpha_image`, `fusion_alpha_text`, `logit_scale`), so the same state dict serves both the
official checkpoint and ours.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .bilm import BiLM
from .config import OmniBridgeConfig
from .retrieval import AttentionPoolingBlock

ALIGNMENT_KEY_PREFIXES = (
    "downsampling_linear_layer.", "bilm.", "image_queries", "text_queries", "image_proj.", "image_proj_1.",
    "text_proj.", "text_proj_1.", "fusion_alpha_image", "fusion_alpha_text", "logit_scale",
)


def is_alignment_key(key: str) -> bool:
    return key.startswith(ALIGNMENT_KEY_PREFIXES)


class OmniBridgeAlignment(nn.Module):
    def __init__(self, config: OmniBridgeConfig):
        super().__init__()
        self.config = config
        d = config.bilm.d_model
        retrieval = config.retrieval
        self.downsampling_linear_layer = nn.Linear(config.llm_hidden_size, d, bias=False)
        self.bilm = BiLM(config.bilm)
        self.image_queries = nn.Parameter(torch.randn(1, retrieval.num_image_queries, d) * 0.02)
        self.text_queries = nn.Parameter(torch.randn(1, retrieval.num_text_queries, d) * 0.02)
        self.image_proj = AttentionPoolingBlock(d, retrieval.pool_heads, retrieval.embed_dim)
        self.image_proj_1 = AttentionPoolingBlock(d, retrieval.pool_heads, retrieval.embed_dim)
        self.text_proj = AttentionPoolingBlock(d, retrieval.pool_heads, retrieval.embed_dim)
        self.text_proj_1 = AttentionPoolingBlock(d, retrieval.pool_heads, retrieval.embed_dim)
        self.fusion_alpha_image = nn.Parameter(torch.zeros(1))
        self.fusion_alpha_text = nn.Parameter(torch.zeros(1))
        self.logit_scale = nn.Parameter(torch.ones(1) * math.log(1 / 0.07))

    # ------------------------------------------------------------------------------- generation
    def condition(
        self,
        llm_states: torch.Tensor,
        llm_mask: torch.Tensor,
        inputs_embeds: torch.Tensor | None = None,
        query_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """LLM states [B, S, d_llm] -> decoder T5-slot conditioning [B, L, d].

        Text-to-image passes no `inputs_embeds` (all positions are learned queries); editing passes
        the decoder's T5 token embeddings of the target caption; training mixes the two by `query_mask`.
        """
        memory = self.downsampling_linear_layer(llm_states.to(self.downsampling_linear_layer.weight.dtype))
        return self.bilm(memory, llm_mask, inputs_embeds=inputs_embeds, query_mask=query_mask,
                         batch_size=llm_states.shape[0])

    # -------------------------------------------------------------------------------- retrieval
    def _embed(self, states, mask, queries, query_head, backbone_head, alpha) -> torch.Tensor:
        memory = self.downsampling_linear_layer(states.to(self.downsampling_linear_layer.weight.dtype))
        memory = memory * mask[..., None].to(memory.dtype)  # zero padding, as the official code does
        pooled_mask = mask if self.config.retrieval.mask_padding else None
        batch = states.shape[0]
        query_out = self.bilm(memory, mask, inputs_embeds=queries.expand(batch, -1, -1).to(memory.dtype))
        from_queries = F.normalize(query_head(query_out).float(), dim=-1)
        from_backbone = F.normalize(backbone_head(memory, pooled_mask).float(), dim=-1)
        gate = torch.sigmoid(alpha.float())
        return F.normalize(gate * from_queries + (1 - gate) * from_backbone, dim=-1)

    def embed_image_states(self, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """LLM states at image-token positions [B, N, d_llm] (mask [B, N]) -> unit vectors [B, D] (float32)."""
        return self._embed(states, mask, self.image_queries, self.image_proj, self.image_proj_1,
                           self.fusion_alpha_image)

    def embed_text_states(self, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """LLM states at caption-token positions [B, N, d_llm] (mask [B, N]) -> unit vectors [B, D] (float32)."""
        return self._embed(states, mask, self.text_queries, self.text_proj, self.text_proj_1,
                           self.fusion_alpha_text)

    def similarity(self, image_embeds: torch.Tensor, text_embeds: torch.Tensor) -> torch.Tensor:
        """Scaled cosine similarity logits [N_images, N_texts] (the scale does not change rankings)."""
        return self.logit_scale.float().exp() * image_embeds @ text_embeds.T
