"""Which weights a stored vector came from: a short digest of the files that make the embeddings.

A model folder keeps its name when it is retrained (the built-in model is `omnibridge-shapes` in every
checkpoint), so a gallery indexed by name alone would keep the previous heads' vectors after an upgrade
and mix them with the new model's queries. The gallery records this digest instead, and offers a
re-index when it changes.

Files up to FULL_HASH_BYTES are hashed whole (the built-in model: under a tenth of a second). Larger ones
(a 7B checkpoint's shards) are sampled: their size and SAMPLES evenly spaced blocks, which any retraining
changes, at a cost that does not grow with the file.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

FULL_HASH_BYTES = 256 * 2**20
SAMPLES = 16
SAMPLE_BYTES = 2**20


def _update_with_file(digest, path: Path) -> None:
    size = path.stat().st_size
    digest.update(f"{path.name}:{size}:".encode())
    with path.open("rb") as handle:
        if size <= FULL_HASH_BYTES:
            for block in iter(lambda: handle.read(8 * 2**20), b""):
                digest.update(block)
            return
        for index in range(SAMPLES):
            handle.seek((size - SAMPLE_BYTES) * index // (SAMPLES - 1))
            digest.update(handle.read(SAMPLE_BYTES))


def files_fingerprint(files: Iterable[Path]) -> str:
    """12 hex digits that change when any of `files` (taken in name order) changes."""
    digest = hashlib.sha256()
    for path in sorted(Path(f) for f in files):
        _update_with_file(digest, path)
    return digest.hexdigest()[:12]
