"""Qwen2-VL's image preprocessing for images that need no resizing, in a few numpy operations.

Every image a chat turn sends is preprocessed on the way to the language model, and for the built-in
64x64 scenes the processor's general path (per-image PIL round trips, resize, rescale and normalise as
separate passes) is a visible share of a short answer's first token: about 0.4 ms of ~8 ms here. When
an image is already at the size the processor would resize it to (always true of 64x64 Shapes images),
the result is a rescale, a normalisation and a reshape into patches; this module does exactly that and
returns None for anything else, which then takes the processor's own path. A test holds the two equal.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

try:  # the processor module's own arithmetic, so both paths agree on "no resize needed"
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize
except ImportError:  # pragma: no cover - an older transformers keeps it next to the processor
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize


def _settings(processor):
    """The processor's settings when they are Qwen2-VL's plain recipe, else None."""
    needed = ("patch_size", "merge_size", "temporal_patch_size", "image_mean", "image_std", "rescale_factor")
    if not all(getattr(processor, name, None) is not None for name in needed):
        return None
    if not (getattr(processor, "do_rescale", True) and getattr(processor, "do_normalize", True)):
        return None
    size = getattr(processor, "size", None)
    shortest = getattr(size, "shortest_edge", None) or getattr(processor, "min_pixels", None)
    longest = getattr(size, "longest_edge", None) or getattr(processor, "max_pixels", None)
    if not (shortest and longest):
        return None
    return shortest, longest


def patches_at_native_size(processor, images: list[Image.Image]) -> dict | None:
    """`pixel_values` and `image_grid_thw` as `processor(images=...)` returns them, or None when an
    image would be resized (different sizes in one call, or a size off the processor's grid)."""
    settings = _settings(processor)
    if settings is None or not images:
        return None
    height, width = images[0].height, images[0].width
    if any(image.size != (width, height) for image in images):
        return None
    patch, merge, temporal = processor.patch_size, processor.merge_size, processor.temporal_patch_size
    try:
        target = smart_resize(height, width, factor=patch * merge, min_pixels=settings[0], max_pixels=settings[1])
    except ValueError:  # an extreme aspect ratio: the processor's path words the error
        return None
    if target != (height, width):
        return None

    std = np.asarray(processor.image_std, dtype=np.float32)
    mean = np.asarray(processor.image_mean, dtype=np.float32)
    pixels = np.stack([np.asarray(image.convert("RGB"), dtype=np.float32) for image in images])  # B,H,W,C
    pixels = (pixels * np.float32(processor.rescale_factor) - mean) / std
    count, grid_h, grid_w = len(images), height // patch, width // patch
    # The processor's patch order: merge windows row by row, then each window's patches, and inside a
    # patch channel-major; the one still image is repeated over the temporal patch.
    pixels = pixels.reshape(count, grid_h // merge, merge, patch, grid_w // merge, merge, patch, 3)
    pixels = pixels.transpose(0, 1, 4, 2, 5, 7, 3, 6)[:, :, :, :, :, :, None]
    pixels = np.broadcast_to(pixels, (*pixels.shape[:6], temporal, patch, patch))
    flat = np.ascontiguousarray(pixels).reshape(count * grid_h * grid_w, 3 * temporal * patch * patch)
    grids = torch.tensor([[1, grid_h, grid_w]] * count, dtype=torch.long)
    return {"pixel_values": torch.from_numpy(flat), "image_grid_thw": grids}
