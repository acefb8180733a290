"""The LLM states that OmniBridge's other parts read: the BiLM (generation, editing) and the retrieval heads.

They read the language model's last hidden states, after its final norm. A model whose config sets
`feature_layers` reads them after only its first `feature_layers` text layers (the same norm applied), so
answer layers stacked above a frozen language model leave those states exactly as they were.
"""

from __future__ import annotations

import contextlib

import torch


@contextlib.contextmanager
def feature_layers_only(llm: torch.nn.Module, layers: int | None):
    """Inside the block, `llm.model` runs only its first `layers` text layers (all of them for None).

    The model thread runs one job at a time, so no answer can be generated while the layers are cut."""
    if layers is not None and layers < 1:
        raise ValueError(f"a model runs at least one text layer, not {layers} (feature_layers, rewrite_layers)")
    language_model = llm.model.language_model
    everything = language_model.layers
    if layers is None or layers >= len(everything):
        yield
        return
    language_model.layers = everything[:layers]
    try:
        yield
    finally:
        language_model.layers = everything


def feature_states(llm: torch.nn.Module, layers: int | None, inputs: dict) -> torch.Tensor:
    """One forward pass of `llm.model` over collated `inputs`: the states the BiLM and retrieval heads read."""
    with feature_layers_only(llm, layers):
        return llm.model(**inputs).last_hidden_state
