"""Model offload (offload.py): which parts move when, and that every path brings its parts before they run.

No GPU here, so the tests park parts on the meta device: a part that a path forgot to bring back holds no
values there, and the forward pass through it fails instead of quietly running on the CPU.
"""

import numpy as np
import pytest
import torch

import omnibridge.pipeline
from omnibridge import OffloadError, OmniBridgePipeline
from omnibridge.config import AppSettings
from omnibridge.offload import ComponentOffload, module_bytes


class MetaParking(ComponentOffload):
    """Parks on the meta device and keeps each part's values aside to put back when it is fetched.

    Embedding tables stay readable where they are parked, as on a real park on the CPU: the edit path looks up
    the T5 encoder's table there rather than bring the whole encoder to the GPU for a few of its rows."""

    def __init__(self, components, device, max_bytes, park_device="meta"):
        self.saved: dict[int, dict[str, torch.Tensor]] = {}
        super().__init__(components, device, max_bytes, park_device="meta")

    def _move(self, module, device):
        if device.type == "meta":
            # every name, tied ones too: moving to and from meta unties them
            self.saved.setdefault(id(module), {
                **{n: t.detach().clone() for n, t in module.named_parameters(remove_duplicate=False)},
                **{n: t.detach().clone() for n, t in module.named_buffers(remove_duplicate=False)}})
            module.to("meta")
            for prefix, table in module.named_modules():
                if isinstance(table, torch.nn.Embedding):
                    table.to_empty(device="cpu")
                    table.weight.data.copy_(self.saved[id(module)][f"{prefix}.weight" if prefix else "weight"])
            return
        module.to_empty(device=device)
        with torch.no_grad():
            for name, value in self.saved[id(module)].items():
                owner, _, leaf = name.rpartition(".")
                getattr(module.get_submodule(owner), leaf).copy_(value)


def is_parked(module: torch.nn.Module) -> bool:
    return any(p.device.type == "meta" for p in module.parameters())  # all but its embedding tables


def test_parts_leave_only_when_the_budget_needs_their_room_least_recently_used_first():
    torch.manual_seed(0)
    parts = {name: torch.nn.Linear(8, 8) for name in "abcd"}
    original = {name: part.weight.detach().clone() for name, part in parts.items()}
    size = module_bytes(parts["a"])
    assert size == (8 * 8 + 8) * 4
    offload = MetaParking(parts, torch.device("cpu"), max_bytes=2 * size)
    assert all(is_parked(part) for part in parts.values()) and offload.resident == []

    offload.use("a")
    offload.use("b")
    assert offload.resident == ["a", "b"] and not is_parked(parts["a"]) and not is_parked(parts["b"])
    offload.use("a")  # nothing moves; "a" is now the most recently used
    assert offload.stats().fetches == 2 and offload.resident == ["b", "a"]
    offload.use("c")  # three do not fit two: "b", the least recently used, goes back
    assert offload.resident == ["a", "c"] and is_parked(parts["b"])
    offload.use("b", "c", "d")  # together over the budget: all three come, and "a" leaves to make room
    assert offload.resident == ["c", "b", "d"] and is_parked(parts["a"])

    stats = offload.stats()
    assert stats.fetches == 5 and stats.moved_bytes == 7 * size  # 5 fetches, "b" and "a" parked once each
    for name in "bcd":  # what came back is what left
        assert torch.equal(parts[name].weight, original[name])


def test_a_budget_that_holds_everything_moves_each_part_once():
    parts = {name: torch.nn.Linear(8, 8) for name in "abc"}
    offload = MetaParking(parts, torch.device("cpu"), max_bytes=10**9)
    for names in (["a"], ["b", "c"], ["a"], ["c"], ["a", "b", "c"]):
        offload.use(*names)
    assert offload.stats().fetches == 3 and sorted(offload.resident) == ["a", "b", "c"]


def test_offload_refuses_what_cannot_work():
    parts = {"a": torch.nn.Linear(4, 4), "b": torch.nn.Linear(4, 4)}
    with pytest.raises(OffloadError, match="runs on cpu already"):
        ComponentOffload(parts, torch.device("cpu"), 100, park_device="cpu")
    with pytest.raises(OffloadError, match="at least 0"):
        MetaParking(parts, torch.device("cpu"), -1)
    offload = MetaParking(parts, torch.device("cpu"), 100)
    with pytest.raises(KeyError, match="known: \\['a', 'b'\\]"):
        offload.use("c")
    shared = torch.nn.Linear(4, 4)
    with pytest.raises(ValueError, match="share a tensor"):
        MetaParking({"x": shared, "y": torch.nn.Sequential(shared)}, torch.device("cpu"), 100)


def test_the_pipeline_and_the_app_refuse_offload_without_a_gpu(tiny_model_dir, monkeypatch):
    with pytest.raises(OffloadError, match="needs a GPU"):
        OmniBridgePipeline.from_pretrained(tiny_model_dir, device="cpu", max_gpu_memory_gb=8)
    monkeypatch.setenv("OMNIBRIDGE_MAX_GPU_MEMORY", "20")
    assert AppSettings.from_args([]).max_gpu_memory == 20.0
    assert AppSettings.from_args(["--max-gpu-memory", "7.5"]).max_gpu_memory == 7.5
    monkeypatch.delenv("OMNIBRIDGE_MAX_GPU_MEMORY")
    assert AppSettings.from_args([]).max_gpu_memory is None


def every_path(pipe, image) -> dict:
    """Chat, draw (through the BiLM and the decoder alone, with the self-check), edit from the source
    image's latents, and embed: every part of the model runs."""
    generated = pipe.generate("two red circles", seed=3, num_inference_steps=3, guidance_scale=2.0, num_images=2,
                              candidates=2, negative_prompt="blurry")
    alone = pipe.generate("a blue square", seed=4, num_inference_steps=2, use_learned_queries=False)
    edited = pipe.edit(image, "make the circle blue", seed=5, num_inference_steps=4, strength=0.5)
    return {
        "answer": pipe.chat([{"role": "user", "content": "How many circles are there?"}], images=[image],
                            max_new_tokens=8),
        "caption": generated.caption,
        "scores": generated.scores,
        "images": [np.asarray(i, dtype=int) for i in generated.images + alone.images + edited.images],
        "edit_caption": edited.caption,
        "vectors": np.concatenate([pipe.embed_texts(["a red circle"]), pipe.embed_images([image])]),
    }


def test_every_path_brings_its_parts_and_gives_what_it_gives_without_offload(tiny_pipeline, tiny_model_dir,
                                                                           scene_image, monkeypatch):
    def load():
        return OmniBridgePipeline.from_pretrained(tiny_model_dir, device="cpu", model_thread=tiny_pipeline.model_thread)

    expected = every_path(load(), scene_image)
    monkeypatch.setattr(omnibridge.pipeline, "ComponentOffload", MetaParking)
    pipe = load()
    pipe.enable_model_offload(0)  # room for nothing: each step sends every other part back
    assert all(is_parked(part) for part in pipe.offload.components.values())
    pipe.warm_up()
    got = every_path(pipe, scene_image)

    assert got["answer"] == expected["answer"] and got["caption"] == expected["caption"]
    assert got["edit_caption"] == expected["edit_caption"] and got["scores"] == pytest.approx(expected["scores"])
    for ours, theirs in zip(got["images"], expected["images"], strict=True):
        assert np.abs(ours - theirs).max() <= 1
    np.testing.assert_allclose(got["vectors"], expected["vectors"], atol=1e-5)
    stats = pipe.offload.stats()
    assert set(pipe.offload.components) == {"llm", "alignment", "transformer", "vae", "text_encoder",
                                            "text_encoder_2"}
    assert stats.resident == ["llm", "alignment"] and stats.fetches > 10  # the last path, embedding, needs both
    assert pipe.info()["memory"]["offload"]["moves_to_gpu"] == stats.fetches


def test_the_bilm_path_never_runs_the_t5_encoder(tiny_model_dir, tiny_pipeline, monkeypatch):
    """OmniBridge fills the T5 slot with the BiLM and keeps only the T5 tokenizer's mask: the T5 encoder (mT5-XL,
    4.4 GB, at full size) runs only for the decoder-alone path and the negative prompt."""
    pipe = OmniBridgePipeline.from_pretrained(tiny_model_dir, device="cpu", model_thread=tiny_pipeline.model_thread)
    pipe.warm_up()
    calls = []
    pipe.decoder.text_encoder_2.register_forward_hook(lambda *_: calls.append(1))
    pipe.generate("a red circle", seed=0, num_inference_steps=2)
    assert calls == []
    pipe.generate("a red circle", seed=0, num_inference_steps=2, use_learned_queries=False)
    assert calls == [1]
