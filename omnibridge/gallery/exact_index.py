"""Exact nearest-neighbour search over one Chroma collection's vectors, held in memory beside it.

Chroma stays the store of record (vectors, captions, metadata, persistence); this is a read cache of
its vectors for searching. Why: on random unit vectors Chroma's HNSW graph finds only 75% of the
true top 10 among 100k items, and its `ef_search` cannot be raised after creation in the local
client (`collection.modify` is accepted and changes nothing), while a plain matrix product over 100k
128-d vectors takes about 3 ms on two CPU cores — as fast as the graph, and never wrong.

The gallery is the only writer of a local collection, so it tells the index about every write
(`added`, `removed`, `reset`); the first search loads the vectors. Searches read an immutable
snapshot, so they never wait for a write.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from .chroma_pages import get_all

# Beyond this many items the matrix grows past ~130 MB per collection and a search past ~10 ms:
# the gallery falls back to Chroma's own index there.
EXACT_SEARCH_LIMIT = 250_000


def _unit_rows(vectors) -> np.ndarray:
    """Chroma's cosine space normalises what it is given; so does this index."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


@dataclass(frozen=True)
class _Snapshot:
    ids: tuple[str, ...]
    vectors: np.ndarray  # [N, D] float32, unit rows
    metadatas: tuple[dict, ...]
    documents: tuple[str, ...]
    rows: dict[str, int]  # id -> row
    sources: np.ndarray  # [N] each item's `source` metadata, for filtered searches

    @classmethod
    def of(cls, ids, vectors, metadatas, documents) -> "_Snapshot":
        sources = np.asarray([str(m.get("source", "")) for m in metadatas], dtype=object)
        return cls(tuple(ids), vectors, tuple(metadatas), tuple(documents), {i: n for n, i in enumerate(ids)},
                   sources)


class ExactIndex:
    def __init__(self, collection, writer_lock: threading.Lock | None = None):
        self._collection = collection
        self._snapshot: _Snapshot | None = None
        self._lock = threading.Lock()
        # The lock the collection's writer holds while it writes (and then tells this index): loading
        # under it means no row lands between two pages unseen. Always taken before `_lock`.
        self._writer_lock = writer_lock or threading.Lock()

    def _load(self) -> _Snapshot:
        found = get_all(self._collection, ["embeddings", "metadatas", "documents"])
        ids = found["ids"]
        matrix = _unit_rows(found["embeddings"]) if ids else np.zeros((0, 0), np.float32)
        return _Snapshot.of(ids, matrix, [dict(m or {}) for m in found["metadatas"]],
                            [d or "" for d in found["documents"]])

    def _current(self) -> _Snapshot:
        snapshot = self._snapshot
        if snapshot is not None:
            return snapshot
        with self._writer_lock, self._lock:
            if self._snapshot is None:
                self._snapshot = self._load()
            return self._snapshot

    # ---------------------------------------------------------------------- told by the writer
    def added(self, ids: list[str], vectors: np.ndarray, metadatas: list[dict], documents: list[str]) -> None:
        """Rows written to the collection (an id already held gets its new row, as upsert does)."""
        with self._lock:
            old = self._snapshot
            if old is None:  # not loaded yet: the first search reads them from Chroma
                return
            vectors = _unit_rows(vectors)
            latest = {item_id: n for n, item_id in enumerate(ids)}  # the last write of an id wins
            matrix, metas, docs = old.vectors, list(old.metadatas), list(old.documents)
            replaced = [(old.rows[i], n) for i, n in latest.items() if i in old.rows]
            if replaced:
                matrix = matrix.copy()
                for row, n in replaced:
                    matrix[row], metas[row], docs[row] = vectors[n], dict(metadatas[n]), documents[n] or ""
            fresh = [n for i, n in latest.items() if i not in old.rows]
            if fresh:
                matrix = vectors[fresh] if matrix.size == 0 else np.concatenate([matrix, vectors[fresh]])
                metas += [dict(metadatas[n]) for n in fresh]
                docs += [documents[n] or "" for n in fresh]
            self._snapshot = _Snapshot.of(old.ids + tuple(ids[n] for n in fresh), matrix, metas, docs)

    def removed(self, ids: list[str]) -> None:
        with self._lock:
            old = self._snapshot
            if old is None:
                return
            gone = {old.rows[i] for i in ids if i in old.rows}
            if not gone:
                return
            keep = [n for n in range(len(old.ids)) if n not in gone]
            self._snapshot = _Snapshot.of([old.ids[n] for n in keep],
                                          old.vectors[keep] if keep else np.zeros((0, 0), np.float32),
                                          [old.metadatas[n] for n in keep], [old.documents[n] for n in keep])

    def reset(self, collection=None) -> None:
        """Forget everything (after a repair or a reindex); `collection` replaces a recreated one."""
        with self._lock:
            self._collection = collection if collection is not None else self._collection
            self._snapshot = None

    # ------------------------------------------------------------------------------- reading
    def __len__(self) -> int:
        return len(self._current().ids)

    def records(self) -> tuple[tuple[str, ...], tuple[dict, ...], tuple[str, ...]]:
        """Every item's id, metadata and document, as the index holds them."""
        snapshot = self._current()
        return snapshot.ids, snapshot.metadatas, snapshot.documents

    def count(self, source: str) -> int:
        """How many items hold this `source` metadata (all of them: `len`)."""
        return int(np.count_nonzero(self._current().sources == source))

    def lookup(self, item_id: str) -> tuple[dict, str] | None:
        """An item's metadata and document, or None."""
        snapshot = self._current()
        row = snapshot.rows.get(item_id)
        return None if row is None else (snapshot.metadatas[row], snapshot.documents[row])

    def search(self, vector: np.ndarray, k: int, source: str | None = None) -> list[tuple[str, float, dict, str]]:
        """The k items with the highest cosine similarity, best first: (id, score, metadata, document)."""
        snapshot = self._current()
        if not snapshot.ids:
            return []
        scores = snapshot.vectors @ np.asarray(vector, dtype=np.float32).reshape(-1)
        if source is not None:
            scores = np.where(snapshot.sources == source, scores, -np.inf)
        k = min(k, len(scores))
        top = np.argpartition(-scores, k - 1)[:k]
        top = top[np.argsort(-scores[top], kind="stable")]
        return [(snapshot.ids[i], float(scores[i]), snapshot.metadatas[i], snapshot.documents[i])
                for i in top if np.isfinite(scores[i])]
