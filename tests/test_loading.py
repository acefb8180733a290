"""Model folders: our layout round-trips; the official release's key layout maps completely."""

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from omnibridge import ModelFolderError, OmniBridgePipeline
from omnibridge.modeling.alignment import OmniBridgeAlignment
from omnibridge.modeling.config import BiLMConfig, OmniBridgeConfig, RetrievalConfig
from omnibridge.modeling.devices import placement
from omnibridge.modeling.loading import LoadedModel, official_key_coverage


def test_our_layout_round_trips(tiny_pipeline, tiny_model_dir):
    loaded = OmniBridgePipeline.from_pretrained(tiny_model_dir, device="cpu")
    texts = ["a red circle", "two blue squares"]
    assert np.allclose(loaded.embed_texts(texts), tiny_pipeline.embed_texts(texts), atol=1e-6)
    for name, tensor in tiny_pipeline.alignment.state_dict().items():
        assert torch.equal(tensor, loaded.alignment.state_dict()[name]), name
    assert loaded.config.to_dict() == tiny_pipeline.config.to_dict()


def _truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize("damage, message", [
    (lambda d: shutil.rmtree(d / "decoder" / "vae"), "vae"),
    (lambda d: (d / "alignment.safetensors").unlink(), "alignment.safetensors"),
    (lambda d: (d / "omnibridge_config.json").write_text("{not json"), "corrupt JSON"),
    (lambda d: [f.unlink() for f in (d / "llm").glob("*.safetensors")], "safetensors"),
    # cut in half, as by an interrupted copy or download
    (lambda d: _truncate(next((d / "llm").glob("*.safetensors"))), "Qwen2-VL LLM"),
    (lambda d: _truncate(d / "alignment.safetensors"), "corrupt weights file"),
    (lambda d: _truncate(next((d / "decoder" / "transformer").glob("*.safetensors"))), "HunyuanDiT decoder"),
    (lambda d: _truncate(next((d / "decoder" / "text_encoder_2").glob("*.safetensors"))), "HunyuanDiT decoder"),
])
def test_broken_folders_name_what_is_wrong(tiny_model_dir, tmp_path, damage, message):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, broken)
    damage(broken)
    with pytest.raises(ModelFolderError, match=message):
        OmniBridgePipeline.from_pretrained(broken)


def test_the_negative_prompt_cache_follows_the_text_encoders_weights(tiny_model_dir, tmp_path):
    """The negative encoding on disk is reused across restarts, but not once the text encoders change: a
    retrained decoder keeps its folder name, so a name-keyed cache would serve the old encoders' output."""
    from omnibridge.modeling.decoder import HunyuanDecoder

    cache = tmp_path / "cache"
    assert HunyuanDecoder.from_pretrained(tiny_model_dir / "decoder").load_negative_cache(cache, "tiny") is False
    assert HunyuanDecoder.from_pretrained(tiny_model_dir / "decoder").load_negative_cache(cache, "tiny") is True

    retrained_dir = tmp_path / "decoder"
    shutil.copytree(tiny_model_dir / "decoder", retrained_dir)
    retrained = HunyuanDecoder.from_pretrained(retrained_dir)
    with torch.no_grad():
        for weight in retrained.text_encoder_2.parameters():
            weight.add_(0.05)
    retrained.text_encoder_2.save_pretrained(retrained_dir / "text_encoder_2")
    reloaded = HunyuanDecoder.from_pretrained(retrained_dir)
    assert reloaded.load_negative_cache(cache, "tiny") is False
    assert torch.equal(reloaded.negative_encoding("").embeds_2, reloaded.encode_captions([""]).embeds_2)
    assert len(list(cache.glob("negative-*.pt"))) == 2

    for damaged in cache.glob("negative-*.pt"):
        damaged.write_bytes(b"not a tensor file")
    assert reloaded.load_negative_cache(cache, "tiny") is False  # rebuilt, not a crash


def test_missing_folder_and_offline_hub_id_give_clear_errors(tmp_path):
    with pytest.raises(ModelFolderError, match="not found"):
        OmniBridgePipeline.from_pretrained(tmp_path / "nope")
    with pytest.raises(ModelFolderError, match="Hugging Face Hub"):
        OmniBridgePipeline.from_pretrained("someone/not-cached-model")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelFolderError, match="not an OmniBridge model"):
        OmniBridgePipeline.from_pretrained(tmp_path / "empty")


def _legacy_key(key: str) -> str:
    """transformers 5 names -> the legacy (<=4.49) Qwen2-VL names the official release uses."""
    if key.startswith("model.visual."):
        return key[len("model."):]
    if key.startswith("model.language_model."):
        return "model." + key[len("model.language_model."):]
    return key


@pytest.fixture(scope="module")
def official_folder(tiny_model, tmp_path_factory):
    """A tiny checkpoint written exactly in the official key layout, and a HunyuanDiT folder beside it."""
    from omnibridge.training.builders import build_llm
    from omnibridge.training.presets import LLMPreset

    root = tmp_path_factory.mktemp("official")
    preset = LLMPreset(hidden_size=48, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=64,
                       vision_depth=1, vision_dim=16, vision_heads=2)
    torch.manual_seed(1)
    llm = build_llm(preset, tiny_model.tokenizer)
    llm.config.tie_word_embeddings = False  # the 7B release has its own lm_head
    llm.config.text_config.tie_word_embeddings = False
    llm.lm_head.weight = torch.nn.Parameter(llm.lm_head.weight.detach().clone())
    config = OmniBridgeConfig(llm_hidden_size=48, bilm=BiLMConfig(
        d_model=tiny_model.decoder.text_encoder_2.config.d_model, d_kv=8, num_heads=4, d_ff=40, num_layers=3,
        cross_attention_layers=(0, 2), num_query_tokens=tiny_model.decoder.t5_length, dropout_rate=0.0),
        retrieval=RetrievalConfig(num_image_queries=5, num_text_queries=3, embed_dim=16, pool_heads=16))
    alignment = OmniBridgeAlignment(config)
    with torch.no_grad():
        alignment.bilm.query_tokens.normal_()
    llm.save_pretrained(root / "release")
    tiny_model.tokenizer.save_pretrained(root / "release")
    tiny_model.image_processor.save_pretrained(root / "release")
    for file in (root / "release").glob("*.safetensors"):
        file.unlink()
    state = {_legacy_key(k): v.contiguous() for k, v in llm.state_dict().items()}
    state.update({k: v.contiguous() for k, v in alignment.state_dict().items()})
    half = len(state) // 2  # sharded, as the real release is
    keys = sorted(state)
    save_file({k: state[k] for k in keys[:half]}, root / "release" / "model-00001-of-00002.safetensors")
    save_file({k: state[k] for k in keys[half:]}, root / "release" / "model-00002-of-00002.safetensors")
    index = {"metadata": {}, "weight_map": {k: f"model-0000{1 + (i >= half)}-of-00002.safetensors"
                                            for i, k in enumerate(keys)}}
    (root / "release" / "model.safetensors.index.json").write_text(json.dumps(index))
    tiny_model.decoder.save_pretrained(root / "hunyuandit")
    return root, llm, alignment, config


def test_official_release_layout_loads_every_key(official_folder, tiny_model):
    root, llm, alignment, _ = official_folder
    keys = official_key_coverage(root / "release")
    assert any(k.startswith("visual.") for k in keys) and any(k.startswith("bilm.block.") for k in keys)
    pipe = OmniBridgePipeline.from_pretrained(root / "release", decoder=root / "hunyuandit", device="cpu")
    assert pipe.model.layout == "official"
    assert pipe.config.bilm.num_layers == 3 and pipe.config.bilm.cross_attention_layers == (0, 2)
    assert pipe.config.retrieval.num_image_queries == 5 and pipe.config.retrieval.embed_dim == 16
    assert pipe.config.retrieval.caption_rerank_weight == 0.0  # measured for the built-in model only
    loaded_llm = pipe.llm.state_dict()
    for key, tensor in llm.state_dict().items():
        assert torch.equal(loaded_llm[key], tensor), key
    loaded_alignment = pipe.alignment.state_dict()
    assert set(loaded_alignment) == {k for k in keys if not k.startswith(("visual.", "model.", "lm_head."))}
    for key, tensor in alignment.state_dict().items():
        assert torch.equal(loaded_alignment[key].float(), tensor.float()), key


def test_the_official_release_loads_quantized_consuming_every_key(official_folder, scene_image):
    """bitsandbytes swaps the LLM's linear layers as the weights load: the legacy keys must still all map
    (from_pretrained refuses a folder whose keys do not) and every path must run."""
    root, _, _, _ = official_folder
    whole = OmniBridgePipeline.from_pretrained(root / "release", decoder=root / "hunyuandit", device="cpu")
    pipe = OmniBridgePipeline.from_pretrained(root / "release", decoder=root / "hunyuandit", device="cpu",
                                              quantization="8bit")
    assert type(pipe.llm.model.language_model.layers[0].self_attn.q_proj).__name__ == "Linear8bitLt"
    size = pipe.decoder.sample_size
    pipe.config.generation.allowed_sizes = (size,)
    image = pipe.generate("a red circle", seed=3, num_inference_steps=2, height=size, width=size).images[0]
    assert image.size == (size, size)
    answer = pipe.chat([{"role": "user", "content": "What is this?"}], images=[scene_image], max_new_tokens=4)
    assert isinstance(answer, str)
    texts = ["a red circle", "three squares"]
    cosines = np.sum(pipe.embed_texts(texts) * whole.embed_texts(texts), axis=1)
    assert cosines.min() > 0.999  # measured 0.99999 and 0.99999 (unit vectors)
    assert np.sum(pipe.embed_images([scene_image]) * whole.embed_images([scene_image])) > 0.999  # 0.9999


def test_official_outputs_equal_the_same_weights_set_directly(official_folder, tiny_model, scene_image):
    root, llm, alignment, config = official_folder
    loaded = OmniBridgePipeline.from_pretrained(root / "release", decoder=root / "hunyuandit", device="cpu")
    config.prompts = loaded.config.prompts
    config.generation = loaded.config.generation
    direct = OmniBridgePipeline(LoadedModel(config, llm.eval(), tiny_model.tokenizer, loaded.model.image_processor,
                                            alignment.eval(), loaded.decoder, "official", "direct"), placement("cpu"))
    texts = ["a red circle", "three squares"]
    assert np.allclose(loaded.embed_texts(texts), direct.embed_texts(texts), atol=1e-6)
    assert np.allclose(loaded.embed_images([scene_image]), direct.embed_images([scene_image]), atol=1e-6)
    size = loaded.decoder.sample_size
    kwargs = dict(seed=3, num_inference_steps=2, guidance_scale=2.0, height=size, width=size)
    config.generation.allowed_sizes = (size,)
    a = loaded.generate("a red circle", rewrite=False, **kwargs).images[0]
    b = direct.generate("a red circle", rewrite=False, **kwargs).images[0]
    assert np.array_equal(np.asarray(a), np.asarray(b))


def test_the_official_release_offloaded_answers_as_it_does_whole(official_folder, scene_image, monkeypatch):
    """The full-size path's layout under model offload, its parts parked on the meta device (test_offload.py)."""
    import omnibridge.pipeline
    from tests.test_offload import MetaParking, is_parked

    root, _, _, _ = official_folder

    def run(pipe) -> tuple:
        size = pipe.decoder.sample_size
        pipe.config.generation.allowed_sizes = (size,)
        image = pipe.generate("a red circle", seed=3, num_inference_steps=2, guidance_scale=2.0, height=size,
                              width=size).images[0]
        answer = pipe.chat([{"role": "user", "content": "What is this?"}], images=[scene_image], max_new_tokens=6)
        return np.asarray(image, dtype=int), answer, pipe.embed_texts(["a red circle"])

    whole = run(OmniBridgePipeline.from_pretrained(root / "release", decoder=root / "hunyuandit", device="cpu"))
    monkeypatch.setattr(omnibridge.pipeline, "ComponentOffload", MetaParking)
    offloaded = OmniBridgePipeline.from_pretrained(root / "release", decoder=root / "hunyuandit", device="cpu")
    offloaded.enable_model_offload(0)
    assert is_parked(offloaded.llm) and is_parked(offloaded.decoder.transformer)
    image, answer, vectors = run(offloaded)
    assert np.abs(image - whole[0]).max() <= 1 and answer == whole[1]
    np.testing.assert_allclose(vectors, whole[2], atol=1e-5)


def test_a_plain_qwen2vl_folder_is_refused(official_folder, tmp_path):
    root, llm, _, _ = official_folder
    plain = tmp_path / "plain"
    llm.save_pretrained(plain)
    shutil.copy(root / "release" / "tokenizer.json", plain)
    shutil.copy(root / "release" / "tokenizer_config.json", plain)
    shutil.copy(root / "release" / "preprocessor_config.json", plain)
    with pytest.raises(ModelFolderError, match="without the OmniBridge modules"):
        OmniBridgePipeline.from_pretrained(plain, decoder=root / "hunyuandit")
