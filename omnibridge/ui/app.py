"""The Gradio Blocks of OmniBridge Studio: one tab per job, all on the one pipeline."""

from __future__ import annotations

import gradio as gr

from ..config import AppSettings
from .about import build_about_tab
from .chat import build_chat_tab
from .compare import build_compare_tab
from .context import AppContext, build_context
from .feedback import build_feedback_tab
from .gallery import build_gallery_tab
from .generate import build_generate_tab

CSS = """
#gen-gallery img, #gallery-results img, #gallery-browse img, #chatbot img { image-rendering: pixelated; }
/* Gradio's chat images scale down only (object-fit: scale-down): a 64x64 drawing sat at its native size in
   a 192-pixel box, so let it fill the box */
#chatbot .message img { width: 192px; height: auto; object-fit: contain; }
/* 64x64 images at their native size are too small to judge: fill the component's frame, crisp */
.fill-frame .image-frame { width: 100%; height: 100%; }
.fill-frame img { width: 100%; height: 100%; object-fit: contain; image-rendering: pixelated; }
/* a lone result would otherwise fill the gallery's whole width and overflow its height */
#gen-gallery .grid-container { grid-template-columns: repeat(2, minmax(0, 1fr)); }
/* the card's goals table: a long "measured" cell squeezed the "met" column to one letter a line */
#about-card td:last-child, #about-card th:last-child { white-space: nowrap; }
footer { visibility: hidden; }
"""
THEME = gr.themes.Soft(primary_hue="indigo")


def build_demo(pipeline, settings: AppSettings, ctx: AppContext | None = None) -> gr.Blocks:
    """The whole app for one pipeline; `ctx` (stores) is built from the settings when not given."""
    ctx = ctx or build_context(pipeline, settings)
    with gr.Blocks(title="OmniBridge Studio") as demo:
        gr.Markdown("# OmniBridge Studio\nOne model to chat about images, draw and edit them, and search a "
                    f"gallery — running **{pipeline.model_id}** on **{pipeline.device}**"
                    + (f", its language model in {pipeline.placement.llm_quantization.replace('bit', '-bit')}."
                       if pipeline.placement.llm_quantization else "."))
        with gr.Tabs(elem_id="tabs") as tabs:
            with gr.Tab("Chat", id="chat", elem_id="tab-chat"):
                chat = build_chat_tab(ctx)
            with gr.Tab("Generate & Edit", id="generate", elem_id="tab-generate"):
                generate = build_generate_tab(ctx)
            with gr.Tab("Gallery", id="gallery", elem_id="tab-gallery"):
                gallery = build_gallery_tab(ctx)
            with gr.Tab("Compare", id="compare", elem_id="tab-compare"):
                build_compare_tab(ctx)
            with gr.Tab("Feedback", id="feedback", elem_id="tab-feedback"):
                feedback = build_feedback_tab(ctx)
            with gr.Tab("About", id="about", elem_id="tab-about"):
                info = build_about_tab(ctx, url=f"http://{settings.host}:{settings.port}/")

        def gallery_item(item_id):
            if not item_id:
                raise gr.Error("Pick a result first.")
            return str(ctx.gallery.get(item_id).image_path)

        def send_to_chat(item_id):
            return gr.MultimodalTextbox(value={"text": "", "files": [gallery_item(item_id)]}), gr.Tabs(selected="chat")

        def send_to_edit(item_id):
            return (gr.Radio(value="Edit"), gr.Image(value=gallery_item(item_id), visible=True),
                    gr.Slider(visible=True), gr.Checkbox(visible=False), gr.Button(value="Edit"),
                    gr.Tabs(selected="generate"))

        gallery["to_chat"].click(send_to_chat, [gallery["selected"]], [chat["box"], tabs], queue=False,
                                 api_visibility="private")
        gallery["to_edit"].click(send_to_edit, [gallery["selected"]],
                                 [generate["mode"], generate["source"], generate["strength"], generate["rewrite"],
                                  generate["run"], tabs], queue=False, api_visibility="private")
        for fn, inputs, outputs in (gallery["browse"], feedback["load"]):
            demo.load(fn, inputs, outputs, api_visibility="private", concurrency_limit=None)
        demo.load(pipeline.info, None, [info], api_visibility="private", concurrency_limit=None)
    demo.omnibridge_context = ctx
    return demo


def launch(demo: gr.Blocks, settings: AppSettings, **overrides):
    """Queue (bounded) and serve; only the data dir's public images are servable files."""
    ctx: AppContext = demo.omnibridge_context
    demo.queue(max_size=settings.queue_size, default_concurrency_limit=1)
    options = dict(server_name=settings.host, server_port=settings.port, share=settings.share,
                   max_file_size=settings.max_file_size, show_error=True, theme=THEME, css=CSS,
                   allowed_paths=[str(ctx.outputs_dir.resolve()), str(ctx.gallery.image_dir.resolve())])
    options.update(overrides)
    return demo.launch(**options)
