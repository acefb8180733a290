"""Depth up-scaling of the language model, so a deeper one can start from a trained shallow one.

Each layer of the trained model is followed by a copy of itself whose two output projections (attention's
`o_proj` and the MLP's `down_proj`) are zero. A pre-norm residual block with zero output projections adds
nothing to its input, so the grown model computes exactly what the trained one did (its answers, and the
hidden states that stages 2 and 3 were trained on), and stage 1 then teaches the new layers from there
(the zero-initialised residual branch of ReZero and of Fixup, applied to whole layers).
"""

from __future__ import annotations

import copy

import torch

LAYERS_PREFIX = "model.language_model.layers."
ZEROED_IN_COPIES = ("self_attn.o_proj.weight", "self_attn.o_proj.bias", "mlp.down_proj.weight", "mlp.down_proj.bias")


def grow_language_model(llm: torch.nn.Module, num_layers: int) -> torch.nn.Module:
    """`llm` (a Qwen2-VL) with `num_layers` text layers, a whole multiple of its own; `llm` itself if equal."""
    text_config = llm.config.text_config
    old_layers = text_config.num_hidden_layers
    if num_layers == old_layers:
        return llm
    if num_layers < old_layers or num_layers % old_layers:
        raise ValueError(f"can grow {old_layers} layers to a multiple of {old_layers}, not to {num_layers}")
    factor = num_layers // old_layers
    config = copy.deepcopy(llm.config)
    config.text_config.num_hidden_layers = num_layers
    if getattr(text_config, "layer_types", None):
        config.text_config.layer_types = [text_config.layer_types[i // factor] for i in range(num_layers)]
    parameter = next(llm.parameters())
    grown = type(llm)(config).to(device=parameter.device, dtype=parameter.dtype)

    state = {}
    for key, value in llm.state_dict().items():
        if not key.startswith(LAYERS_PREFIX):
            state[key] = value
            continue
        index, rest = key[len(LAYERS_PREFIX):].split(".", 1)
        for copy_index in range(factor):
            zeroed = copy_index > 0 and rest in ZEROED_IN_COPIES
            state[f"{LAYERS_PREFIX}{int(index) * factor + copy_index}.{rest}"] = (
                torch.zeros_like(value) if zeroed else value.clone())
    grown.load_state_dict(state)
    grown.generation_config = copy.deepcopy(llm.generation_config)
    return grown.train(llm.training)
