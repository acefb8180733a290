"""Model sizes and training budgets for the built-in `shapes` model and the micro `quick` model.

The sizes were chosen by measurement on the 2-core CPU this project trains on (see
`shared/research/decoder-feasibility.md` and the model card): the decoder's VAE keeps a 32x32x4
latent (3x compression, so corners and small triangles survive) and the DiT reads it in 4x4 patches,
so it still sees only 64 tokens per image. The shipped DiT is wider and deeper than this preset's
(`--dit-width 320 --dit-layers 8`, trained on a GPU: see the model card); the preset keeps the size a
CPU trains in hours.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class DecoderPreset:
    vae_channels: tuple[int, ...] = (16, 32)  # two blocks: 64x64 pixels -> 32x32 latent
    latent_channels: int = 4
    image_size: int = 64
    patch_size: int = 4
    hidden_size: int = 192
    num_layers: int = 6
    num_heads: int = 4
    text_dim: int = 128  # both text slots (HunyuanDiT: 1024 BERT, 2048 mT5)
    text_len: int = 24
    text_layers: int = 2
    vae_steps: int = 900
    vae_batch: int = 32
    vae_lr: float = 2e-3
    dit_minutes: float = 100.0
    dit_steps: int = 0  # 0: train for dit_minutes instead
    dit_cooldown_steps: int = 0  # the last N of dit_steps decay the learning rate linearly to zero
    dit_batch: int = 32
    # Steps (of the work dir) that draw the early mix, single objects and relations over-sampled
    # (decoder_data.py). None: the curriculum, 800 for a new DiT and 0 for one trained on.
    dit_early_mix_steps: int | None = None
    dit_lr: float = 5e-4
    caption_dropout: float = 0.1
    eval_every: int = 500
    # 150 validation prompts: the checks pick the EMA the stage keeps, and with 60 the best of several
    # checks was noise (eighteenth session: 0.650 at a check, 0.547 on 150 other prompts, the start 0.607)
    eval_prompts_per_category: int = 25


@dataclass
class LLMPreset:
    hidden_size: int = 256
    num_layers: int = 4
    # Layers stacked on the trained language model for answers only (training/grow.py): stage 1 then trains
    # just them, and the BiLM and retrieval heads keep reading the frozen layers' states, so a stage-1 run
    # needs no new stages 2 and 3 (OmniBridgeConfig.feature_layers). 0: none.
    answer_layers: int = 0
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 704
    vision_depth: int = 4
    vision_dim: int = 128
    vision_heads: int = 4
    patch_size: int = 8  # 64x64 image -> 8x8 patches -> 16 LLM tokens after the 2x2 merge
    # M-RoPE gives an image token's row and column the *lowest* rotary frequencies (Qwen2-VL splits them
    # temporal | height | width). At the usual base of 10,000 a step of one column on our 4x4 grid turns
    # the width dimensions by at most 0.003 rad: the language model cannot tell left from right, and
    # relation answers sat at chance. At base 10 one column turns them by 0.11-0.24 rad.
    rope_theta: float = 10.0
    # PromptConfig.text_before_images; True tried in the ninth and twenty-fourth sessions (worse)
    text_before_images: bool = False
    vocab_size: int = 700
    max_length: int = 256
    steps: int = 4000
    batch: int = 48
    lr: float = 1e-3
    # Question types re-weighted against llm_data.QUESTION_MIX, e.g. {"relation": 12}: a phase warm from
    # a trained model may drill one type, at a lower lr (trained on relations alone, the model learns
    # them but forgets the rest: scripts/relations_alone.py).
    question_weights: dict[str, float] = field(default_factory=dict)
    vqa_share: float | None = None  # single-question VQA's share of the conversations (None: TASK_MIX's)
    # Question types (of qa.WORKING_TYPES) whose answers show their work first (qa.QuestionAnswer.reply): where
    # the objects are, then the answer. The trained model's config then gets PromptConfig.answer_after, so the
    # pipeline splits the two.
    show_work: tuple[str, ...] = ()
    # > 0: also teach the first answer layer's heads to attend to the objects a question names, with this weight
    # on the pointing loss (llm_stage.AttentionTargets). 0: the answers alone teach where to look.
    attend_weight: float = 0.0
    attend_at: str = "answer"  # where the taught heads look from: llm_stage.ATTEND_AT
    # How stage 1 averages its loss (llm_stage.accumulate_gradients): "token" (every checkpoint up to the
    # ninth session's) or "conversation", which stops one-word answers drowning under captions.
    answer_weighting: str = "token"
    vision_steps: int = 1500  # stage 1b: the vision tower alone, language model frozen
    vision_lr: float = 5e-4


@dataclass
class AlignPreset:
    bilm_layers: int = 4
    bilm_heads: int = 4
    bilm_d_ff: int = 384
    cross_attention_layers: tuple[int, ...] = (0, 2)
    image_queries: int = 16
    text_queries: int = 12
    retrieval_dim: int = 128
    stage2_steps: int = 3000
    stage2_batch: int = 64
    stage2_lr: float = 1e-3
    all_queries_share: float = 0.15  # last share of stage 2 in the all-queries setting (the official schedule)
    stage3_steps: int = 3000
    stage3_batch: int = 128  # captions per step; half as many images
    stage3_lr: float = 5e-4
    stage3_pool_scenes: int = 40_000  # frozen-LLM states computed once, sampled by every step
    stage3_partial_share: float = 0.25  # scenes of a batch that also bring a short query (0: whole descriptions only)


@dataclass
class TrainPreset:
    name: str
    decoder: DecoderPreset = field(default_factory=DecoderPreset)
    llm: LLMPreset = field(default_factory=LLMPreset)
    align: AlignPreset = field(default_factory=AlignPreset)
    # The packaged model's default for edits: best of 4 by its own embeddings took the built-in
    # model's edits from 0.21 to 0.38 (120 held-out edits; README, "self-check"); with the caption choice
    # below, best of 8 took the 60 held-out edits from 0.48 to 0.52 at 1.9x an edit's time
    edit_candidates: int = 8
    # ... and of the target captions it writes by beam search, the one that changes its own description of
    # the source least (caption_choice.py): 0.40 -> 0.48 on the built-in model's 60 held-out edits
    edit_caption_beams: int = 4
    # Guide only the first share of the denoising steps; the unguided rest cost about half a step each
    # (README, performance, "guidance cutoff": on the built-in model 0.3 kept generation and editing
    # and cut an image's time by a fifth)
    guidance_cutoff: float = 0.3
    # After the guided steps, run every DiT block on one step in 3 and reuse the middle blocks' residual on the
    # others (block_cache.py): on the built-in model generation 0.66 -> 0.66 and editing 0.567 -> 0.55 on the
    # evaluation's prompts and edits, an image in x0.78 of the time (docs/performance-notes.md, block reuse)
    cache_interval: int = 3
    edit_cache_interval: int = 3
    # Re-rank image -> captions search by the description likelihood with this weight (rerank.py): on the
    # built-in model i2t R@1 0.869 -> 0.929 on validation scenes, where 1.0 was chosen, and 0.865 -> 0.912 held
    # out (docs/evaluation-notes.md)
    caption_rerank_weight: float = 1.0
    # The packaged model's sampler and steps: on the built-in model UniPC at 15 steps matched DPM-Solver++
    # at 20 on validation prompts and came within 2 points of it on the evaluation's, with a quarter fewer
    # denoiser calls; every deterministic sampler has converged by 20 steps (README, performance, "fewer steps")
    sampler: str = "unipc"
    inference_steps: int = 15
    # Store the packaged language model's and decoder's weights in float16 (loading casts them to the
    # device's dtype): the built-in model must stay under 60 MB, and a float16 copy of the shipped
    # language model scored the same held-out understanding and retrieval as the float32 one (fifteenth
    # session: 0.828 both; R@1 within one query of 1,000)
    package_half: bool = True

    def to_dict(self) -> dict:
        return asdict(self)


def quick_preset() -> TrainPreset:
    """A micro model that trains through every stage in well under a minute (tests)."""
    return TrainPreset(
        name="quick",
        edit_candidates=1,
        edit_caption_beams=1,
        guidance_cutoff=1.0,
        cache_interval=1,  # its 2-block DiT has no middle blocks to reuse
        edit_cache_interval=1,
        sampler="dpm++",  # the micro model's accuracy is never measured: it keeps the earlier default
        inference_steps=20,
        package_half=False,
        decoder=DecoderPreset(vae_channels=(8, 16), hidden_size=32, num_layers=2, num_heads=2, text_dim=32,
                              text_layers=1, vae_steps=25, vae_batch=8, dit_minutes=0, dit_steps=30, dit_batch=8,
                              dit_lr=1e-3, eval_every=0, eval_prompts_per_category=2),
        llm=LLMPreset(hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=64,
                      vision_depth=1, vision_dim=16, vision_heads=2, vocab_size=400, steps=30, batch=8, vision_steps=30),
        align=AlignPreset(bilm_layers=2, bilm_heads=2, bilm_d_ff=64, cross_attention_layers=(0,), image_queries=4,
                          text_queries=4, retrieval_dim=16, stage2_steps=30, stage2_batch=8, stage3_steps=80,
                          stage3_batch=32, stage3_pool_scenes=64, stage3_lr=3e-3),
    )


PRESETS = {"shapes": lambda: TrainPreset(name="shapes"), "quick": quick_preset}


def get_preset(name: str) -> TrainPreset:
    try:
        return PRESETS[name]()
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}") from None
