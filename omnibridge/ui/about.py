"""About tab: the model card, where the model runs, versions, and how to call the API."""

from __future__ import annotations

import platform
from pathlib import Path

import gradio as gr

from .context import AppContext

API_SNIPPET = '''```python
from gradio_client import Client, handle_file

client = Client("{url}")
answer, image = client.predict("How many circles are there?", [handle_file("scene.png")], [], "auto",
                               64, 0.0, 1.0, api_name="/chat")
images, caption, seed, details = client.predict("two red circles", True, 7, False, 20, 2.0, 1,
                                                api_name="/generate")
hits = client.predict("a blue square", None, "Text → images", 5, "all", api_name="/search")
```
All endpoints: `/info`, `/chat`, `/generate`, `/edit`, `/search`, `/add_to_gallery`, `/delete_from_gallery`,
`/gallery_count`, `/browse_gallery`, `/feedback`, `/list_feedback`, `/latent_map`, `/compare`, `/vote`
(see "Use via API" at the bottom of the page).'''


def _versions() -> str:
    import chromadb
    import diffusers
    import onnxruntime
    import torch
    import transformers

    return (f"Python {platform.python_version()} · torch {torch.__version__} · transformers "
            f"{transformers.__version__} · diffusers {diffusers.__version__} · gradio {gr.__version__} · "
            f"chromadb {chromadb.__version__} · onnxruntime {onnxruntime.__version__}")


def _model_card(source: str) -> str:
    card = Path(source) / "README.md"
    if card.exists():
        text = card.read_text()
        return text.split("---", 2)[-1] if text.startswith("---") else text
    return f"Model loaded from `{source}` (no model card in that folder)."


def build_about_tab(ctx: AppContext, url: str = "http://127.0.0.1:7860/") -> None:
    pipeline = ctx.pipeline
    gr.Markdown(
        "**OmniBridge** (arXiv 2509.19018) reuses a vision-language LLM (Qwen2-VL) and adds a light "
        "bidirectional latent-alignment module (the BiLM, with learned queries), so that one model chats "
        "about images, generates and edits images through a HunyuanDiT decoder, and embeds images and "
        "texts for retrieval.\n\n"
        "**The full model:** `python app.py --model xxt-ssr/Omnibridge-retrieval-finetuned --decoder "
        "Tencent-Hunyuan/HunyuanDiT-v1.2-Diffusers` on a GPU (about 40 GB in bf16/fp16).")
    with gr.Accordion("Model card", open=True):
        gr.Markdown(_model_card(pipeline.model.source) if hasattr(pipeline, "model") else "", elem_id="about-card")
    info = gr.JSON(label="Runtime (device, dtype, parameters, memory)", elem_id="about-info")
    gr.Markdown(_versions())
    gr.Markdown("### API\n" + API_SNIPPET.format(url=url))
    refresh = gr.Button("Refresh runtime info")
    refresh.click(pipeline.info, None, [info], api_name="info", concurrency_limit=None)
    return info
