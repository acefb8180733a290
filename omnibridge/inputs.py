"""Turning what users send (files, arrays, chat histories, prompts) into clean model inputs.

Everything here raises `InvalidInputError` with a sentence a user can act on; the UI and the API
show that sentence instead of a stack trace.
"""

from __future__ import annotations

import base64
import io
import unicodedata
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .modeling.chat_format import Message

DEFAULT_MAX_IMAGE_PIXELS = 40_000_000  # ~6300 x 6300; larger uploads are refused before decoding
MAX_PROMPT_CHARS = 2000  # generation prompts and edit instructions
MAX_MESSAGE_CHARS = 200_000  # chat messages; longer histories are cut to the token budget anyway


class InvalidInputError(ValueError):
    """Bad user input; the message is meant for the user."""


def _open_checked(source, max_pixels: int) -> Image.Image:
    try:
        image = Image.open(source)
    except UnidentifiedImageError:
        raise InvalidInputError("this file is not an image we can read (PNG, JPEG, WebP, GIF, BMP)") from None
    except Image.DecompressionBombError:
        raise InvalidInputError(f"the image is too large (the limit is {max_pixels:,} pixels)") from None
    except (OSError, ValueError) as error:
        raise InvalidInputError(f"could not open the image: {error}") from None
    width, height = image.size  # from the header: nothing is decoded yet
    if width * height > max_pixels:
        raise InvalidInputError(f"the image is too large ({width} x {height} pixels; the limit is "
                                f"{max_pixels:,} pixels)")
    if width == 0 or height == 0:
        raise InvalidInputError("the image is empty (zero width or height)")
    return image


def load_image(source: Any, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> Image.Image:
    """A path, bytes, base64 data URL, numpy array or PIL image -> an upright RGB PIL image.

    The pixel limit is checked on the header before decoding (decompression bombs); EXIF rotation
    is applied; CMYK, 16-bit, grayscale, palette and RGBA images become RGB (alpha over white);
    animated images give their first frame.
    """
    if source is None:
        raise InvalidInputError("no image was given")
    if isinstance(source, dict):  # Gradio / OpenAI message parts
        source = source.get("path") or source.get("url") or source.get("image") or source.get("image_url")
        if isinstance(source, dict):
            source = source.get("url") or source.get("path")
    if isinstance(source, np.ndarray):
        array = source
        if array.ndim == 2:
            array = np.stack([array] * 3, -1)
        if array.ndim != 3 or array.shape[-1] not in (3, 4) or array.size == 0:
            raise InvalidInputError(f"an image array must be H x W x 3 (or 4), got shape {array.shape}")
        if array.shape[0] * array.shape[1] > max_pixels:
            raise InvalidInputError("the image is too large")
        if array.dtype != np.uint8:
            array = np.clip(array, 0, 255).astype(np.uint8)
        source = Image.fromarray(array)
    if isinstance(source, Image.Image):
        image = source
        if image.width * image.height > max_pixels:
            raise InvalidInputError("the image is too large")
    else:
        if isinstance(source, str) and source.startswith("data:image"):
            try:
                source = base64.b64decode(source.split(",", 1)[1], validate=False)
            except (ValueError, IndexError):
                raise InvalidInputError("the image data URL is not valid base64") from None
        if isinstance(source, (bytes, bytearray)):
            if not source:
                raise InvalidInputError("the image file is empty")
            image = _open_checked(io.BytesIO(source), max_pixels)
        else:
            path = Path(source)
            if not path.is_file():
                raise InvalidInputError(f"image file not found: {path.name}")
            if path.stat().st_size == 0:
                raise InvalidInputError("the image file is empty")
            image = _open_checked(path, max_pixels)
    try:
        image.seek(0)  # animated: the first frame
        image.load()
        image = ImageOps.exif_transpose(image)
        return _to_rgb(image)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise InvalidInputError(f"the image file is damaged or truncated ({type(error).__name__})") from None


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.float64)
        scale = 255.0 / max(1.0, float(array.max()))
        image = Image.fromarray((array * scale).astype(np.uint8))
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image)
    return image.convert("RGB")


def clean_text(text: Any, max_chars: int = MAX_PROMPT_CHARS, what: str = "prompt", allow_empty: bool = False) -> str:
    """Strip control characters and lone surrogates, collapse whitespace, cap the length."""
    if text is None:
        text = ""
    if not isinstance(text, str):
        raise InvalidInputError(f"the {what} must be text")
    text = text.encode("utf-8", "replace").decode("utf-8")  # lone surrogates -> '?'
    text = "".join(ch if ch in "\n\t" or unicodedata.category(ch)[0] != "C" else " " for ch in text)
    text = " ".join(text.split())
    if not text and not allow_empty:
        raise InvalidInputError(f"the {what} is empty")
    if len(text) > max_chars:
        raise InvalidInputError(f"the {what} is too long ({len(text):,} characters; the limit is {max_chars:,})")
    return text


def _content_parts(content: Any, max_pixels: int) -> list:
    """One message's content (string, parts list, Gradio file dict) -> [str | PIL.Image]."""
    if content is None:
        return []
    if isinstance(content, (str, Image.Image, np.ndarray)):
        content = [content]
    elif isinstance(content, dict):
        content = [content]
    elif isinstance(content, tuple):  # Gradio's (path,) / (path, alt) file tuples
        content = [{"type": "image", "path": content[0]}]
    parts: list = []
    for part in content:
        if isinstance(part, str):
            parts.append(clean_text(part, max_chars=MAX_MESSAGE_CHARS, what="message", allow_empty=True))
        elif isinstance(part, (Image.Image, np.ndarray)):
            parts.append(load_image(part, max_pixels))
        elif isinstance(part, dict):
            kind = part.get("type")
            if kind == "text" or ("text" in part and kind is None):
                parts.append(clean_text(part.get("text"), max_chars=MAX_MESSAGE_CHARS, what="message", allow_empty=True))
            elif kind in ("image", "image_url", "file", "input_image") or "path" in part:
                payload = part.get("image") or part.get("image_url") or part.get("file") or part
                parts.append(load_image(payload, max_pixels))
            else:
                raise InvalidInputError(f"unsupported message part type {kind!r}")
        else:
            raise InvalidInputError(f"unsupported message content of type {type(part).__name__}")
    return [p for p in parts if not (isinstance(p, str) and not p)]


def normalize_messages(messages: list[dict] | None, images: list | None = None,
                       max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> list[Message]:
    """OpenAI/Gradio messages (+ images attached to the last user turn) -> [Message]."""
    if not messages:
        raise InvalidInputError("the conversation is empty")
    normalized: list[Message] = []
    for message in messages:
        if not isinstance(message, dict) or message.get("role") not in ("system", "user", "assistant"):
            raise InvalidInputError("each message needs a role of system, user or assistant")
        parts = _content_parts(message.get("content"), max_pixels)
        if normalized and normalized[-1].role == message["role"]:  # Gradio splits files and text
            normalized[-1].parts.extend(parts)
        elif parts:
            normalized.append(Message(message["role"], parts))
    if images:
        extra = [load_image(image, max_pixels) for image in images]
        if normalized and normalized[-1].role == "user":
            normalized[-1].parts = extra + normalized[-1].parts
        else:
            normalized.append(Message("user", extra))
    if not normalized or normalized[-1].role != "user":
        raise InvalidInputError("the conversation must end with a user message")
    return normalized
