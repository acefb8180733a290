"""Unit tests of the OmniBridge modules: BiLM, schedule, retrieval heads, alignment."""

import math

import pytest
import torch

from omnibridge.modeling.alignment import OmniBridgeAlignment
from omnibridge.modeling.bilm import BiLM, relative_position_bucket
from omnibridge.modeling.config import BiLMConfig, OmniBridgeConfig, RetrievalConfig
from omnibridge.modeling.retrieval import AttentionPoolingBlock
from omnibridge.modeling.schedule import OFFICIAL_PHASES, SchedulePhase, SemanticGuidedSchedule

CONFIG = BiLMConfig(d_model=32, d_kv=8, num_heads=4, d_ff=48, num_layers=3, cross_attention_layers=(0, 2),
                    num_query_tokens=6, dropout_rate=0.0)


@pytest.fixture
def bilm():
    torch.manual_seed(0)
    model = BiLM(CONFIG).eval()
    with torch.no_grad():
        model.query_tokens.normal_()
    return model


def test_bilm_output_shape_and_official_names(bilm):
    memory = torch.randn(2, 5, 32)
    assert bilm(memory, torch.ones(2, 5)).shape == (2, 6, 32)
    names = set(dict(bilm.named_parameters()))
    assert "block.0.layer.0.SelfAttention.relative_attention_bias.weight" in names
    assert "block.1.layer.0.SelfAttention.relative_attention_bias.weight" not in names  # shared from block 0
    assert "block.0.layer.1.EncDecAttention.q.weight" in names  # cross-attention block
    assert "block.0.layer.2.DenseReluDense.wi_0.weight" in names
    assert "block.1.layer.1.DenseReluDense.wo.weight" in names  # no cross-attention in block 1
    assert "final_layer_norm.weight" in names and "query_tokens" in names


def test_bilm_is_bidirectional(bilm):
    memory = torch.randn(1, 5, 32)
    inputs = torch.randn(1, 6, 32)
    base = bilm(memory, torch.ones(1, 5), inputs_embeds=inputs)
    changed = inputs.clone()
    changed[0, -1] += 1.0
    out = bilm(memory, torch.ones(1, 5), inputs_embeds=changed)
    assert not torch.allclose(base[0, 0], out[0, 0])  # the first position sees the last one


def test_bilm_ignores_padded_memory(bilm):
    memory = torch.randn(1, 5, 32)
    padded = torch.cat([memory, torch.randn(1, 3, 32) * 100], dim=1)
    mask = torch.tensor([[1] * 5 + [0] * 3])
    assert torch.allclose(bilm(memory, torch.ones(1, 5)), bilm(padded, mask), atol=1e-5)


def test_attention_has_no_sqrt_d_scaling(bilm):
    attention = bilm.block[1].layer[0].SelfAttention
    x = torch.randn(1, 4, 32)
    bias = torch.zeros(1, 1, 4, 4)
    q = attention.q(x).view(1, 4, 4, 8).transpose(1, 2)
    k = attention.k(x).view(1, 4, 4, 8).transpose(1, 2)
    v = attention.v(x).view(1, 4, 4, 8).transpose(1, 2)
    expected = torch.softmax(q @ k.transpose(-1, -2), -1) @ v  # T5: no 1/sqrt(d)
    expected = attention.o(expected.transpose(1, 2).reshape(1, 4, 32))
    assert torch.allclose(attention(x, None, bias), expected, atol=1e-5)


def test_query_replacement_is_position_aligned(bilm):
    inputs = torch.randn(1, 6, 32)
    mask = torch.tensor([[True, False, True, False, False, False]])
    mixed = bilm.mix_inputs(inputs, mask, 1)
    assert torch.equal(mixed[0, 0], bilm.query_tokens[0, 0]) and torch.equal(mixed[0, 1], inputs[0, 1])
    assert torch.equal(bilm.mix_inputs(None, None, 2), bilm.query_tokens.expand(2, -1, -1))


def test_relative_position_buckets_are_bidirectional():
    positions = torch.tensor([-5, -1, 0, 1, 5, 200])
    buckets = relative_position_bucket(positions, 32, 128)
    assert buckets[2] == 0 and buckets[3] != buckets[1] and buckets.max() < 32


def test_schedule_rises_from_zero_to_all_queries():
    schedule = SemanticGuidedSchedule()
    assert schedule.probability_range(0.0) == (0.0, 0.0)
    assert schedule.probability_range(0.999) == (1.0, 1.0)
    lows = [schedule.probability_range(p / 100)[0] for p in range(100)]
    assert lows == sorted(lows)
    generator = torch.Generator().manual_seed(0)
    assert not schedule.sample_mask(4, 10, 0.0, generator).any()
    assert schedule.sample_mask(4, 10, 1.0, generator).all()
    middle = schedule.sample_mask(64, 100, 0.5, generator).float().mean()
    assert 0.1 < middle < 0.95


def test_schedule_is_seeded_and_exempts_edits():
    schedule = SemanticGuidedSchedule()
    a = schedule.sample_mask(3, 8, 0.6, torch.Generator().manual_seed(5))
    b = schedule.sample_mask(3, 8, 0.6, torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    exempt = torch.tensor([False, True, False])
    masked = schedule.sample_mask(3, 8, 1.0, torch.Generator().manual_seed(5), exempt=exempt)
    assert not masked[1].any() and masked[0].all()
    with pytest.raises(ValueError):
        SemanticGuidedSchedule((SchedulePhase(0.5, 0.0, 0.0),))
    assert len(OFFICIAL_PHASES) == 6


def test_schedule_with_longer_final_all_queries_phase():
    schedule = SemanticGuidedSchedule.with_final_all_queries(0.5)
    assert schedule.probability_range(0.0) == (0.0, 0.0)
    assert schedule.probability_range(0.49) != (1.0, 1.0)
    assert schedule.probability_range(0.5) == (1.0, 1.0)
    # the ramp keeps the official order of phases, only compressed
    assert [p.p_min for p in schedule.phases[:-1]] == [p.p_min for p in OFFICIAL_PHASES[:-1]]
    with pytest.raises(ValueError):
        SemanticGuidedSchedule.with_final_all_queries(1.0)


def test_pooling_is_padding_independent_when_masked():
    torch.manual_seed(0)
    head = AttentionPoolingBlock(32, 4, 16).eval()
    x = torch.randn(1, 5, 32)
    padded = torch.cat([x, torch.zeros(1, 4, 32)], dim=1)
    mask = torch.tensor([[1] * 5 + [0] * 4])
    assert torch.allclose(head(x, torch.ones(1, 5)), head(padded, mask), atol=1e-5)
    # The official behaviour (no mask) depends on the padding: kept for reproducing its numbers.
    assert not torch.allclose(head(x), head(padded), atol=1e-4)


def _alignment(mask_padding: bool) -> OmniBridgeAlignment:
    torch.manual_seed(0)
    config = OmniBridgeConfig(llm_hidden_size=24, bilm=CONFIG,
                              retrieval=RetrievalConfig(num_image_queries=4, num_text_queries=3, embed_dim=16,
                                                        pool_heads=4, mask_padding=mask_padding))
    return OmniBridgeAlignment(config).eval()


def test_retrieval_embeddings_are_unit_vectors_and_batch_independent():
    alignment = _alignment(mask_padding=True)
    short, long = torch.randn(1, 3, 24), torch.randn(1, 7, 24)
    alone = alignment.embed_text_states(short, torch.ones(1, 3))
    batch = torch.cat([torch.cat([short, torch.zeros(1, 4, 24)], 1), long])
    mask = torch.tensor([[1] * 3 + [0] * 4, [1] * 7])
    together = alignment.embed_text_states(batch, mask)
    assert torch.allclose(alone[0], together[0], atol=1e-5)
    assert torch.allclose(together.norm(dim=-1), torch.ones(2), atol=1e-5)
    official = _alignment(mask_padding=False)
    assert not torch.allclose(official.embed_text_states(short, torch.ones(1, 3))[0],
                              official.embed_text_states(batch, mask)[0], atol=1e-4)


def test_alignment_keys_are_the_official_top_level_names():
    keys = set(_alignment(True).state_dict())
    for name in ("downsampling_linear_layer.weight", "bilm.query_tokens", "image_queries", "text_queries",
                 "image_proj.norm1_q.weight", "image_proj_1.cross_attn.q.bias", "text_proj.cross_attn.proj.weight",
                 "text_proj_1.norm1_v.bias", "fusion_alpha_image", "fusion_alpha_text", "logit_scale"):
        assert name in keys
    assert math.isclose(float(_alignment(True).logit_scale), math.log(1 / 0.07), rel_tol=1e-6)


def test_stage2_loss_counts_the_padding_that_hunyuandits_attention_pool_reads():
    from omnibridge.training.align_stage import alignment_loss, masked_mse

    target = torch.randn(2, 6, 8)
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 0]])
    wrong_padding = torch.where(mask[..., None].bool(), target, target + 3.0)
    assert masked_mse(wrong_padding, target, mask) == 0
    assert alignment_loss(wrong_padding, target) > 1.0
    assert alignment_loss(target, target) == 0


def test_native_size_image_patches_equal_the_processors_own():
    """The fast path for images that need no resizing gives the processor's exact pixel values (the
    built-in 8-pixel patches at 64x64 and the official 14-pixel ones at 56x84), and steps aside otherwise."""
    from PIL import Image
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from omnibridge.modeling.image_patches import patches_at_native_size

    rng = torch.Generator().manual_seed(0)

    def noise(width: int, height: int, mode: str = "RGB") -> Image.Image:
        pixels = torch.randint(0, 256, (height, width, 3), generator=rng, dtype=torch.uint8).numpy()
        return Image.fromarray(pixels).convert(mode)

    built_in = Qwen2VLImageProcessorPil(patch_size=8, merge_size=2, temporal_patch_size=2,
                                        size={"shortest_edge": 64 * 64, "longest_edge": 64 * 64})
    official = Qwen2VLImageProcessorPil()  # 14-pixel patches, merged 2x2
    cases = [(built_in, [noise(64, 64), noise(64, 64, "L"), noise(64, 64, "RGBA")]),
             (official, [noise(84, 56), noise(84, 56)])]
    for processor, images in cases:
        fast = patches_at_native_size(processor, images)
        reference = processor(images=images, return_tensors="pt")
        assert fast is not None
        assert fast["pixel_values"].shape == reference["pixel_values"].shape
        torch.testing.assert_close(fast["pixel_values"], reference["pixel_values"], atol=1e-5, rtol=0)
        assert torch.equal(fast["image_grid_thw"], reference["image_grid_thw"])
    # a size the processor resizes, and two sizes in one call: the processor's own path
    assert patches_at_native_size(built_in, [noise(100, 50)]) is None
    assert patches_at_native_size(built_in, [noise(64, 64), noise(32, 128)]) is None
