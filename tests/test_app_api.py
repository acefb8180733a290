"""The app's HTTP API, through gradio_client, against the real app on a free port."""

import json

import pytest
from gradio_client import handle_file
from gradio_client.exceptions import AppError
from PIL import Image

EXAMPLE = "assets/examples/scene_1.png"


def test_chat_answers_and_streams(client):
    answer, image = client.predict("How many circles are there?", [handle_file(EXAMPLE)], [], "answer", 6, 0.0,
                                   1.0, api_name="/chat")
    assert isinstance(answer, str) and image is None
    job = client.submit("Describe the image.", [handle_file(EXAMPLE)], [], "answer", 8, 0.0, 1.0,
                        api_name="/chat")
    updates = [output for output in job]
    assert updates and job.status().success


def test_chat_can_draw(client):
    answer, image = client.predict("draw a red circle", [], [], "draw", 6, 0.0, 1.0, api_name="/chat")
    assert answer.startswith("🎨") and Image.open(image).size == (64, 64)


def test_generate_writes_back_the_seed_and_png_metadata(client):
    images, caption, seed, details = client.predict("two red circles", False, 7, False, 2, 2.0, 2,
                                                    api_name="/generate")
    assert seed == 7 and len(images) == 2 and caption == "two red circles"
    first = Image.open(images[0]["image"])
    assert first.format == "PNG" and json.loads(first.info["parameters"])["seed"] == 7
    assert details["num_inference_steps"] == 2 and details["latency_s"] > 0
    seeds = {client.predict("a circle", True, 7, True, 1, 2.0, 1, api_name="/generate")[2] for _ in range(3)}
    assert len(seeds) > 1 and all(0 <= s < 2**31 for s in seeds)  # randomized, and the used seed comes back


def test_generate_takes_a_sampler_and_refuses_an_unknown_one(client):
    details = client.predict("a red circle", False, 1, False, 2, 2.0, 1, "ddpm", api_name="/generate")[3]
    assert details["sampler"] == "ddpm" and details["num_inference_steps"] == 2
    default = client.predict("a red circle", False, 1, False, 2, 2.0, 1, api_name="/generate")[3]
    assert default["sampler"] == "dpm++"  # omitted: the model's own
    with pytest.raises(AppError, match="sampler must be one of"):
        client.predict("a red circle", False, 1, False, 2, 2.0, 1, "euler-magic", api_name="/generate")


def test_edit(client):
    images, caption, seed, details = client.predict(handle_file(EXAMPLE), "make the circle blue", 3, False, 2,
                                                    2.0, 1.0, 1, api_name="/edit")
    assert len(images) == 1 and seed == 3 and details["mode"] == "edit"


def test_the_self_check_is_an_api_setting_and_reports_its_scores(client):
    images, _, seed, details = client.predict("two red circles", False, 7, False, 2, 2.0, 1, "", 3,
                                              api_name="/generate")
    assert len(images) == 1 and details["candidates"] == 3 and seed in (7, 8, 9)
    assert len(details["self_check_scores"]) == 1 and -1.0 <= details["self_check_scores"][0] <= 1.0
    _, _, seed, details = client.predict(handle_file(EXAMPLE), "make the circle blue", 3, False, 2, 2.0, 1.0, 1,
                                         "", 2, api_name="/edit")
    assert details["candidates"] == 2 and seed in (3, 4) and len(details["self_check_scores"]) == 1
    default = client.predict("a red circle", False, 1, False, 2, 2.0, 1, api_name="/generate")[3]
    assert default["candidates"] == 1 and "self_check_scores" not in default  # omitted: the model's own


def test_search_every_direction(client, app_server):
    for mode, query_text, query_image in (("Text → images", "a red circle", None),
                                          ("Text → captions", "a red circle", None),
                                          ("Image → images", "", handle_file(EXAMPLE)),
                                          ("Image → captions", "", handle_file(EXAMPLE))):
        hits = client.predict(query_text, query_image, mode, 5, "all", api_name="/search")
        assert 1 <= len(hits) <= 5, mode
        scores = [h["score"] for h in hits]
        assert all(-1.0 <= s <= 1.0 for s in scores)
        if mode == "Image → captions":  # re-ranked by the model's description likelihood (rerank.py)
            scale = app_server["context"].pipeline.retrieval_logit_scale
            combined = [scale * h["score"] + h["description_logp"] for h in hits]
            assert combined == sorted(combined, reverse=True)
        else:
            assert scores == sorted(scores, reverse=True) and all(h["description_logp"] is None for h in hits)
    seeded = client.predict("a circle", None, "Text → images", 5, "seed", api_name="/search")
    assert all(h["source"] == "seed" for h in seeded)


def test_a_model_without_a_rerank_weight_keeps_the_cosine_order(client, app_server):
    retrieval = app_server["context"].pipeline.config.retrieval
    weight, retrieval.caption_rerank_weight = retrieval.caption_rerank_weight, 0.0  # as the official model
    try:
        hits = client.predict("", handle_file(EXAMPLE), "Image → captions", 5, "all", api_name="/search")
    finally:
        retrieval.caption_rerank_weight = weight
    scores = [h["score"] for h in hits]
    assert hits and scores == sorted(scores, reverse=True) and all(h["description_logp"] is None for h in hits)


def test_add_count_browse_delete(client, tmp_path):
    paths = []
    for i, color in enumerate([(200, 30, 30), (30, 200, 30)]):
        path = tmp_path / f"upload{i}.png"
        Image.new("RGB", (64, 64), color).save(path)
        paths.append(handle_file(str(path)))
    before = client.predict("all", api_name="/gallery_count")["count"]
    report = client.predict(paths, "a red thing\na green thing", api_name="/add_to_gallery")
    assert len(report["added"]) == 2 and report["count"] == before + 2
    again = client.predict(paths, "", api_name="/add_to_gallery")  # the same pixels: no duplicates
    assert again["count"] == before + 2
    page = client.predict(1, "upload", api_name="/browse_gallery")
    assert {item["id"] for item in page["items"]} >= set(report["added"])
    uploads = client.predict("upload", api_name="/gallery_count")["count"]
    assert page["total"] == uploads >= 2 and page["pages"] == -(-uploads // 24)
    deleted = client.predict(report["added"][0], api_name="/delete_from_gallery")
    assert deleted["count"] == before + 1
    with pytest.raises(AppError, match="no gallery item"):
        client.predict(report["added"][0], api_name="/delete_from_gallery")


def test_feedback_round_trip(client):
    record = client.predict("like", "api", "1", "looks right", {"prompt": "x"}, {"answer": "y"}, {"seed": 1},
                            api_name="/feedback")
    listed = client.predict("api", "like", api_name="/list_feedback")
    assert any(r["id"] == record["id"] and r["comment"] == "looks right" for r in listed)
    with pytest.raises(AppError, match="kind must be"):
        client.predict("love", "api", "", "", {}, {}, {}, api_name="/feedback")
    with pytest.raises(AppError, match="inputs must be a JSON object"):  # not silently stored as {}
        client.predict("like", "api", "", "", "{not json", {}, {}, api_name="/feedback")
    with pytest.raises(AppError, match="tab must be one of"):  # not an empty list that looks like no ratings
        client.predict("Chat", "like", api_name="/list_feedback")
    with pytest.raises(AppError, match="kind must be one of"):
        client.predict("api", "likes", api_name="/list_feedback")


def test_named_endpoints_are_stable(client):
    endpoints = set(client.view_api(print_info=False, return_format="dict")["named_endpoints"])
    assert {"/chat", "/generate", "/edit", "/search", "/add_to_gallery", "/feedback"} <= endpoints


def test_latent_map_has_a_point_per_image_and_caption(client, app_server):
    gallery = app_server["context"].gallery
    result = client.predict("a red circle", None, 5000, api_name="/latent_map")
    images = [p for p in result["points"] if p["kind"] == "image"]
    captions = [p for p in result["points"] if p["kind"] == "caption"]
    assert len(images) == gallery.count() == result["total_items"]
    assert len(captions) == gallery.captions.count()
    assert result["query"] is not None and len(result["query"]) == 2
    sampled = client.predict("", None, 10, api_name="/latent_map")
    assert sampled["drawn_items"] == 10 < sampled["total_items"]


def test_compare_vote_is_stored_and_counted(client):
    battle, left, right, _, _ = client.predict("Generate from a prompt", "a red circle", None,
                                               "learned queries vs decoder text", api_name="/compare")
    assert Image.open(left).size == Image.open(right).size == (64, 64)
    before = len(client.predict("compare", "vote", api_name="/list_feedback"))
    revealed = client.predict(battle, "left", api_name="/vote")
    assert {revealed["left"], revealed["right"]} == {"learned queries (OmniBridge)", "decoder's own text encoders"}
    assert revealed["winner"] == revealed["left"]
    votes = client.predict("compare", "vote", api_name="/list_feedback")
    assert len(votes) == before + 1 and votes[0]["parameters"]["pair"] == "learned queries vs decoder text"
    with pytest.raises(AppError, match="already voted"):
        client.predict(battle, "right", api_name="/vote")
    battle, _, _, left_text, right_text = client.predict("Answer about an image", "How many circles are there?",
                                                         handle_file(EXAMPLE), "random pair", api_name="/compare")
    assert isinstance(left_text, str) and client.predict(battle, "tie", api_name="/vote")["winner"] == "tie"


def test_lenient_image_input_sends_the_front_end_every_image_prop():
    import gradio as gr

    from omnibridge.ui.components import ImageInput

    ours = ImageInput(label="x", sources=["upload", "clipboard"]).get_config()
    plain = gr.Image(label="x", sources=["upload", "clipboard"], type="filepath", image_mode=None).get_config()
    assert ours["sources"] == ["upload", "clipboard"]
    assert {k: v for k, v in ours.items() if k != "id"} == {k: v for k, v in plain.items() if k != "id"}
