"""Configuration of the OmniBridge-specific parts, saved as `omnibridge_config.json` in a model folder.

Defaults are the official release's sizes (reference section 1): a 24-layer mT5-XL-shaped BiLM
with cross-attention in layers {0,2,4,8,12,16,20}, 256 learned generation queries, 128 image and
96 text retrieval queries, 1024-d retrieval embeddings.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path


@dataclass
class BiLMConfig:
    d_model: int = 2048
    d_kv: int = 64
    num_heads: int = 32
    d_ff: int = 5120
    num_layers: int = 24
    cross_attention_layers: tuple[int, ...] = (0, 2, 4, 8, 12, 16, 20)
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    num_query_tokens: int = 256
    dropout_rate: float = 0.1
    layer_norm_epsilon: float = 1e-6


@dataclass
class RetrievalConfig:
    num_image_queries: int = 128
    num_text_queries: int = 96
    embed_dim: int = 1024
    pool_heads: int = 16
    # The official pooling heads average and attend over padding too, so an embedding depends on
    # the rest of its batch; False restores that behaviour to reproduce the paper's numbers.
    mask_padding: bool = True
    # Image -> captions search re-ranks its top 10 by cosine plus this weight times the model's likelihood of
    # each caption as its description of the query image (rerank.py); 0 keeps the cosine order. Chosen per
    # model on validation: the built-in model's 1.0; none is measured for the official one, so it stays off.
    caption_rerank_weight: float = 0.0


@dataclass
class PromptConfig:
    """The instructions the LLM was trained with; the official ones by default."""

    system: str = "You are a helpful assistant."
    rewrite: str = (
        'Please rewrite the image caption of "{prompt}". Generate a single-paragraph English image description '
        "(under 70 words) that states 1) the object types with exact counts; 2) the colour of each object; "
        "3) their spatial positions; 4) explicit property-object associations; 5) no repetition of the instruction."
    )
    edit: str = (
        "Please generate a new description (under 80 words) for the image based on the provided instruction. "
        "Modification instruction: \n{instruction}"
    )
    describe: str = "Describe the image in detail."  # asked of an edit's source when choosing its caption
    image_open: str = "<img>"  # the LLM wraps captions meant for the decoder in these tokens
    image_close: str = "</img>"
    edit_open: str = ""  # the built-in model wraps edit captions in <edit> ... </edit>; the official one does not
    edit_close: str = ""
    # Within a user turn, put the text before the images. Text after an image advances M-RoPE's row and
    # column axes too, so with the image first the rotary angle from the answer to an image token mixes
    # the question's length with the token's row and column; with the text first the image sits at a
    # fixed distance from the answer and its angles say only where a token is. Both models are trained
    # image first: a stage-1 run of the built-in model in this order (ninth session, 3,000 steps) answered
    # colours 0.50 where the image-first run gets 0.97, and relations stayed at chance
    # (`--text-before-images` repeats it).
    text_before_images: bool = False
    # A model that shows its work before some answers (one trained with `--show-work`, for relations: "red
    # circle (5, 2), blue square (1, 6)" then the answer) writes this between the two; the pipeline splits them,
    # the chat shows both, and the evaluation scores the answer alone. "" for a model that writes only answers
    # (the shipped built-in model: its show-work candidate was not adopted, docs/checkpoint-history.md).
    answer_after: str = ""


@dataclass
class GenerationDefaults:
    num_inference_steps: int = 25
    guidance_scale: float = 6.0
    height: int = 1024
    width: int = 1024
    negative_prompt: str = ""
    sampler: str = "dpm++"  # one of decoder.SAMPLERS; ddpm at 100 steps is the official setting
    # Share of the steps, from the first, that are guided; the rest cost about half (decoder.denoise)
    guidance_cutoff: float = 1.0
    # Every how many unguided steps the DiT runs all its blocks; the others reuse its middle blocks'
    # residual (block_cache.py). 1: every step runs every block. Edits have their own, because an edit's
    # target must also keep what the instruction leaves alone, and reuse costs edits more than new images.
    cache_interval: int = 1
    edit_cache_interval: int = 1
    # Images drawn per image shown; more than one keeps the one the model rates best (self_check.py)
    candidates: int = 1
    edit_candidates: int = 1
    # Target captions an edit writes by beam search; more than one keeps the beam that changes the model's
    # own description of the source least (caption_choice.py)
    edit_caption_beams: int = 1
    # Text layers the prompt rewrite runs (None: all). A model with answer layers (feature_layers) can rewrite
    # through its frozen trunk alone when the trunk already rewrites as well: the built-in model's does, every
    # one of 300 paraphrased validation prompts (scripts/rewrite_layers_study.py), in about 0.7 of the time.
    rewrite_layers: int | None = None
    max_new_tokens: int = 256
    allowed_sizes: tuple[int, ...] = (768, 1024, 1280)


@dataclass
class OmniBridgeConfig:
    model_id: str = "omnibridge"
    llm_hidden_size: int = 3584
    bilm: BiLMConfig = field(default_factory=BiLMConfig)
    retrieval: RetrievalConfig = field(default_factory=RetrievalConfig)
    prompts: PromptConfig = field(default_factory=PromptConfig)
    generation: GenerationDefaults = field(default_factory=GenerationDefaults)
    max_context_tokens: int = 8192  # chat history is truncated, oldest first, to fit this budget
    max_images_in_context: int = 8
    # The LLM layers whose output (after the final norm) the BiLM and the retrieval heads read; None: all of
    # them, as the official model does. A model with answer layers stacked on a frozen language model
    # (training/grow.py, `--answer-layers`) reads only the frozen ones, so the new layers change its answers
    # and captions but not the states that its alignment and retrieval heads were trained on.
    feature_layers: int | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "OmniBridgeConfig":
        nested = {"bilm": BiLMConfig, "retrieval": RetrievalConfig, "prompts": PromptConfig,
                  "generation": GenerationDefaults}
        kwargs = {}
        for f in fields(cls):
            if f.name not in data:
                continue
            value = data[f.name]
            kwargs[f.name] = _build(nested[f.name], value) if f.name in nested else value
        return cls(**kwargs)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2))

    @classmethod
    def load(cls, path: str | Path) -> "OmniBridgeConfig":
        return cls.from_dict(json.loads(Path(path).read_text()))


def _build(kind, data: dict):
    known = {f.name: f for f in fields(kind)}
    values = {}
    for key, value in data.items():
        if key in known:
            values[key] = tuple(value) if isinstance(value, list) else value
    return kind(**values)
