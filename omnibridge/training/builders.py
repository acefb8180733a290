"""Fresh (untrained) components of the built-in model, built from a preset.

Every part is a stock class: HunyuanDiT2DModel, AutoencoderKL, BertModel and T5EncoderModel for the
decoder, Qwen2-VL for the LLM. Only their sizes are tiny.
"""

from __future__ import annotations

from pathlib import Path

from diffusers import AutoencoderKL, DDPMScheduler, HunyuanDiT2DModel
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import BertConfig, BertModel, PreTrainedTokenizerFast, T5Config, T5EncoderModel

from ..modeling.decoder import HunyuanDecoder, make_sampler
from ..shapes.captions import NUMBER_WORDS, RELATION_PHRASES
from ..shapes.world import COLOR_NAMES, SHAPES, SIZE_NAMES
from .presets import DecoderPreset, LLMPreset

CAPTION_SPECIAL_TOKENS = ("<pad>", "<unk>", "<s>")


def caption_vocabulary() -> list[str]:
    words = {"a", "an", "and", *NUMBER_WORDS, *SIZE_NAMES, *COLOR_NAMES, *SHAPES, *(s + "s" for s in SHAPES)}
    for phrase in RELATION_PHRASES.values():
        words.update(phrase.split())
    return list(CAPTION_SPECIAL_TOKENS) + sorted(words)


def build_caption_tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer over the caption grammar, prefixing <s> so an empty caption is one token."""
    vocab = {word: i for i, word in enumerate(caption_vocabulary())}
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", vocab["<s>"])])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", unk_token="<unk>",
                                   bos_token="<s>", model_max_length=512)


def training_noise_schedule() -> DDPMScheduler:
    """Cosine betas with v-prediction: zero-ish terminal SNR suits 64 px images better than SD's schedule."""
    return DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction",
                         clip_sample=False)


def _latent_side(preset: DecoderPreset) -> int:
    return preset.image_size // 2 ** (len(preset.vae_channels) - 1)


def build_dit(preset: DecoderPreset) -> HunyuanDiT2DModel:
    latent_side = _latent_side(preset)
    return HunyuanDiT2DModel(
        num_attention_heads=preset.num_heads, attention_head_dim=preset.hidden_size // preset.num_heads,
        in_channels=preset.latent_channels, patch_size=preset.patch_size, sample_size=latent_side,
        hidden_size=preset.hidden_size, num_layers=preset.num_layers, mlp_ratio=4.0, learn_sigma=False,
        cross_attention_dim=preset.text_dim, cross_attention_dim_t5=preset.text_dim,
        pooled_projection_dim=preset.text_dim, text_len=preset.text_len, text_len_t5=preset.text_len,
        use_style_cond_and_image_meta_size=False,
    )


def build_decoder(preset: DecoderPreset) -> HunyuanDecoder:
    tokenizer = build_caption_tokenizer()
    latent_side = _latent_side(preset)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=preset.latent_channels, norm_num_groups=8,
        down_block_types=("DownEncoderBlock2D",) * len(preset.vae_channels),
        up_block_types=("UpDecoderBlock2D",) * len(preset.vae_channels),
        block_out_channels=preset.vae_channels, layers_per_block=1, sample_size=preset.image_size,
        mid_block_add_attention=False,
    )
    transformer = build_dit(preset)
    text_encoder = BertModel(BertConfig(
        vocab_size=len(tokenizer), hidden_size=preset.text_dim, num_hidden_layers=preset.text_layers,
        num_attention_heads=4 if preset.text_dim >= 64 else 2, intermediate_size=preset.text_dim * 2,
        max_position_embeddings=preset.text_len, pad_token_id=tokenizer.pad_token_id,
    ), add_pooling_layer=False)
    text_encoder_2 = T5EncoderModel(T5Config(
        vocab_size=len(tokenizer), d_model=preset.text_dim, d_kv=32 if preset.text_dim >= 64 else 16,
        num_heads=preset.text_dim // (32 if preset.text_dim >= 64 else 16), d_ff=preset.text_dim * 2,
        num_layers=preset.text_layers, feed_forward_proj="gated-gelu", dropout_rate=0.0,
        pad_token_id=tokenizer.pad_token_id, decoder_start_token_id=tokenizer.pad_token_id,
    ))
    sampler = make_sampler(training_noise_schedule().config)
    return HunyuanDecoder(transformer, vae, sampler, text_encoder, tokenizer, text_encoder_2, tokenizer,
                          rope_base_size=latent_side // preset.patch_size)


# ------------------------------------------------------------------------------------------- LLM
LLM_SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                      "<|image_pad|>", "<|video_pad|>", "<img>", "</img>", "<edit>", "</edit>")

# Qwen2-VL's own template (system prompt, image placeholders), so `apply_chat_template` users get
# the same text our ChatFormat builds token by token.
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for c in message['content'] %}"
    "{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_llm_tokenizer(corpus: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Byte-level BPE trained on the Shapes corpus: any input text encodes, Shapes words are one token."""
    from tokenizers import decoders, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(LLM_SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   additional_special_tokens=list(LLM_SPECIAL_TOKENS[1:]),
                                   chat_template=CHAT_TEMPLATE, model_max_length=4096)


def build_image_processor(preset: LLMPreset):
    from transformers import Qwen2VLImageProcessorPil

    side = 64  # the Shapes canvas: images are resized to it, so every image is 16 LLM tokens
    return Qwen2VLImageProcessorPil(min_pixels=side * side, max_pixels=side * side, patch_size=preset.patch_size,
                                    merge_size=2, temporal_patch_size=2)


def build_llm(preset: LLMPreset, tokenizer: PreTrainedTokenizerFast):
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in LLM_SPECIAL_TOKENS}
    head_dim = preset.hidden_size // preset.num_heads
    half = head_dim // 2
    mrope = [half // 4, (half - half // 4) // 2, half - half // 4 - (half - half // 4) // 2]
    config = Qwen2VLConfig(
        text_config=dict(
            vocab_size=len(tokenizer), hidden_size=preset.hidden_size, intermediate_size=preset.intermediate_size,
            num_hidden_layers=preset.num_layers, num_attention_heads=preset.num_heads,
            num_key_value_heads=preset.num_kv_heads, max_position_embeddings=1024,
            rope_parameters={"rope_type": "default", "mrope_section": mrope, "rope_theta": preset.rope_theta},
            bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"],
            tie_word_embeddings=True,
        ),
        vision_config=dict(depth=preset.vision_depth, embed_dim=preset.vision_dim, hidden_size=preset.hidden_size,
                           num_heads=preset.vision_heads, mlp_ratio=2, patch_size=preset.patch_size,
                           spatial_merge_size=2, temporal_patch_size=2),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True,
    )
    model = Qwen2VLForConditionalGeneration(config)
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    model.generation_config.do_sample = False
    return model


def decoder_for_new_dit_training(trained_decoder: str | Path, preset: DecoderPreset) -> tuple[HunyuanDecoder, bool]:
    """A trained decoder's VAE, text encoders and tokenizers around the DiT that stage 0 trains next.

    OmniBridge's stage 2 teaches the BiLM to reproduce the decoder's text-encoder output, so a DiT
    trained on the *same* frozen text encoders can replace the old one without stages 2 and 3
    running again: the way HunyuanDiT itself trains on frozen BERT and mT5. The trained DiT is kept
    as the starting point when it has the preset's shape (training it on); otherwise a fresh DiT of
    the preset's shape starts. Returns the decoder and whether its DiT was kept.
    """
    decoder = HunyuanDecoder.from_pretrained(trained_decoder)
    text_dim = decoder.text_encoder_2.config.d_model
    latent_channels = decoder.vae.config.latent_channels
    if (text_dim, latent_channels, decoder.sample_size) != (preset.text_dim, preset.latent_channels, preset.image_size):
        raise ValueError(f"{trained_decoder} has text width {text_dim}, {latent_channels} latent channels and "
                         f"{decoder.sample_size} px images; the preset asks for {preset.text_dim}, "
                         f"{preset.latent_channels} and {preset.image_size}")
    dit = decoder.transformer.config
    kept = ((dit.hidden_size, dit.num_layers, dit.num_attention_heads, dit.patch_size)
            == (preset.hidden_size, preset.num_layers, preset.num_heads, preset.patch_size))
    if not kept:
        decoder.transformer = build_dit(preset).eval()
        decoder.rope_base_size = _latent_side(preset) // preset.patch_size
    return decoder, kept
