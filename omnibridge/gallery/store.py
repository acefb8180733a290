"""The retrieval gallery: images and captions in Chroma, embedded by the one OmniBridge pipeline.

Two collections in cosine space, vectors always computed app-side (Chroma's own embedding
function is never attached, so nothing tries to download a model):
- `<name>_images`: one record per image (id = content hash), vector = image embedding, document =
  its caption, metadata = source, time, model id, file names.
- `<name>_captions`: one record per captioned image (same id), vector = caption embedding.
So text->image and image->image search the first, image->text and text->text the second.

Images are stored once by content hash under `<data_dir>/gallery/images/` (PNG + thumbnail),
written to a temporary name and renamed, before their vectors are added: after a crash an image
file may lack a record (removed by `repair`), never the other way round.
"""

from __future__ import annotations

import hashlib
import io
import os
import random
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from .chroma_pages import get_all, get_by_ids
from .exact_index import EXACT_SEARCH_LIMIT, ExactIndex

SOURCES = ("seed", "upload", "generated")
# A re-index fills collections of these suffixes beside the live ones and swaps them in when complete.
BUILDING, RETIRED = "_reindexing", "_retired"
REINDEX_COMPLETE = "reindex-complete"  # written, in the gallery folder, once the new collections are whole
ID_PATTERN = re.compile(r"^[0-9a-f]{32}$")
THUMB_SIDE = 192
ProgressFn = Callable[[int, int], None]


class GalleryError(ValueError):
    """A gallery request that cannot be served (unknown id, bad query); the message is for the user."""


@dataclass
class GalleryItem:
    id: str
    caption: str
    source: str
    created_at: float
    model_id: str
    image_path: Path
    thumb_path: Path
    score: float | None = None  # cosine similarity when the item is a search hit
    # An image -> captions hit in the re-ranked top (rerank.py): log p(caption | query image, describe prompt)
    description_logp: float | None = None


def content_id(image: Image.Image) -> str:
    """Hash of the pixels (not the file bytes), so re-encoded copies of one image are one item."""
    rgb = image.convert("RGB")
    digest = hashlib.sha256(f"{rgb.width}x{rgb.height}".encode() + rgb.tobytes())
    return digest.hexdigest()[:32]


def _temporary_name(path: Path) -> Path:
    """A hidden sibling unique to this process and thread (`repair` removes leftovers)."""
    return path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")


def _atomic_write(path: Path, data: bytes) -> None:
    """Write to a temporary name and rename: a reader never sees half a file. Not yet durable:
    `make_durable` follows, once per batch."""
    tmp = _temporary_name(path)
    with open(tmp, "wb") as handle:
        handle.write(data)
    os.replace(tmp, path)


def _syncfs():
    try:
        import ctypes

        return getattr(ctypes.CDLL(None, use_errno=True), "syncfs", None)
    except OSError:  # no C library to load (not Linux)
        return None


_SYNCFS = _syncfs()


def make_durable(folder: Path, paths: list[Path]) -> None:
    """Flush freshly renamed files to disk before any record points at them. One `syncfs` of the
    gallery's file system (Linux) costs about what three `fsync` calls do, so a batch of 64 images and
    64 thumbnails takes one call instead of 128; elsewhere every file and the folder are fsynced."""
    if _SYNCFS is not None:
        descriptor = os.open(folder, os.O_RDONLY)
        try:
            if _SYNCFS(descriptor) == 0:
                return
        finally:
            os.close(descriptor)
    for path in [*paths, folder]:
        descriptor = os.open(path, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        except OSError:  # some systems cannot fsync a folder; the files themselves are flushed
            pass
        finally:
            os.close(descriptor)


def _png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def make_thumbnail(image: Image.Image) -> Image.Image | None:
    """A smaller copy for the grids, or None when the image is small enough to be its own thumbnail
    (the grids enlarge small images crisply with CSS, so encoding an enlarged copy buys nothing)."""
    if max(image.size) <= THUMB_SIDE * 2:
        return None
    thumb = image.copy()
    thumb.thumbnail((THUMB_SIDE * 2, THUMB_SIDE * 2), Image.BICUBIC)
    return thumb


def _atomic_link(target: Path, path: Path) -> None:
    """`path` becomes a second name of `target` (a hard link: no copy), or a copy where links fail."""
    tmp = _temporary_name(path)
    try:
        os.link(target, tmp)
    except OSError:
        tmp.write_bytes(target.read_bytes())
    os.replace(tmp, path)


# Chroma's own index answers searches only where the exact in-memory one cannot (a Chroma server,
# or more than EXACT_SEARCH_LIMIT items). Its default graph (16 neighbours, ef 100) finds 73% of the
# exact top 10 among 10k random unit vectors and 28% among 100k; this denser one 99% and 75%.
HNSW_INDEX = {"space": "cosine", "ef_construction": 200, "ef_search": 200, "max_neighbors": 32}


def _all_ids(collection) -> list[str]:
    return get_all(collection, [])["ids"]


class GalleryStore:
    def __init__(self, data_dir: str | Path, pipeline, chroma_url: str | None = None, name: str = "gallery"):
        import chromadb
        from chromadb.config import Settings

        self.pipeline = pipeline
        self.root = Path(data_dir) / "gallery"
        self.image_dir = self.root / "images"
        self.image_dir.mkdir(parents=True, exist_ok=True)
        settings = Settings(anonymized_telemetry=False, allow_reset=False)
        if chroma_url:
            from urllib.parse import urlparse

            url = urlparse(chroma_url)
            self.client = chromadb.HttpClient(host=url.hostname, port=url.port or 8000,
                                              ssl=url.scheme == "https", settings=settings)
        else:
            self.client = chromadb.PersistentClient(path=str(self.root / "chroma"), settings=settings)
        self.name = name
        self._write_lock = threading.Lock()
        self._settle_reindex()
        self.images = self._collection(f"{name}_images")
        self.captions = self._collection(f"{name}_captions")
        # Exact search needs to see every write; a Chroma server may have other writers, so it is
        # only used on the local store this object owns.
        self._exact = None if chroma_url else {"images": ExactIndex(self.images, self._write_lock),
                                               "captions": ExactIndex(self.captions, self._write_lock)}

    # ---------------------------------------------------------------------------- collections
    def _collection(self, name: str):
        """Open a collection as it is (keeping the model it was built with), or create it for ours."""
        from chromadb.errors import NotFoundError

        try:
            return self.client.get_collection(name, embedding_function=None)
        except (NotFoundError, ValueError):
            metadata = {"embedding_model": self.pipeline.embedding_model_id,
                        "embedding_dim": int(self.pipeline.embedding_dim)}
            return self.client.create_collection(name, embedding_function=None, metadata=metadata,
                                                 configuration={"hnsw": dict(HNSW_INDEX)})

    def index_model(self) -> tuple[str, int]:
        meta = self.images.metadata or {}
        return str(meta.get("embedding_model", "")), int(meta.get("embedding_dim", 0) or 0)

    def require_current_index(self) -> None:
        if self.needs_reindex():
            model, dim = self.index_model()
            raise GalleryError(f"the gallery holds vectors of another model ({model}, {dim}-d); re-index it first")

    def holds_only_builtin_scenes(self) -> bool:
        return self.count(source="seed") == self.count()

    def needs_reindex(self) -> bool:
        """True when the stored vectors come from other embedding weights than the pipeline's (another model,
        or the same one retrained)."""
        model, dim = self.index_model()
        other_model = model != self.pipeline.embedding_model_id or dim != self.pipeline.embedding_dim
        return other_model and self.count() > 0  # counting last: it is a Chroma call on every search

    # ------------------------------------------------------------------------------- re-index
    # Why beside, then swap: deleting the live collections first and refilling them meant that a re-index
    # stopped half-way (a crash, a restart of the Space) left most files without a record, and the next
    # start's `repair` deleted them as orphans, uploads and generated images included.
    def reindex(self, progress: ProgressFn | None = None, batch: int = 256) -> int:
        """Re-embed every stored image and caption with the current model into new collections, then swap them in.
        Until the swap the live collections stay as they were; items keep their captions, sources and dates."""
        for live in (f"{self.name}_images", f"{self.name}_captions"):
            self._drop(live + BUILDING)  # the remains of a re-index that stopped before
        images = self._collection(f"{self.name}_images{BUILDING}")
        captions = self._collection(f"{self.name}_captions{BUILDING}")
        ids = _all_ids(self.images)
        for start in range(0, len(ids), batch):
            self._reembed(ids[start:start + batch], images, captions)
            if progress:
                progress(min(len(ids), start + batch), len(ids))
        with self._write_lock:
            # items added or deleted while this ran: the live collections say what the gallery holds
            live = set(_all_ids(self.images))
            built = set(_all_ids(images))
            if built - live:
                images.delete(ids=sorted(built - live))
                captions.delete(ids=sorted(built - live))
            self._reembed(sorted(live - built), images, captions)
            mark = self.root / REINDEX_COMPLETE
            _atomic_write(mark, b"")
            make_durable(self.root, [mark])
            self._settle_reindex()
            self.images = self._collection(f"{self.name}_images")
            self.captions = self._collection(f"{self.name}_captions")
            if self._exact:
                self._exact["images"].reset(self.images)
                self._exact["captions"].reset(self.captions)
        return self.images.count()

    def _reembed(self, ids: list[str], images, captions) -> None:
        """Embed these live items' files with the current model into `images` and `captions` (items whose file
        is gone are left out, as `repair` would drop them)."""
        if not ids:
            return
        found = self.images.get(ids=ids, include=["metadatas", "documents"])
        rows = [(i, meta, doc or "") for i, meta, doc in zip(found["ids"], found["metadatas"], found["documents"])
                if (self.image_dir / f"{i}.png").exists()]
        if not rows:
            return
        vectors = self.pipeline.embed_images([Image.open(self.image_dir / f"{i}.png").convert("RGB")
                                              for i, _, _ in rows])
        images.add(ids=[i for i, _, _ in rows], embeddings=vectors, documents=[doc for _, _, doc in rows],
                   metadatas=[{**meta, "model_id": self.pipeline.model_id} for _, meta, _ in rows])
        captioned = [(i, meta, doc) for i, meta, doc in rows if doc]
        if captioned:
            captions.add(ids=[i for i, _, _ in captioned],
                         embeddings=self.pipeline.embed_texts([doc for _, _, doc in captioned]),
                         documents=[doc for _, _, doc in captioned],
                         metadatas=[{"source": meta.get("source", "upload"), "created_at": meta.get("created_at", 0.0)}
                                    for _, meta, _ in captioned])

    def _settle_reindex(self) -> None:
        """Finish the swap of a re-index whose new collections were complete (the mark is written only then), or
        drop the new collections of one that stopped before: either way the live collections are whole."""
        existing = {collection.name for collection in self.client.list_collections()}
        complete = (self.root / REINDEX_COMPLETE).exists()
        for live in (f"{self.name}_images", f"{self.name}_captions"):
            building, retired = live + BUILDING, live + RETIRED
            if complete and building in existing:
                if live in existing:
                    self.client.get_collection(live, embedding_function=None).modify(name=retired)
                    existing.add(retired)
                self.client.get_collection(building, embedding_function=None).modify(name=live)
            elif building in existing:
                self.client.delete_collection(building)
            if retired in existing:
                self.client.delete_collection(retired)
        (self.root / REINDEX_COMPLETE).unlink(missing_ok=True)

    def _drop(self, name: str) -> None:
        if name in {collection.name for collection in self.client.list_collections()}:
            self.client.delete_collection(name)

    # ---------------------------------------------------------------------------------- writes
    def add(self, images: list[Image.Image], captions: list[str | None] | None = None, source: str = "upload",
            progress: ProgressFn | None = None, batch: int = 256) -> list[str]:
        """Add images (deduplicated by content) with optional captions; returns their ids in order."""
        if source not in SOURCES:
            raise GalleryError(f"source must be one of {SOURCES}")
        captions = list(captions) if captions is not None else [None] * len(images)
        if len(captions) != len(images):
            raise GalleryError("give one caption per image (or none)")
        self.require_current_index()
        ids: list[str] = []
        for start in range(0, len(images), batch):
            ids += self._add_batch(images[start:start + batch], captions[start:start + batch], source)
            if progress:
                progress(min(len(images), start + batch), len(images))
        return ids

    def _add_batch(self, images: list[Image.Image], captions: list[str | None], source: str) -> list[str]:
        rgb = [image.convert("RGB") for image in images]
        ids = [content_id(image) for image in rgb]
        existing = set(self.images.get(ids=list(dict.fromkeys(ids)), include=[])["ids"]) if ids else set()
        fresh: dict[str, tuple[Image.Image, str]] = {}
        for item_id, image, caption in zip(ids, rgb, captions):
            if item_id not in existing and item_id not in fresh:
                fresh[item_id] = (image, (caption or "").strip())
        if not fresh:
            return ids
        written = []
        for item_id, (image, _) in fresh.items():  # files first: a record never lacks its image
            image_path, thumb_path = self.image_dir / f"{item_id}.png", self.image_dir / f"{item_id}.thumb.png"
            _atomic_write(image_path, _png_bytes(image))
            thumb = make_thumbnail(image)
            if thumb is None:
                _atomic_link(image_path, thumb_path)
            else:
                _atomic_write(thumb_path, _png_bytes(thumb))
            written += [image_path, thumb_path]
        make_durable(self.image_dir, written)
        fresh_ids = list(fresh)
        image_vectors = self.pipeline.embed_images([fresh[i][0] for i in fresh_ids])
        captioned = [i for i in fresh_ids if fresh[i][1]]
        caption_vectors = self.pipeline.embed_texts([fresh[i][1] for i in captioned]) if captioned else None
        # to the millisecond: Chroma reads back some 17-digit floats with 16 digits, so an unrounded date could
        # change when a re-index copies it
        now = round(time.time(), 3)
        metadata = [{"source": source, "created_at": now, "model_id": self.pipeline.model_id,
                     "width": fresh[i][0].width, "height": fresh[i][0].height} for i in fresh_ids]
        documents = [fresh[i][1] for i in fresh_ids]
        caption_metadata = [{"source": source, "created_at": now} for _ in captioned]
        caption_documents = [fresh[i][1] for i in captioned]
        with self._write_lock:
            if captioned:
                self.captions.upsert(ids=captioned, embeddings=caption_vectors, documents=caption_documents,
                                     metadatas=caption_metadata)
            # `add`, not `upsert`: these ids were just found absent, and an id is a hash of the pixels,
            # so a concurrent add of the same id carries the same image (Chroma keeps the first).
            self.images.add(ids=fresh_ids, embeddings=image_vectors, documents=documents, metadatas=metadata)
            if self._exact:
                self._exact["images"].added(fresh_ids, image_vectors, metadata, documents)
                if captioned:
                    self._exact["captions"].added(captioned, caption_vectors, caption_metadata, caption_documents)
        return ids

    def delete(self, item_id: str) -> None:
        self._check_id(item_id)
        with self._write_lock:
            if not self.images.get(ids=[item_id], include=[])["ids"]:
                raise GalleryError(f"no gallery item with id {item_id}")
            self.images.delete(ids=[item_id])
            self.captions.delete(ids=[item_id])
            for index in (self._exact or {}).values():
                index.removed([item_id])
            for suffix in (".png", ".thumb.png"):
                (self.image_dir / f"{item_id}{suffix}").unlink(missing_ok=True)

    def repair(self) -> dict:
        """Make the gallery consistent after a crash: drop records without files and files without records."""
        records = set(_all_ids(self.images))
        captions = set(_all_ids(self.captions))
        files = {p.name.split(".")[0] for p in self.image_dir.glob("*.png")}
        missing_file = {i for i in records if not (self.image_dir / f"{i}.png").exists()
                        or not (self.image_dir / f"{i}.thumb.png").exists()}
        with self._write_lock:
            if missing_file:
                self.images.delete(ids=list(missing_file))
            stray_captions = (captions - records) | (captions & missing_file)
            if stray_captions:
                self.captions.delete(ids=list(stray_captions))
            for index in (self._exact or {}).values():
                index.reset()
            orphans = files - (records - missing_file)
            for item_id in orphans:
                for suffix in (".png", ".thumb.png"):
                    (self.image_dir / f"{item_id}{suffix}").unlink(missing_ok=True)
            for tmp in self.image_dir.glob(".*.tmp"):
                tmp.unlink(missing_ok=True)
        return {"records_without_files": len(missing_file), "orphan_files": len(orphans),
                "stray_captions": len(stray_captions)}

    # ----------------------------------------------------------------------------------- reads
    @staticmethod
    def _check_id(item_id: str) -> None:
        if not isinstance(item_id, str) or not ID_PATTERN.match(item_id):
            raise GalleryError("not a gallery id")

    def _item(self, item_id: str, meta: dict, document: str | None, score: float | None = None) -> GalleryItem:
        return GalleryItem(item_id, document or "", str(meta.get("source", "")), float(meta.get("created_at", 0)),
                           str(meta.get("model_id", "")), self.image_dir / f"{item_id}.png",
                           self.image_dir / f"{item_id}.thumb.png", score)

    def get(self, item_id: str) -> GalleryItem:
        self._check_id(item_id)
        found = self.images.get(ids=[item_id], include=["metadatas", "documents"])
        if not found["ids"]:
            raise GalleryError(f"no gallery item with id {item_id}")
        return self._item(item_id, found["metadatas"][0], found["documents"][0])

    def vector_of(self, item_id: str) -> np.ndarray:
        """The stored image vector of an item (searching by a result needs no model call)."""
        self._check_id(item_id)
        found = self.images.get(ids=[item_id], include=["embeddings"])
        if not found["ids"]:
            raise GalleryError(f"no gallery item with id {item_id}")
        return np.asarray(found["embeddings"][0], dtype=np.float32)

    def _records_in_memory(self) -> ExactIndex | None:
        """The image search index, when it holds (or will load) every item's metadata: reading it is then a
        scan in memory, not a paged read of every record from Chroma (about 3 s at 100k items)."""
        exact = self._exact["images"] if self._exact else None
        return exact if exact is not None and self.images.count() <= EXACT_SEARCH_LIMIT else None

    def count(self, source: str | None = None) -> int:
        if not source:
            return self.images.count()
        in_memory = self._records_in_memory()
        if in_memory is not None:
            return in_memory.count(source)
        return len(get_all(self.images, [], where={"source": source})["ids"])

    def browse(self, offset: int = 0, limit: int = 24, source: str | None = None) -> list[GalleryItem]:
        """Items newest first."""
        return self.browse_page(offset, limit, source)[0]

    def browse_page(self, offset: int = 0, limit: int = 24,
                    source: str | None = None) -> tuple[list[GalleryItem], int]:
        """A page of items newest first, and how many items there are (of that source): one read for both."""
        in_memory = self._records_in_memory()
        if in_memory is not None:  # a page of 100k items is then a sort (0.07-0.3 s here)
            ids, metadatas, documents = in_memory.records()
        else:
            found = get_all(self.images, ["metadatas", "documents"])
            ids, metadatas, documents = found["ids"], found["metadatas"], found["documents"]
        rows = [(-float(m.get("created_at", 0)), i, m, d) for i, m, d in zip(ids, metadatas, documents)
                if source is None or m.get("source") == source]
        rows.sort(key=lambda row: row[:2])
        page = rows[max(0, offset): max(0, offset) + max(1, limit)]
        return [self._item(i, m, d) for _, i, m, d in page], len(rows)

    def search(self, vector: np.ndarray, target: str = "images", k: int = 12,
               source: str | None = None) -> list[GalleryItem]:
        """Nearest items to a query vector; `target` is 'images' or 'captions'."""
        collection = {"images": self.images, "captions": self.captions}.get(target)
        if collection is None:
            raise GalleryError("search target must be 'images' or 'captions'")
        self.require_current_index()
        k = int(np.clip(k, 1, 100))
        exact = self._exact[target] if self._exact else None
        total = len(exact) if exact is not None else collection.count()
        if total == 0:
            return []
        if exact is not None and total <= EXACT_SEARCH_LIMIT:
            # Everything a hit shows comes from the index's snapshot: at 100k items one more Chroma
            # lookup by id cost 20 ms, seven times the search itself.
            images = self._exact["images"]
            hits = []
            for item_id, score, meta, document in exact.search(vector, k, source):
                if target == "captions":
                    meta = (images.lookup(item_id) or (meta, document))[0]
                hits.append(self._item(item_id, meta, document, round(score, 4)))
            return hits
        found = collection.query(query_embeddings=[np.asarray(vector, dtype=np.float32).tolist()],
                                 n_results=min(k, total), where={"source": source} if source else None,
                                 include=["metadatas", "documents", "distances"])
        ids, metas, documents = found["ids"][0], found["metadatas"][0], found["documents"][0]
        scores = [1.0 - distance for distance in found["distances"][0]]
        image_metas = self.images.get(ids=ids, include=["metadatas"]) if target == "captions" and ids else None
        meta_by_id = dict(zip(image_metas["ids"], image_metas["metadatas"])) if image_metas else {}
        return [self._item(item_id, meta_by_id.get(item_id, meta), document, round(score, 4))
                for item_id, meta, document, score in zip(ids, metas, documents, scores)]

    def all_vectors(self, limit: int | None = None, seed: int = 0) -> dict:
        """Image and caption vectors with ids and metadata (the latent-space map); subsampled to `limit`."""
        ids = _all_ids(self.images)
        kept_ids = ids
        if limit and len(ids) > limit:  # only the drawn items' vectors are read
            kept_ids = [ids[i] for i in sorted(random.Random(seed).sample(range(len(ids)), limit))]
        images = get_by_ids(self.images, kept_ids, ["embeddings", "metadatas"])
        captions = get_by_ids(self.captions, images["ids"], ["embeddings", "documents"]) if images["ids"] else None
        return {
            "ids": images["ids"],
            "image_vectors": np.asarray(images["embeddings"], dtype=np.float32),
            "metadatas": images["metadatas"],
            "caption_ids": list(captions["ids"]) if captions else [],
            "caption_vectors": np.asarray(captions["embeddings"], dtype=np.float32) if captions else np.zeros((0, 0)),
            "captions": list(captions["documents"]) if captions else [],
            "total": len(ids),
        }

    # --------------------------------------------------------------------------------- seeding
    def seed_builtin(self, n: int = 300, progress: ProgressFn | None = None, seed: int = 2024,
                     batch: int = 256) -> int:
        """Fill an empty gallery with Shapes scenes and their captions (done once; kept across restarts)."""
        if self.count(source="seed") >= n:
            return 0
        from ..shapes.captions import describe, format_caption
        from ..shapes.render import render
        from ..shapes.world import sample_scene

        rng = random.Random(seed)
        scenes = [sample_scene(rng) for _ in range(n)]
        self.add([render(s) for s in scenes], [format_caption(describe(s)) for s in scenes], source="seed",
                 progress=progress, batch=batch)
        return n
