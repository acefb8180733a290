"""Put the built-in model's parts together into one `LoadedModel` (and so one model folder)."""

from __future__ import annotations

import random
from dataclasses import replace

from ..modeling.alignment import OmniBridgeAlignment
from ..modeling.config import GenerationDefaults, OmniBridgeConfig, PromptConfig
from ..modeling.decoder import HunyuanDecoder
from ..modeling.loading import LoadedModel
from .builders import build_image_processor, build_llm, build_llm_tokenizer
from .llm_data import tokenizer_corpus
from .presets import TrainPreset

# The built-in model answers a drawing request with <img>caption</img> and an edit with
# <edit>caption</edit>; its rewrite and edit instructions are the user's own words, so chat and
# the Generate/Edit tab are the same task for it.
SHAPES_PROMPTS = PromptConfig(rewrite="{prompt}", edit="{instruction}", describe="Describe the image.",
                              edit_open="<edit>", edit_close="</edit>")


def shapes_config(preset: TrainPreset, decoder: HunyuanDecoder, llm_hidden_size: int) -> OmniBridgeConfig:
    from ..modeling.config import BiLMConfig, RetrievalConfig

    align = preset.align
    d_model = decoder.text_encoder_2.config.d_model  # the BiLM writes into the decoder's T5 slot
    return OmniBridgeConfig(
        model_id=f"omnibridge-{preset.name}",
        llm_hidden_size=llm_hidden_size,
        bilm=BiLMConfig(d_model=d_model, d_kv=d_model // align.bilm_heads, num_heads=align.bilm_heads,
                        d_ff=align.bilm_d_ff, num_layers=align.bilm_layers,
                        cross_attention_layers=align.cross_attention_layers,
                        num_query_tokens=decoder.t5_length, dropout_rate=0.0),
        retrieval=RetrievalConfig(num_image_queries=align.image_queries, num_text_queries=align.text_queries,
                                  embed_dim=align.retrieval_dim, pool_heads=4 if d_model >= 64 else 2,
                                  caption_rerank_weight=preset.caption_rerank_weight),
        prompts=replace(SHAPES_PROMPTS, text_before_images=preset.llm.text_before_images),
        generation=GenerationDefaults(num_inference_steps=preset.inference_steps, sampler=preset.sampler,
                                      guidance_scale=2.0, height=decoder.sample_size,
                                      width=decoder.sample_size, max_new_tokens=40,
                                      allowed_sizes=(decoder.sample_size,),
                                      edit_candidates=preset.edit_candidates,
                                      edit_caption_beams=preset.edit_caption_beams,
                                      guidance_cutoff=preset.guidance_cutoff,
                                      cache_interval=preset.cache_interval,
                                      edit_cache_interval=preset.edit_cache_interval),
        max_context_tokens=1024,
        max_images_in_context=8,
    )


def build_untrained_model(preset: TrainPreset, decoder: HunyuanDecoder, seed: int = 0) -> LoadedModel:
    """Fresh LLM (tokenizer trained on the Shapes corpus) and alignment around a given decoder."""
    tokenizer = build_llm_tokenizer(tokenizer_corpus(random.Random(f"{seed}/tokenizer")), preset.llm.vocab_size)
    llm = build_llm(preset.llm, tokenizer).eval()
    config = shapes_config(preset, decoder, llm.config.text_config.hidden_size)
    alignment = OmniBridgeAlignment(config).eval()
    return LoadedModel(config, llm, tokenizer, build_image_processor(preset.llm), alignment, decoder,
                       "omnibridge", "untrained")
