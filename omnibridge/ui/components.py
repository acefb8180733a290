"""Shared UI components."""

from __future__ import annotations

import gradio as gr


class ImageInput(gr.Image):
    """An image input whose preprocessing never fails on a bad file.

    Gradio's Image opens (and may decode) an upload before our code runs, so a truncated, empty or
    fake file would fail with a generic "could not preprocess" error. This one passes the file path
    on instead, and `omnibridge.inputs.load_image` says what is wrong with it. Decoding is left to
    that loader too (`image_mode=None`), where the pixel limit is checked before any decoding.
    """

    is_template = True  # the front end renders it as a plain gr.Image

    def __init__(self, **kwargs):
        kwargs.setdefault("type", "filepath")
        kwargs.setdefault("image_mode", None)
        super().__init__(**kwargs)

    def get_config(self, cls=None):
        # Gradio builds a component's config from the parameters of its class's __init__; ours only
        # takes **kwargs, so without this the front end would get an Image with no props at all.
        return super().get_config(cls or gr.Image)

    def preprocess(self, payload):
        try:
            return super().preprocess(payload)
        except Exception:  # noqa: BLE001 - the loader reports the problem to the user
            return str(payload.path) if payload is not None and payload.path else None
