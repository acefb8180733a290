"""Depth up-scaling of the language model, so a deeper one can start from a trained shallow one.

Each layer of the trained model is followed by a copy of itself whose two output projections (attention's
`o_proj` and the MLP's `down_proj`) are zero. A pre-norm residual block with zero output projections adds
nothing to its input, so the grown model computes exactly what the trained one did (its answers, and the
hidden states that stages 2 and 3 were trained on), and stage 1 then teaches the new layers from there
(the zero-initialised residual branch of ReZero and of Fixup, applied to whole layers).

`stack_answer_layers` puts such copies on top instead, so the first layers' output stays what it was while
stage 1 trains only the new ones: the states that the BiLM and retrieval heads read (`feature_layers`) do not
move, and a stage-1 run needs no new stages 2 and 3.
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


def stack_answer_layers(llm: torch.nn.Module, extra: int) -> torch.nn.Module:
    """`llm` with `extra` text layers stacked on top, copies of its own (the last `extra`, in order) whose
    output projections are zero, so the stacked model computes exactly what `llm` did; the first layers'
    output is unchanged however the new ones train, which `OmniBridgeConfig.feature_layers` relies on."""
    text_config = llm.config.text_config
    old_layers = text_config.num_hidden_layers
    if not 0 < extra <= old_layers:
        raise ValueError(f"can stack 1 to {old_layers} answer layers on {old_layers}, not {extra}")
    config = copy.deepcopy(llm.config)
    config.text_config.num_hidden_layers = old_layers + extra
    if getattr(text_config, "layer_types", None):
        config.text_config.layer_types = list(text_config.layer_types) + list(text_config.layer_types[-extra:])
    parameter = next(llm.parameters())
    stacked = type(llm)(config).to(device=parameter.device, dtype=parameter.dtype)
    state = dict(llm.state_dict())
    for new_index in range(old_layers, old_layers + extra):
        source = f"{LAYERS_PREFIX}{new_index - extra}."
        for key, value in llm.state_dict().items():
            if key.startswith(source):
                rest = key[len(source):]
                state[f"{LAYERS_PREFIX}{new_index}.{rest}"] = (
                    torch.zeros_like(value) if rest in ZEROED_IN_COPIES else value.clone())
    stacked.load_state_dict(state)
    stacked.generation_config = copy.deepcopy(llm.generation_config)
    return stacked.train(llm.training)
