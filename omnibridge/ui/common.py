"""Helpers every tab uses: error messages instead of traces, the GPU queue group, sessions."""

from __future__ import annotations

import functools
import inspect
import logging
import math
from pathlib import Path

import gradio as gr

from ..caption_choice import leaves_grammar
from ..gallery.store import GalleryError
from ..inputs import InvalidInputError
from ..modeling.decoder import DecoderNumericalError, GenerationCancelled
from ..modeling.loading import ModelFolderError

log = logging.getLogger("omnibridge.ui")

EXAMPLE_DIR = Path(__file__).resolve().parents[2] / "assets" / "examples"  # Shapes scenes to ask about or edit
# Every event that runs the model joins this queue group: one model job at a time, whichever tab.
MODEL_QUEUE = dict(concurrency_id="model", concurrency_limit=1)
USER_ERRORS = (InvalidInputError, GalleryError, ModelFolderError, DecoderNumericalError, ValueError)


def _as_user_error(error: Exception) -> gr.Error:
    if isinstance(error, gr.Error):
        return error
    if isinstance(error, USER_ERRORS):
        return gr.Error(str(error))
    log.exception("unexpected error", exc_info=error)
    return gr.Error("Something went wrong on our side; the error was logged. Please try again.")


def user_errors(fn):
    """Turn known failures into a clear gr.Error (shown in the UI and returned to API clients)."""
    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def generator_wrapper(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except GenerationCancelled:
                gr.Info("Stopped.")
            except Exception as error:  # noqa: BLE001 - every error becomes a message
                raise _as_user_error(error) from None
        return generator_wrapper

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as error:  # noqa: BLE001
            raise _as_user_error(error) from None
    return wrapper


def session_of(request: gr.Request | None) -> str:
    return getattr(request, "session_hash", None) or "api"


def on_gpu(duration_fn):
    """`spaces.GPU` with a duration computed from the request, when running on ZeroGPU; else a no-op."""
    try:
        import spaces  # type: ignore
    except ImportError:
        return lambda fn: fn
    return lambda fn: spaces.GPU(duration=duration_fn)(fn)


def generation_seconds(steps: float, images: float, per_step: float = 0.25, base: float = 10.0) -> int:
    """A generous ZeroGPU budget for a generation of `images` images at `steps` steps."""
    return int(min(120, base + math.ceil(per_step * max(1, steps) * max(1, images))))


def clamp_int(value, low: int, high: int, default: int) -> int:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return default
    if math.isnan(number):
        return default
    return int(min(high, max(low, round(number))))


def clamp_float(value, low: float, high: float, default: float) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return default
    if math.isnan(number) or math.isinf(number):
        return default if math.isnan(number) else (high if number > 0 else low)
    return float(min(high, max(low, number)))


OFF_GRAMMAR_EDIT = ("The model described the image in its own words but could not write the edited scene in them, "
                    "so this instruction is likely one it was not trained on. Instructions it knows: 'make the "
                    "circle blue', 'remove the square', 'add a small red circle', 'move the triangle to the left' "
                    "(or right, up, down; with two objects).")


def edit_warning(source_description: str | None, caption: str) -> str | None:
    """OFF_GRAMMAR_EDIT when the model described the source in the Shapes grammar but wrote a target caption
    outside it (every beam garbled); None otherwise, and always for models that write free text."""
    if source_description and leaves_grammar(source_description, caption):
        return OFF_GRAMMAR_EDIT
    return None
