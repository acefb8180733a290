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


def _rebuilt(llm: torch.nn.Module, sources: list[int], copies: list[bool]) -> torch.nn.Module:
    """A Qwen2-VL whose text layer i is layer `sources[i]` of `llm`, with its output projections zeroed
    where `copies[i]`; everything outside the text layers is `llm`'s."""
    text_config = llm.config.text_config
    config = copy.deepcopy(llm.config)
    config.text_config.num_hidden_layers = len(sources)
    if getattr(text_config, "layer_types", None):
        config.text_config.layer_types = [text_config.layer_types[source] for source in sources]
    parameter = next(llm.parameters())
    rebuilt = type(llm)(config).to(device=parameter.device, dtype=parameter.dtype)

    old_state = llm.state_dict()
    state = {key: value for key, value in old_state.items() if not key.startswith(LAYERS_PREFIX)}
    for index, (source, is_copy) in enumerate(zip(sources, copies, strict=True)):
        prefix = f"{LAYERS_PREFIX}{source}."
        for key, value in old_state.items():
            if key.startswith(prefix):
                rest = key[len(prefix):]
                zeroed = is_copy and rest in ZEROED_IN_COPIES
                state[f"{LAYERS_PREFIX}{index}.{rest}"] = torch.zeros_like(value) if zeroed else value.clone()
    rebuilt.load_state_dict(state)
    rebuilt.generation_config = copy.deepcopy(llm.generation_config)
    return rebuilt.train(llm.training)


def grow_language_model(llm: torch.nn.Module, num_layers: int) -> torch.nn.Module:
    """`llm` (a Qwen2-VL) with `num_layers` text layers, a whole multiple of its own; `llm` itself if equal."""
    old_layers = llm.config.text_config.num_hidden_layers
    if num_layers == old_layers:
        return llm
    if num_layers < old_layers or num_layers % old_layers:
        raise ValueError(f"can grow {old_layers} layers to a multiple of {old_layers}, not to {num_layers}")
    factor = num_layers // old_layers
    return _rebuilt(llm, [i // factor for i in range(num_layers)], [i % factor > 0 for i in range(num_layers)])


def stack_answer_layers(llm: torch.nn.Module, extra: int) -> torch.nn.Module:
    """`llm` with `extra` text layers stacked on top, copies of its own (the last `extra`, in order) whose
    output projections are zero, so the stacked model computes exactly what `llm` did; the first layers'
    output is unchanged however the new ones train, which `OmniBridgeConfig.feature_layers` relies on."""
    old_layers = llm.config.text_config.num_hidden_layers
    if not 0 < extra <= old_layers:
        raise ValueError(f"can stack 1 to {old_layers} answer layers on {old_layers}, not {extra}")
    sources = list(range(old_layers)) + list(range(old_layers - extra, old_layers))
    return _rebuilt(llm, sources, [i >= old_layers for i in range(old_layers + extra)])
