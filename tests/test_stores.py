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


def test_gallery_files_are_durable_before_any_record_points_at_them(gallery, monkeypatch):
    from omnibridge.gallery import store as store_module

    real = store_module.make_durable
    seen = []

    def checked(folder, paths):
        assert gallery.count() == 0  # no record yet
        assert paths and all(p.exists() and p.stat().st_size > 0 for p in paths)
        seen.append(len(paths))
        real(folder, paths)

    monkeypatch.setattr(store_module, "make_durable", checked)
    gallery.add(_images(3), None, source="upload")
    assert seen == [6] and gallery.count() == 3  # one flush for the batch: 3 images, 3 thumbnails


def test_small_images_are_their_own_thumbnails_and_large_ones_are_shrunk(gallery):
    small, large = Image.new("RGB", (64, 64), (200, 0, 0)), Image.new("RGB", (1200, 900), (0, 0, 200))
    small_item, large_item = (gallery.get(i) for i in gallery.add([small, large], None, source="upload"))
    assert small_item.thumb_path.read_bytes() == small_item.image_path.read_bytes()
    with Image.open(large_item.thumb_path) as thumb:
        assert max(thumb.size) <= 384 and thumb.size[0] / thumb.size[1] == pytest.approx(1200 / 900, rel=0.01)
    gallery.delete(small_item.id)  # both names go; the large item keeps its files
    assert not small_item.thumb_path.exists() and large_item.thumb_path.exists()


def test_without_syncfs_every_new_file_is_fsynced(gallery, monkeypatch):
    from omnibridge.gallery import store as store_module

    synced = []
    real_fsync = store_module.os.fsync
    monkeypatch.setattr(store_module, "_SYNCFS", None)
    monkeypatch.setattr(store_module.os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    gallery.add(_images(2), None, source="upload")
    assert len(synced) == 5 and gallery.count() == 2  # 2 images, 2 thumbnails, their folder


def test_exact_index_matches_brute_force_through_adds_deletes_and_filters(monkeypatch):
    from omnibridge.gallery import chroma_pages
    from omnibridge.gallery.exact_index import ExactIndex

    class Collection:  # the two calls ExactIndex makes of a Chroma collection
        def __init__(self, ids, vectors, sources):
            self.rows = {i: (v, s) for i, v, s in zip(ids, vectors, sources)}

        def get(self, include, limit, offset, where=None):
            rows = list(self.rows.items())[offset:offset + limit]
            return {"ids": [i for i, _ in rows], "embeddings": [v for _, (v, _) in rows],
                    "metadatas": [{"source": s} for _, (_, s) in rows], "documents": [f"doc {i}" for i, _ in rows]}

    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((500, 16)).astype(np.float32)
    ids = [f"id{i}" for i in range(500)]
    sources = ["seed" if i % 3 else "upload" for i in range(500)]
    monkeypatch.setattr(chroma_pages, "PAGE", 64)  # several pages, the last one partial
    index = ExactIndex(Collection(ids[:400], vectors[:400], sources[:400]))
    assert len(index) == 400  # loaded on first use
    index.added(ids[400:], vectors[400:], [{"source": x} for x in sources[400:]], ["new"] * 100)
    index.removed(["id7", "id450"])
    live = [i for i in range(500) if i not in (7, 450)]
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    for probe in rng.standard_normal((20, 16)).astype(np.float32):
        for source in (None, "upload"):
            allowed = [i for i in live if source is None or sources[i] == source]
            expected = sorted(allowed, key=lambda i: -float(unit[i] @ probe))[:10]
            found = index.search(probe, 10, source)
            assert [hit[0] for hit in found] == [ids[i] for i in expected]
            assert all(a[1] >= b[1] for a, b in zip(found, found[1:]))
            assert all(hit[2]["source"] == sources[int(hit[0][2:])] for hit in found)
    assert index.lookup("id450") is None and index.lookup("id420") == ({"source": sources[420]}, "new")
    index.added(["id3"], -vectors[3:4], [{"source": "upload"}], ["rewritten"])  # an id's new row replaces it
    assert index.search(-vectors[3], 1)[0][::3] == ("id3", "rewritten") and len(index) == 498


def test_gallery_search_is_exact_and_sees_every_write(gallery, tiny_pipeline):
    ids = gallery.add(_images(40), [f"caption {i}" for i in range(40)], source="upload")
    seeded = gallery.add(_images(5, offset=3), None, source="seed")
    probe = gallery.vector_of(ids[11])
    everything = gallery.images.get(include=["embeddings"])
    scores = np.asarray(everything["embeddings"]) @ probe
    expected = [everything["ids"][i] for i in np.argsort(-scores)[:12]]
    assert [hit.id for hit in gallery.search(probe, "images", k=12)] == expected
    assert {hit.id for hit in gallery.search(probe, "images", k=50, source="seed")} == set(seeded)
    gallery.delete(ids[11])  # written after the index loaded: a search must not return it
    assert ids[11] not in [hit.id for hit in gallery.search(probe, "images", k=50)]
    assert ids[11] not in [hit.id for hit in gallery.search(probe, "captions", k=50)]
    fresh = gallery.add(_images(1, offset=200), ["a fresh one"], source="upload")[0]
    assert gallery.search(gallery.vector_of(fresh), "images", k=1)[0].id == fresh


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


def _another_model(tiny_pipeline):
    other = copy.copy(tiny_pipeline)
    other.config = copy.deepcopy(tiny_pipeline.config)
    other.config.model_id = "another-model"
    return other


def _gallery_with_five_items(tiny_pipeline, tmp_path):
    gallery = GalleryStore(tmp_path, tiny_pipeline)
    ids = gallery.add(_images(3), ["a red circle", "", "two blue squares"], source="upload")
    ids += gallery.add(_images(2, offset=40), ["a green star", "a yellow cross"], source="generated")
    return ids, {i: gallery.get(i) for i in ids}


def _collections(store):
    return sorted(collection.name for collection in store.client.list_collections())


def test_a_reindex_stopped_half_way_loses_nothing_and_can_run_again(tiny_pipeline, tmp_path):
    ids, before = _gallery_with_five_items(tiny_pipeline, tmp_path)
    other = _another_model(tiny_pipeline)
    calls = []

    def embed_then_crash(images):
        calls.append(len(images))
        if len(calls) == 2:
            raise RuntimeError("the Space restarted")
        return tiny_pipeline.embed_images(images)

    other.embed_images = embed_then_crash
    with pytest.raises(RuntimeError):
        GalleryStore(tmp_path, other).reindex(batch=2)
    other.embed_images = tiny_pipeline.embed_images
    reopened = GalleryStore(tmp_path, other)  # the next start
    assert reopened.repair() == {"records_without_files": 0, "orphan_files": 0, "stray_captions": 0}
    assert reopened.count() == 5 and reopened.captions.count() == 4
    assert all(reopened.get(i).image_path.exists() for i in ids)
    assert _collections(reopened) == ["gallery_captions", "gallery_images"]  # the half-built ones are gone
    assert reopened.needs_reindex()  # the old vectors are still the old model's

    assert reopened.reindex(batch=2) == 5 and not reopened.needs_reindex()
    assert reopened.index_model()[0] == "another-model" and reopened.captions.count() == 4
    for item_id, item in before.items():  # captions, sources and dates survive a re-index
        after = reopened.get(item_id)
        assert (after.caption, after.source, after.created_at) == (item.caption, item.source, item.created_at)
        assert after.model_id == "another-model"
    assert _collections(reopened) == ["gallery_captions", "gallery_images"]
    hit = reopened.search(reopened.vector_of(ids[3]), "images", k=1)[0]
    assert hit.id == ids[3]


def test_a_reindex_stopped_during_its_swap_is_finished_at_the_next_start(tiny_pipeline, tmp_path, monkeypatch):
    _gallery_with_five_items(tiny_pipeline, tmp_path)
    other = _another_model(tiny_pipeline)
    store = GalleryStore(tmp_path, other)
    real_settle = GalleryStore._settle_reindex

    def crash(self):
        raise RuntimeError("stopped right after the new collections were complete")

    monkeypatch.setattr(GalleryStore, "_settle_reindex", crash)
    with pytest.raises(RuntimeError):
        store.reindex()
    monkeypatch.setattr(GalleryStore, "_settle_reindex", real_settle)
    # ... and, worse, after the live image collection was already retired
    store.client.get_collection("gallery_images", embedding_function=None).modify(name="gallery_images_retired")
    reopened = GalleryStore(tmp_path, other)
    assert not reopened.needs_reindex() and reopened.index_model()[0] == "another-model"
    assert reopened.count() == 5 and reopened.captions.count() == 4
    assert _collections(reopened) == ["gallery_captions", "gallery_images"]
    assert reopened.repair() == {"records_without_files": 0, "orphan_files": 0, "stray_captions": 0}


def test_an_item_deleted_during_a_reindex_stays_deleted(tiny_pipeline, tmp_path):
    ids, _ = _gallery_with_five_items(tiny_pipeline, tmp_path)
    other = _another_model(tiny_pipeline)
    store = GalleryStore(tmp_path, other)

    def embed_while_a_user_deletes(images):
        if store.count() == 5:
            store.delete(ids[0])
        return tiny_pipeline.embed_images(images)

    other.embed_images = embed_while_a_user_deletes
    assert store.reindex(batch=2) == 4
    assert ids[0] not in {item.id for item in store.browse(limit=10)}
    with pytest.raises(GalleryError):
        store.get(ids[0])
    assert store.repair() == {"records_without_files": 0, "orphan_files": 0, "stray_captions": 0}


def test_a_retrained_model_of_the_same_name_requires_a_reindex(tiny_model_dir, tmp_path):
    """Every built-in checkpoint is called omnibridge-shapes: the gallery must notice new retrieval heads
    (a digest of the embedding-side files), and ignore a new decoder, which embeddings never use."""
    import shutil

    from safetensors.torch import load_file, save_file

    from omnibridge import OmniBridgePipeline

    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    first = OmniBridgePipeline.from_pretrained(folder)
    assert first.embedding_model_id.startswith(first.model_id + "@")
    store = GalleryStore(tmp_path / "data", first)
    store.add(_images(2), ["a red circle", "a square"])

    dit = next((folder / "decoder" / "transformer").glob("*.safetensors"))
    weights = load_file(dit)
    save_file({k: v * 1.01 for k, v in weights.items()}, dit)  # the decoder's files do not enter the digest
    assert OmniBridgePipeline.from_pretrained(folder).embedding_model_id == first.embedding_model_id

    state = load_file(folder / "alignment.safetensors")
    state["image_queries"] = state["image_queries"] + 0.01  # as a stage-3 cycle changes only the heads
    save_file(state, folder / "alignment.safetensors")
    retrained = OmniBridgePipeline.from_pretrained(folder)
    assert retrained.model_id == first.model_id and retrained.embedding_model_id != first.embedding_model_id
    reopened = GalleryStore(tmp_path / "data", retrained)
    assert reopened.needs_reindex() and reopened.reindex() == 2
    assert reopened.index_model()[0] == retrained.embedding_model_id and not reopened.needs_reindex()


def test_large_files_are_fingerprinted_by_samples_that_still_see_a_change(tmp_path, monkeypatch):
    from omnibridge.modeling import fingerprint

    monkeypatch.setattr(fingerprint, "FULL_HASH_BYTES", 1000)
    monkeypatch.setattr(fingerprint, "SAMPLE_BYTES", 100)
    path = tmp_path / "shard.safetensors"
    data = bytearray(range(256)) * 40  # 10,240 bytes: sampled, not read whole
    path.write_bytes(bytes(data))
    before = fingerprint.files_fingerprint([path])
    assert fingerprint.files_fingerprint([path]) == before and len(before) == 12
    data[-1] ^= 1  # the last sample covers the end of the file
    path.write_bytes(bytes(data))
    assert fingerprint.files_fingerprint([path]) != before
    sampled = fingerprint.files_fingerprint([path])
    monkeypatch.setattr(fingerprint, "FULL_HASH_BYTES", 10**9)
    whole = fingerprint.files_fingerprint([path])
    data[5000] ^= 1  # between two samples
    path.write_bytes(bytes(data))
    assert fingerprint.files_fingerprint([path]) != whole  # a file under the limit is read whole
    monkeypatch.setattr(fingerprint, "FULL_HASH_BYTES", 1000)
    assert fingerprint.files_fingerprint([path]) == sampled  # unseen: the price of not reading 15 GB shards


def test_built_in_scenes_are_indexed_behind_the_app_and_a_half_done_seeding_is_completed(gallery, monkeypatch):
    from omnibridge.gallery.seeding import GallerySeeding

    first = GallerySeeding(gallery, 40)
    assert first.status() == "indexing the built-in gallery: 0 of 40 scenes"
    assert first.start().wait(timeout=120) and first.status() is None and first.error is None
    assert gallery.count(source="seed") == 40 and first.done == 40

    # 8 scenes missing, as after a stop half-way: the next start adds them and none twice
    for item in gallery.browse(0, 8, source="seed"):
        gallery.delete(item.id)
    assert GallerySeeding(gallery, 40).start().wait(timeout=120)
    assert gallery.count(source="seed") == 40 and gallery.captions.count() == 40

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(gallery, "seed_builtin", broken)
    failed = GallerySeeding(gallery, 80).start()
    assert failed.wait(timeout=60) and failed.status().startswith("the built-in gallery could not be indexed")
    assert "disk full" in failed.status() and gallery.count() == 40  # what was in stays

    reindexing = GallerySeeding(gallery, 40, reindex_first=True)
    assert reindexing.status() == "re-indexing the built-in gallery for the loaded model: 0 of 40 scenes"


def test_a_gallery_of_built_in_scenes_alone_is_re_indexed_for_a_new_checkpoint_unasked(tiny_pipeline, tmp_path):
    from omnibridge.config import AppSettings
    from omnibridge.ui.context import build_context

    settings = AppSettings(model="tiny", data_dir=tmp_path, seed_gallery=12, onnx_dit=False)
    first = build_context(tiny_pipeline, settings)
    assert first.seeding.wait(timeout=120) and first.gallery.count(source="seed") == 12
    dates = {item.id: item.created_at for item in first.gallery.browse(0, 12)}

    upgraded = _another_model(tiny_pipeline)  # a new checkpoint's heads
    restarted = build_context(upgraded, settings)
    assert restarted.seeding is not None and restarted.seeding.wait(timeout=120)
    assert restarted.seeding.error is None and restarted.gallery_indexing() is None
    assert not restarted.gallery.needs_reindex() and restarted.gallery.index_model()[0] == "another-model"
    assert {item.id: item.created_at for item in restarted.gallery.browse(0, 12)} == dates

    # an upload of the user's is theirs to re-index: the app asks instead
    restarted.gallery.add(_images(1, offset=90), ["mine"], source="upload")
    again = build_context(tiny_pipeline, settings)
    assert again.seeding is None and again.gallery.needs_reindex() and again.gallery.count() == 13


def test_a_search_during_the_background_re_index_says_how_far_it_is(tiny_pipeline, tmp_path):
    from omnibridge.ui.gallery import GallerySearch

    _gallery_with_five_items(tiny_pipeline, tmp_path)
    stale = GalleryStore(tmp_path, _another_model(tiny_pipeline))
    status = "re-indexing the built-in gallery for the loaded model: 3 of 5 scenes"
    ctx = SimpleNamespace(gallery=stale, pipeline=tiny_pipeline, gallery_indexing=lambda: status)
    with pytest.raises(GalleryError, match="3 of 5 scenes; search again in a moment"):
        GallerySearch(ctx).search("a red circle", None, "Text → images", 5, "all")


def test_a_gallery_past_chromas_limit_on_one_read_can_still_be_browsed_and_mapped(tmp_path):
    """Chroma fails one `get` of more than about 32,700 records with metadata ("too many SQL variables")."""
    stub = SimpleNamespace(embedding_model_id="stub", embedding_dim=4, model_id="stub")
    store = GalleryStore(tmp_path, stub)
    n = 33_000
    ids = [f"{i:032x}" for i in range(n)]
    vectors = np.random.default_rng(0).random((n, 4), dtype=np.float32)
    for start in range(0, n, 5000):
        part = slice(start, start + 5000)
        store.images.add(ids=ids[part], embeddings=vectors[part], documents=[f"scene {i}" for i in range(n)][part],
                         metadatas=[{"source": "upload", "created_at": float(i)} for i in range(n)][part])
    store.captions.add(ids=ids[:100], embeddings=vectors[:100], documents=[f"scene {i}" for i in range(100)])

    assert [item.id for item in store.browse(0, 3)] == ids[::-1][:3]  # newest first
    assert [item.caption for item in store.browse(n - 1, 5)] == ["scene 0"]  # the last page
    from_memory = store.browse(100, 24)
    store._exact = None  # as against a Chroma server: every record read from Chroma
    assert store.browse(100, 24) == from_memory and store.browse(0, 5, source="seed") == []
    assert store.count(source="upload") == n
    data = store.all_vectors(limit=2000, seed=1)
    assert data["total"] == n and len(data["ids"]) == 2000 and data["image_vectors"].shape == (2000, 4)
    assert set(data["caption_ids"]) == set(data["ids"]) & set(ids[:100])


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


def test_the_win_rate_chart_hides_until_there_is_a_vote():
    from omnibridge.ui.feedback import NO_VOTES, win_rate_tables

    rows, chart, note = win_rate_tables([])
    assert rows == [] and chart.visible is False and note == NO_VOTES
    vote = {"value": "left", "parameters": {"pair": "p", "left": {"name": "A"}, "right": {"name": "B"}}}
    rows, chart, note = win_rate_tables([vote])
    assert len(rows) == 1 and chart.visible is True and note == ""
    assert [row[:3] for row in chart.value["data"]] == [["p", "A", 1.0], ["p", "B", 0.0]]


def test_browsing_by_source_counts_from_memory_and_a_page_past_the_end_shows_the_last(tmp_path, monkeypatch):
    """A filtered count read every matching id from Chroma, twice per page shown (once for the page count,
    once for the status line); the search index already holds every item's source."""
    import omnibridge.gallery.store as store_module
    from omnibridge.ui.gallery import PAGE_SIZE, GallerySearch

    stub = SimpleNamespace(embedding_model_id="stub", embedding_dim=4, model_id="stub")
    store = GalleryStore(tmp_path, stub)
    n, seeds = 60, 45  # every fourth item an upload
    ids = [f"{i:032x}" for i in range(n)]
    sources = ["upload" if i % 4 == 0 else "seed" for i in range(n)]
    store.images.add(ids=ids, embeddings=np.random.default_rng(0).random((n, 4), dtype=np.float32),
                     documents=[f"scene {i}" for i in range(n)],
                     metadatas=[{"source": s, "created_at": float(i)} for i, s in enumerate(sources)])
    from_chroma = {source: len(store_module.get_all(store.images, [], where={"source": source})["ids"])
                   for source in ("seed", "upload", "generated")}
    assert from_chroma == {"seed": seeds, "upload": n - seeds, "generated": 0}

    def no_chroma_reads(*args, **kwargs):
        raise AssertionError("read every record from Chroma")

    monkeypatch.setattr(store_module, "get_all", no_chroma_reads)
    assert {source: store.count(source) for source in from_chroma} == from_chroma and store.count() == n
    items, total = store.browse_page(0, 10, source="upload")
    assert total == n - seeds and [item.caption for item in items[:2]] == ["scene 56", "scene 52"]

    search = GallerySearch(SimpleNamespace(gallery=store))
    items, page, pages, total = search.browse(99, "seed")  # past the end: the last page
    assert (page, pages, total) == (2, 2, seeds) and len(items) == seeds - PAGE_SIZE
    assert items[-1].caption == "scene 1"

    monkeypatch.undo()
    store._exact = None  # as against a Chroma server: the same answers from Chroma
    assert store.count("upload") == n - seeds and store.browse_page(0, 10, source="upload")[1] == n - seeds


def test_an_items_date_reads_back_the_same_before_and_after_a_reindex(tiny_pipeline, tmp_path, monkeypatch):
    import omnibridge.gallery.store as store_module

    # a float of 17 significant digits: Chroma hands back one of 16 for about one time stamp in seven
    monkeypatch.setattr(store_module.time, "time", lambda: 1796327439.0024173)
    gallery = GalleryStore(tmp_path, tiny_pipeline)
    ids = gallery.add(_images(2), ["a red circle", "a square"])
    dates = {i: gallery.get(i).created_at for i in ids}
    reopened = GalleryStore(tmp_path, _another_model(tiny_pipeline))
    assert reopened.reindex() == 2
    assert {i: reopened.get(i).created_at for i in ids} == dates == {i: 1796327439.002 for i in ids}
