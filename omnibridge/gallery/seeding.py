"""The built-in scenes indexed behind a running app, so that a first start serves at once.

On a fresh data dir the gallery is filled with Shapes scenes (rendered, embedded, written). Done
before launch, that was the whole difference between a first start and a restart (about 3 s on the
2-core machine); done on a thread, the app answers while the scenes arrive in small batches, and the
model thread interleaves a user's request between two batches. A stop half-way is harmless: the store
repairs an unclean stop, and the next start adds the missing scenes (ids are hashes of the pixels, so
those already in are skipped). A gallery of these scenes alone, indexed by an earlier checkpoint, is
re-indexed the same way before any scene is added.
"""

from __future__ import annotations

import threading
import traceback

from tqdm.auto import tqdm

from .store import GalleryStore

BATCH = 32  # small: a chat or a generation waits for at most one batch on the model thread


class GallerySeeding:
    """Indexes `total` built-in scenes on a daemon thread; `status()` says how far it is. With `reindex_first`
    (a gallery of built-in scenes alone, indexed by an earlier checkpoint) the scenes already in are re-embedded
    with the loaded model first: nothing of a user's is there to ask about."""

    def __init__(self, gallery: GalleryStore, total: int, reindex_first: bool = False):
        self.gallery, self.total = gallery, total
        self.reindexing = reindex_first
        self.done, self.of = 0, total
        self.error: str | None = None
        self._finished = threading.Event()
        self._thread = threading.Thread(target=self._run, name="gallery-seeding", daemon=True)

    def start(self) -> GallerySeeding:
        self._thread.start()
        return self

    def _run(self) -> None:
        with tqdm(total=self.total, desc="indexing built-in gallery", unit="img") as bar:
            def progress(done: int, total: int) -> None:
                self.done, self.of = done, total
                bar.update(done - bar.n)

            try:
                if self.reindexing:
                    bar.set_description("re-indexing built-in gallery")
                    self.gallery.reindex(progress=progress, batch=BATCH)
                    self.reindexing, self.done = False, 0
                    bar.reset()
                    bar.set_description("indexing built-in gallery")
                self.gallery.seed_builtin(self.total, progress=progress, batch=BATCH)
            except Exception as error:  # the app keeps serving: the gallery just holds fewer scenes
                traceback.print_exc()
                self.error = f"{type(error).__name__}: {error}"
            finally:
                self._finished.set()

    @property
    def running(self) -> bool:
        return not self._finished.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """True once indexing has ended (finished or failed)."""
        return self._finished.wait(timeout)

    def status(self) -> str | None:
        """A line for the Gallery tab while indexing runs or after it failed; None once it is done."""
        if self.error:
            return f"the built-in gallery could not be indexed ({self.error}); restart the app to retry"
        if self.running and self.reindexing:
            return f"re-indexing the built-in gallery for the loaded model: {self.done} of {self.of} scenes"
        if self.running:
            return f"indexing the built-in gallery: {self.done} of {self.total} scenes"
        return None
