"""What every tab shares: the one pipeline, the stores, and per-session cancel flags."""

from __future__ import annotations

import json
import threading
import traceback
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image
from PIL.PngImagePlugin import PngInfo

from ..config import AppSettings
from ..feedback.store import FeedbackStore
from ..gallery.seeding import GallerySeeding
from ..gallery.store import GalleryStore


@dataclass
class AppContext:
    pipeline: object  # OmniBridgePipeline (or a stand-in with the same methods)
    settings: AppSettings
    gallery: GalleryStore
    feedback: FeedbackStore
    outputs_dir: Path
    compare_pipeline: object | None = None
    seeding: GallerySeeding | None = None  # the built-in scenes still being indexed on a first start
    _cancel: dict[str, threading.Event] = field(default_factory=dict)

    def gallery_indexing(self) -> str | None:
        """How far the built-in scenes' indexing is, or why it failed; None once done (or never needed)."""
        return self.seeding.status() if self.seeding else None

    def cancel_event(self, session: str) -> threading.Event:
        """The flag a session's Stop button sets; generation checks it between steps."""
        return self._cancel.setdefault(session, threading.Event())

    def save_output(self, image: Image.Image, parameters: dict) -> str:
        """A PNG whose text chunk holds the generation parameters (so a download documents itself)."""
        info = PngInfo()
        info.add_text("parameters", json.dumps(parameters, ensure_ascii=False, default=str))
        info.add_text("Software", "OmniBridge Studio")
        path = self.outputs_dir / f"{uuid.uuid4().hex}.png"
        image.save(path, format="PNG", pnginfo=info)
        return str(path)


def _run_dit_under_onnxruntime(pipelines: list, cache_dir: Path, int8: bool) -> None:
    """Behind the running app, as the gallery's seeding: on a first start the DiT's graphs are traced and
    quantized (about 10 s on this thread, beside the model thread, so neither start-up nor a request waits for
    them), on a restart read back from the cache. Images drawn before that run in PyTorch."""
    for pipeline in filter(None, pipelines):
        try:
            reason = pipeline.use_onnxruntime(cache_dir, int8=int8)
        except Exception:  # the app keeps serving, in PyTorch
            traceback.print_exc()
            continue
        print(f"{pipeline.model_id}: " + (f"the DiT stays in PyTorch: {reason}" if reason else
                                         f"the DiT runs under ONNX Runtime, in {pipeline.decoder.onnx_dit.precision}"),
              flush=True)


def build_context(pipeline, settings: AppSettings) -> AppContext:
    """Open (or create) the stores under the data dir, repair and seed the gallery."""
    data_dir = Path(settings.data_dir)
    outputs = data_dir / "outputs"
    outputs.mkdir(parents=True, exist_ok=True)
    on_record = None
    if settings.feedback_repo and settings.hf_token:
        from ..feedback.hub_sync import HubFeedbackSync

        on_record = HubFeedbackSync(settings.feedback_repo, data_dir / "feedback" / "hub", settings.hf_token)
    feedback = FeedbackStore(data_dir / "feedback" / "feedback.sqlite3", on_record=on_record)
    pipeline.warm_up(data_dir / "cache")
    if settings.compile:
        pipeline.compile()
    gallery = GalleryStore(data_dir, pipeline, chroma_url=settings.chroma_url)
    repaired = gallery.repair()
    if any(repaired.values()):
        print(f"gallery repaired after an unclean stop: {repaired}", flush=True)
    seeding = None
    stale = gallery.needs_reindex()
    # built-in scenes alone, indexed by an earlier checkpoint: nothing of a user's, so re-embed them unasked
    reindex_builtin = stale and bool(settings.seed_gallery) and gallery.holds_only_builtin_scenes()
    if stale and not reindex_builtin:  # never mix vectors of two models: the Gallery tab offers a re-index
        model, dim = gallery.index_model()
        print(f"the gallery was indexed with {model} ({dim}-d), not {pipeline.embedding_model_id}; re-index it from the "
              f"Gallery tab or with: python -m omnibridge.gallery reindex --data-dir {data_dir}", flush=True)
    elif reindex_builtin or (settings.seed_gallery and gallery.count(source="seed") < settings.seed_gallery):
        seeding = GallerySeeding(gallery, settings.seed_gallery, reindex_first=reindex_builtin).start()
    compare = None
    if settings.compare_model:  # a second checkpoint for the Compare tab's "two checkpoints" pair
        compare = type(pipeline).from_pretrained(settings.compare_model, device=settings.device, dtype=settings.dtype,
                                                 model_thread=pipeline.model_thread,
                                                 max_gpu_memory_gb=settings.max_gpu_memory,  # a budget of its own
                                                 quantization=settings.quantize)
    if settings.onnx_dit and not settings.compile:
        threading.Thread(target=_run_dit_under_onnxruntime,
                         args=([pipeline, compare], data_dir / "cache" / "onnx", settings.dit_int8),
                         name="onnx-dit", daemon=True).start()
    return AppContext(pipeline, settings, gallery, feedback, outputs, compare_pipeline=compare, seeding=seeding)
