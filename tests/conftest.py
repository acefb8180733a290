"""Shared fixtures. Every test runs offline on the CPU."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("OMNIBRIDGE_DEVICE", "cpu")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(int(os.environ.get("OMNIBRIDGE_TEST_THREADS", min(2, torch.get_num_threads()))))


@pytest.fixture(scope="session")
def tiny_model():
    """An untrained micro OmniBridge (random weights: for testing the code paths only)."""
    from omnibridge.training.assemble import build_untrained_model
    from omnibridge.training.builders import build_decoder
    from omnibridge.training.presets import quick_preset

    torch.manual_seed(0)
    preset = quick_preset()
    return build_untrained_model(preset, build_decoder(preset.decoder))


@pytest.fixture(scope="session")
def tiny_pipeline(tiny_model):
    from omnibridge import OmniBridgePipeline
    from omnibridge.modeling.devices import placement

    return OmniBridgePipeline(tiny_model, placement("cpu"))


@pytest.fixture
def deeper_dit(tiny_pipeline):
    """The tiny decoder's DiT has two blocks, so no middle ones: the same config at six (HunyuanDiT wants
    an even count): four middle blocks, and long skips from 0 to 5 and from 1 to 4."""
    from diffusers import HunyuanDiT2DModel

    torch.manual_seed(0)
    config = {k: v for k, v in tiny_pipeline.decoder.transformer.config.items() if not k.startswith("_")}
    return HunyuanDiT2DModel.from_config({**config, "num_layers": 6}).eval()


@pytest.fixture
def block_calls(monkeypatch):
    """How many times any HunyuanDiTBlock really ran (patched before a cache wraps the blocks)."""
    from diffusers.models.transformers.hunyuan_transformer_2d import HunyuanDiTBlock

    calls = []
    forward = HunyuanDiTBlock.forward

    def counting(self, *args, **kwargs):
        calls.append(self)
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(HunyuanDiTBlock, "forward", counting)
    return calls


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_pipeline, tmp_path_factory):
    folder = tmp_path_factory.mktemp("models") / "tiny-omnibridge"
    tiny_pipeline.save_pretrained(folder)
    return folder


@pytest.fixture
def scene_image():
    import random

    from omnibridge.shapes import render, sample_scene

    return render(sample_scene(random.Random(11), 2))


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def app_server(tiny_pipeline, tmp_path_factory):
    """The real app (real Chroma, real SQLite) on the micro model, on a free local port."""
    from omnibridge.config import AppSettings
    from omnibridge.ui.app import build_demo, launch

    data_dir = tmp_path_factory.mktemp("appdata")
    # PyTorch's DiT throughout: ONNX Runtime would take over the shared pipeline's DiT half-way through the session
    # (test_onnx_dit.py tests it)
    settings = AppSettings(model="tiny", data_dir=data_dir, port=free_port(), seed_gallery=24, queue_size=64,
                           onnx_dit=False)
    demo = build_demo(tiny_pipeline, settings)
    assert demo.omnibridge_context.seeding.wait(timeout=120), "the built-in gallery was not indexed in 2 minutes"
    _, url, _ = launch(demo, settings, prevent_thread_lock=True, quiet=True)
    yield {"url": url, "demo": demo, "context": demo.omnibridge_context, "settings": settings}
    demo.close()


@pytest.fixture(scope="session")
def client(app_server):
    from gradio_client import Client

    return Client(app_server["url"], verbose=False)
