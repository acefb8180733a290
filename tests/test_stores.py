"""The gallery (real Chroma) and feedback (real SQLite) stores, and the Hub sync at its network boundary."""

import copy
import csv
import io
import json
import sqlite3
import threading
from types import SimpleNamespace

import numpy as np
import pytest
from huggingface_hub import HfApi
from PIL import Image

from omnibridge.feedback.store import FeedbackRecord, FeedbackStore
from omnibridge.gallery.store import GalleryError, GalleryStore, content_id


def _images(n, offset=0):
    return [Image.new("RGB", (64, 64), (10 * i + offset, 100, 200 - i)) for i in range(n)]


@pytest.fixture
def gallery(tiny_pipeline, tmp_path):
    return GalleryStore(tmp_path, tiny_pipeline)


def test_gallery_adds_deduplicates_searches_and_deletes(gallery, tiny_pipeline):
    ids = gallery.add(_images(3), ["a red circle", "", "two blue squares"], source="upload")
    assert len(set(ids)) == 3 and gallery.count() == 3
    assert gallery.add(_images(3), None, source="upload") == ids and gallery.count() == 3  # same pixels, same ids
    assert gallery.captions.count() == 2  # only captioned images get a caption record
    hits = gallery.search(tiny_pipeline.embed_texts(["a red circle"])[0], "images", k=2)
    assert len(hits) == 2 and hits[0].score >= hits[1].score
    caption_hits = gallery.search(tiny_pipeline.embed_texts(["a red circle"])[0], "captions", k=5)
    assert {h.caption for h in caption_hits} == {"a red circle", "two blue squares"}
    item = gallery.get(ids[0])
    assert item.image_path.exists() and item.thumb_path.exists() and item.source == "upload"
    assert np.allclose(gallery.vector_of(ids[0]), tiny_pipeline.embed_images(_images(1))[0], atol=1e-5)
    gallery.delete(ids[0])
    assert gallery.count() == 2 and not item.image_path.exists()
    with pytest.raises(GalleryError):
        gallery.delete(ids[0])


def test_gallery_collections_use_a_cosine_index_built_for_recall(gallery, tiny_pipeline):
    for collection in (gallery.images, gallery.captions):
        hnsw = collection.configuration["hnsw"]
        assert hnsw["space"] == "cosine" and hnsw["ef_search"] >= 100 and hnsw["max_neighbors"] >= 32
    # the nearest image to an image's own vector is that image, at similarity 1
    ids = gallery.add(_images(20), None, source="upload")
    hit = gallery.search(gallery.vector_of(ids[7]), "images", k=1)[0]
    assert hit.id == ids[7] and hit.score == pytest.approx(1.0, abs=1e-4)


@pytest.mark.parametrize("bad_id", ["../../etc/passwd", "abc", "0" * 31 + "/", "", "..%2f" * 8])
def test_ids_cannot_reach_outside_the_data_dir(gallery, bad_id):
    with pytest.raises(GalleryError, match="not a gallery id"):
        gallery.get(bad_id)
    with pytest.raises(GalleryError):
        gallery.delete(bad_id)


def test_search_in_an_empty_gallery_and_filters(gallery, tiny_pipeline):
    assert gallery.search(tiny_pipeline.embed_texts(["x"])[0], "images") == []
    gallery.add(_images(2), source="upload")
    gallery.add(_images(2, offset=5), source="generated")
    vector = tiny_pipeline.embed_texts(["x"])[0]
    assert {h.source for h in gallery.search(vector, "images", k=10, source="generated")} == {"generated"}
    assert gallery.count(source="upload") == 2 and len(gallery.browse(0, 3)) == 3
    with pytest.raises(GalleryError):
        gallery.search(vector, "pixels")


def test_repair_removes_orphans_on_both_sides(gallery):
    ids = gallery.add(_images(3), ["a", "b", "c"])
    (gallery.image_dir / f"{ids[0]}.png").unlink()  # a record without its image
    orphan = "f" * 32
    (gallery.image_dir / f"{orphan}.png").write_bytes(b"x")  # an image without a record
    report = gallery.repair()
    # Orphans: the stray image, and the thumbnail left behind by the record that lost its image.
    assert report["records_without_files"] == 1 and report["orphan_files"] == 2
    assert gallery.count() == 2 and gallery.captions.count() == 2
    assert not (gallery.image_dir / f"{orphan}.png").exists()
    assert not (gallery.image_dir / f"{ids[0]}.thumb.png").exists()
    assert gallery.repair() == {"records_without_files": 0, "orphan_files": 0, "stray_captions": 0}


def test_another_model_requires_a_reindex_instead_of_mixing(gallery, tiny_pipeline, tmp_path):
    gallery.add(_images(2), ["a red circle", "a square"])
    other = copy.copy(tiny_pipeline)
    other.config = copy.deepcopy(tiny_pipeline.config)
    other.config.model_id = "another-model"
    reopened = GalleryStore(tmp_path, other)
    assert reopened.needs_reindex()
    with pytest.raises(GalleryError, match="re-index"):
        reopened.add(_images(1, offset=50))
    assert reopened.reindex() == 2
    assert not reopened.needs_reindex() and reopened.index_model()[0] == "another-model"
    assert reopened.count() == 2 and reopened.captions.count() == 2


def test_content_id_ignores_file_encoding():
    image = _images(1)[0]
    assert content_id(image) == content_id(image.convert("RGBA").convert("RGB"))


def test_feedback_store_filters_exports_and_comments(tmp_path):
    store = FeedbackStore(tmp_path / "feedback.sqlite3")
    first = store.add(FeedbackRecord("s1", "chat", "like", inputs={"text": "hi"}, outputs={"answer": "two"},
                                     model_id="m", latency_s=0.2))
    store.add(FeedbackRecord("s2", "generate", "dislike", parameters={"seed": 3}))
    assert store.set_comment(first, "spot on") and not store.set_comment(999, "x")
    assert store.count() == 2 and store.count(tab="chat") == 1 and store.count(kind="dislike") == 1
    assert store.list(tab="chat")[0]["comment"] == "spot on"
    rows = list(csv.DictReader(io.StringIO(store.export_csv())))
    assert [r["kind"] for r in rows] == ["like", "dislike"] and set(rows[0]) >= {"session_id", "latency_s"}
    lines = [json.loads(line) for line in store.export_jsonl(tab="generate").splitlines()]
    assert lines == [store.list(tab="generate")[0]]
    assert "ip" not in json.dumps(lines)
    with sqlite3.connect(tmp_path / "feedback.sqlite3") as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    with pytest.raises(ValueError):
        store.add(FeedbackRecord("s", "chat", "love"))


def test_concurrent_feedback_writes_all_land(tmp_path):
    store = FeedbackStore(tmp_path / "feedback.sqlite3")

    def write(worker):
        for i in range(25):
            store.add(FeedbackRecord(f"s{worker}", "chat", "like", value=str(i)))

    threads = [threading.Thread(target=write, args=(w,)) for w in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert store.count() == 200
    assert FeedbackStore(tmp_path / "feedback.sqlite3").count() == 200  # and after reopening


class FakeHubApi(HfApi):
    """huggingface_hub.HfApi with only its two network calls replaced: they record instead of sending."""

    def __init__(self):
        super().__init__(token="hf_test")
        self.commits = []

    def create_repo(self, repo_id, **kwargs):
        return SimpleNamespace(repo_id=repo_id)

    def create_commit(self, repo_id, operations, **kwargs):
        contents = {op.path_in_repo: op.path_or_fileobj.read() for op in operations}
        self.commits.append({"repo_id": repo_id, "files": contents, **kwargs})
        return SimpleNamespace(oid="0" * 40)


def test_feedback_is_pushed_to_a_hub_dataset(tmp_path):
    from omnibridge.feedback.hub_sync import HubFeedbackSync

    api = FakeHubApi()
    sync = HubFeedbackSync("me/omnibridge-feedback", tmp_path / "hub", token="hf_test", every_minutes=60,
                           hf_api=api)
    try:
        store = FeedbackStore(tmp_path / "feedback.sqlite3", on_record=sync)
        store.add(FeedbackRecord("s1", "chat", "like", comment="great"))
        store.add(FeedbackRecord("s2", "generate", "dislike"))
        sync.push_now()
    finally:
        sync.stop()
    pushed = [c for c in api.commits if c["files"]]
    assert pushed and pushed[0]["repo_id"] == "me/omnibridge-feedback" and pushed[0]["repo_type"] == "dataset"
    lines = b"".join(pushed[0]["files"].values()).decode().splitlines()
    assert [json.loads(line)["kind"] for line in lines] == ["like", "dislike"]


def test_win_rates_ignore_which_side_a_variant_was_shown_on():
    from omnibridge.feedback.arena import win_rates

    def vote(left, right, choice):
        return {"value": choice, "parameters": {"pair": "p", "left": {"name": left}, "right": {"name": right}}}

    stats = win_rates([vote("A", "B", "left"), vote("B", "A", "right"), vote("B", "A", "left"),
                       vote("A", "B", "tie"), vote("A", "B", "both_bad"), {"value": "left", "parameters": {}}])
    assert len(stats) == 1
    row = stats[0]
    assert (row.a, row.b, row.a_wins, row.b_wins, row.ties, row.both_bad) == ("A", "B", 2, 1, 1, 1)
    assert row.votes == 5 and abs(row.a_win_rate - 2 / 3) < 1e-9
