"""Bad input gets a clear message (never a trace) in the API, and nothing saved is harmed.

One table: adding a case is one line. Each case names an endpoint, builds its arguments (files are
made in a temporary folder), and expects either success or an error whose message matches.
"""

import json
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
from gradio_client import handle_file
from gradio_client.exceptions import AppError
from PIL import Image

from omnibridge.inputs import InvalidInputError, clean_text, load_image

EXAMPLE = "assets/examples/scene_1.png"


def _png_header_only(path, width, height):
    """A valid PNG signature and IHDR declaring width x height, with one tiny IDAT: decoding is never needed."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 16))
                     + chunk(b"IEND", b""))


def make(kind, tmp):
    """Build a test file of a given kind and return its path."""
    path = tmp / f"{kind}.png"
    base = Image.open(EXAMPLE).convert("RGB")
    if kind == "truncated_png":
        data = open(EXAMPLE, "rb").read()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "truncated_jpeg":
        path = tmp / "t.jpg"
        base.save(path, format="JPEG")
        path.write_bytes(path.read_bytes()[:300])
    elif kind == "zero_bytes":
        path.write_bytes(b"")
    elif kind == "text_as_png":
        path.write_text("this is not an image\n" * 20)
    elif kind == "huge_20000":
        _png_header_only(path, 20000, 20000)
    elif kind == "bomb":
        Image.new("1", (9000, 9000)).save(path, optimize=True)  # 81 Mpx in a few kB
    elif kind == "cmyk":
        path = tmp / "cmyk.jpg"
        base.convert("CMYK").save(path, format="JPEG")
    elif kind == "sixteen_bit":
        Image.fromarray((np.asarray(base.convert("L"), dtype=np.uint16) * 257)).save(path)
    elif kind == "grayscale":
        base.convert("L").save(path)
    elif kind == "rgba":
        rgba = base.convert("RGBA")
        rgba.putalpha(128)
        rgba.save(path)
    elif kind == "palette":
        base.convert("P").save(path)
    elif kind == "animated":
        path = tmp / "anim.gif"
        base.save(path, save_all=True, append_images=[base.rotate(90), base.rotate(180)], duration=100, loop=0)
    elif kind == "exif_rotated":
        path = tmp / "rotated.jpg"
        exif = Image.Exif()
        exif[0x0112] = 6  # rotate 90 degrees on display
        base.resize((64, 32)).save(path, format="JPEG", exif=exif)
    else:
        raise KeyError(kind)
    return str(path)


OK = None
IMAGE_CASES = [  # (file kind, expected error or OK)
    ("truncated_png", "damaged or truncated"),
    ("truncated_jpeg", "damaged or truncated|could not open"),
    ("zero_bytes", "empty"),
    ("text_as_png", "not an image"),
    ("huge_20000", "too large"),
    ("bomb", "too large"),
    ("cmyk", OK), ("sixteen_bit", OK), ("grayscale", OK), ("rgba", OK), ("palette", OK), ("animated", OK),
    ("exif_rotated", OK),
]

LONG = "x" * 100_000
# (case id, endpoint, arguments builder, expected error or OK)
API_CASES = [
    ("empty prompt", "/generate", lambda t: ["", False, 1, False, 1, 2.0, 1], "empty"),
    ("whitespace prompt", "/generate", lambda t: [" \n\t ", False, 1, False, 1, 2.0, 1], "empty"),
    ("100k-char prompt", "/generate", lambda t: [LONG, False, 1, False, 1, 2.0, 1], "too long"),
    ("control characters", "/generate", lambda t: ["a\x00red\x07 circle\x1b[31m", False, 1, False, 1, 2.0, 1], OK),
    ("emoji and RTL", "/generate", lambda t: ["🔴 دائرة حمراء red circle ✨", False, 1, False, 1, 2.0, 1], OK),
    ("negative seed", "/generate", lambda t: ["a circle", False, -5, False, 1, 2.0, 1], OK),
    ("huge seed", "/generate", lambda t: ["a circle", False, 10**30, False, 1, 2.0, 1], OK),
    ("zero steps", "/generate", lambda t: ["a circle", False, 1, False, 0, 2.0, 1], OK),
    ("a million steps", "/generate", lambda t: ["a circle", False, 1, False, 10**6, 2.0, 1], OK),
    ("negative guidance", "/generate", lambda t: ["a circle", False, 1, False, 1, -5.0, 1], OK),
    ("infinite guidance", "/generate", lambda t: ["a circle", False, 1, False, 1, 1e308, 1], OK),
    ("99 images", "/generate", lambda t: ["a circle", False, 1, False, 1, 2.0, 99], OK),
    ("edit without image", "/edit", lambda t: [None, "make it blue", 1, False, 1, 2.0, 1.0, 1], "Add an image"),
    ("edit bad strength", "/edit", lambda t: [handle_file(EXAMPLE), "make it blue", 1, False, 1, 2.0, 9.0, 1], OK),
    ("chat 100k characters", "/chat", lambda t: [LONG, [], [], "answer", 4, 0.0, 1.0], OK),
    ("chat empty", "/chat", lambda t: ["", [], [], "answer", 4, 0.0, 1.0], "empty"),
    ("chat bad mode", "/chat", lambda t: ["hi", [], [], "sing", 4, 0.0, 1.0], "mode must be"),
    ("chat absurd numbers", "/chat", lambda t: ["hi", [], [], "answer", -3, 99.0, -1.0], OK),
    ("chat garbage history", "/chat", lambda t: ["hi", [], [{"role": "hacker", "content": 3}, "x"], "answer", 4,
                                                 0.0, 1.0], OK),
    ("search top_k 0", "/search", lambda t: ["a circle", None, "Text → images", 0, "all"], OK),
    ("search top_k huge", "/search", lambda t: ["a circle", None, "Text → images", 10**6, "all"], OK),
    ("search empty text", "/search", lambda t: ["", None, "Text → images", 5, "all"], "empty"),
    ("search bad mode", "/search", lambda t: ["a", None, "Sound → images", 5, "all"], "search mode must be"),
    ("search bad source", "/search", lambda t: ["a", None, "Text → images", 5, "../../etc"], "source must be"),
    ("search image missing", "/search", lambda t: ["", None, "Image → images", 5, "all"], "add a query image"),
    ("unknown gallery id", "/delete_from_gallery", lambda t: ["0" * 32], "no gallery item"),
    ("traversal id", "/delete_from_gallery", lambda t: ["../../../../etc/passwd"], "not a gallery id"),
    ("add nothing", "/add_to_gallery", lambda t: [[], ""], "choose one or more"),
    ("add only bad files", "/add_to_gallery", lambda t: [[handle_file(make("zero_bytes", t))], ""], "empty"),
    ("add mismatched captions", "/add_to_gallery",
     lambda t: [[handle_file(EXAMPLE), handle_file(make("grayscale", t))], "a\nb\nc"], "one caption per line"),
    ("feedback unknown kind", "/feedback", lambda t: ["love", "api", "", "", {}, {}, {}], "kind must be"),
    ("feedback unknown tab", "/feedback", lambda t: ["like", "../etc", "", "", {}, {}, {}], "tab must be"),
    ("vote without battle", "/vote", lambda t: ["nope", "left"], "run a comparison first"),
    ("vote bad choice", "/vote", lambda t: ["nope", "sideways"], "run a comparison first|choice must be"),
] + [(f"image: {kind}", "/search", (lambda k: lambda t: ["", handle_file(make(k, t)), "Image → images", 3, "all"])(kind),
      expected) for kind, expected in IMAGE_CASES] + [
    (f"chat image: {kind}", "/chat", (lambda k: lambda t: ["what is this?", [handle_file(make(k, t))], [], "answer", 4,
                                                          0.0, 1.0])(kind), expected)
    for kind, expected in IMAGE_CASES[:6]]


@pytest.mark.parametrize("case, endpoint, build, expected", API_CASES, ids=[c[0] for c in API_CASES])
def test_bad_input_gets_a_clear_message(client, app_server, tmp_path, case, endpoint, build, expected):
    context = app_server["context"]
    gallery_before, feedback_before = context.gallery.count(), context.feedback.count()
    arguments = build(tmp_path)
    if expected is OK:
        client.predict(*arguments, api_name=endpoint)
    else:
        with pytest.raises(AppError) as error:
            client.predict(*arguments, api_name=endpoint)
        message = str(error.value)
        assert "Traceback" not in message and "Something went wrong" not in message, message
        assert any(part.lower() in message.lower() for part in expected.split("|")), message
    assert context.gallery.count() >= gallery_before and context.feedback.count() >= feedback_before
    assert context.gallery.repair() == {"records_without_files": 0, "orphan_files": 0, "stray_captions": 0}


def test_invalid_utf8_surrogates_over_raw_http(app_server):
    """gradio_client cannot even encode a lone surrogate; a raw JSON client can (as an escape)."""
    import urllib.request

    base = app_server["url"].rstrip("/") + "/gradio_api/call/generate"
    # every input of /generate, the sampler ("" = the model's) and the self-check count (0 = the model's) last
    body = json.dumps({"data": ["a red \ud800circle", False, 1, False, 1, 2.0, 1, "", 0]}).encode()  # ASCII escapes
    request = urllib.request.Request(base, data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        event_id = json.loads(response.read())["event_id"]
    with urllib.request.urlopen(f"{base}/{event_id}", timeout=60) as response:
        stream = response.read().decode()
    assert "event: complete" in stream and "Traceback" not in stream


def test_a_long_multi_image_history_is_truncated_not_refused(client, tmp_path):
    history = []
    for turn in range(100):
        history += [{"role": "user", "content": f"question {turn}"}, {"role": "assistant", "content": "two"}]
    images = [handle_file(EXAMPLE)] * 20
    answer, _ = client.predict("and now?", images, history, "answer", 4, 0.0, 1.0, api_name="/chat")
    assert isinstance(answer, str)


@pytest.mark.parametrize("kind, size", [("exif_rotated", (32, 64)), ("sixteen_bit", (64, 64)), ("cmyk", (64, 64)),
                                        ("rgba", (64, 64)), ("animated", (64, 64)), ("palette", (64, 64))])
def test_odd_images_become_upright_rgb(tmp_path, kind, size):
    image = load_image(make(kind, tmp_path))
    assert image.mode == "RGB" and image.size == size


def test_numbers_are_clamped_even_when_not_numbers():
    from omnibridge.ui.common import clamp_float, clamp_int

    assert clamp_float(float("nan"), 1.0, 20.0, 2.0) == 2.0 and clamp_float(float("inf"), 1.0, 20.0, 2.0) == 20.0
    assert clamp_int("abc", 1, 100, 20) == 20 and clamp_int(10**30, 1, 100, 20) == 100 and clamp_int(-5, 1, 4, 1) == 1


def test_self_check_count_and_gpu_budget_take_bad_values_and_grow_with_the_draws():
    from omnibridge.ui.generate import Generator, _seconds

    assert Generator._candidates(None) is None and Generator._candidates("") is None  # the model's default
    assert Generator._candidates(0) is None and Generator._candidates(3) == 3 and Generator._candidates(99) == 8
    request = ("Generate", None, "two circles", True, 0, False, 20, 2.0, 1.0, 2, 64, "dpm++")
    assert _seconds(*request, 4) > _seconds(*request, 1) == _seconds(*request, "nonsense")


def test_text_cleaning():
    assert clean_text("  a\x00b\tc\n d\u200b ") == "a b c d"
    assert "\ud800" not in clean_text("x\ud800y")
    with pytest.raises(InvalidInputError, match="empty"):
        clean_text("\x00\x01 ")


def test_app_refuses_to_start_on_a_missing_or_corrupt_model(tmp_path):
    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "omnibridge_config.json").write_text("{ not json")
    cases = (["--model", str(tmp_path / "does-not-exist")], ["--model", str(broken)],
             ["--compare-model", str(tmp_path / "does-not-exist")])  # the built-in model, a missing second one
    for args in cases:
        result = subprocess.run([sys.executable, "app.py", *args, "--data-dir", str(tmp_path / "d"), "--seed-gallery",
                                 "0"], capture_output=True, text=True, timeout=180)
        assert result.returncode == 2
        lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
        assert lines[-1].startswith("OmniBridge Studio cannot start:") and "Traceback" not in result.stderr
        assert ("not found" in lines[-1]) or ("corrupt JSON" in lines[-1])


def test_share_is_off_and_the_server_binds_locally_by_default():
    from omnibridge.config import AppSettings

    settings = AppSettings.from_args([])
    assert settings.share is False and settings.host == "127.0.0.1" and settings.max_file_size


def test_only_public_data_dirs_are_servable(app_server):
    demo = app_server["demo"]
    allowed = {str(p) for p in demo.allowed_paths}
    context = app_server["context"]
    assert allowed == {str(context.outputs_dir.resolve()), str(context.gallery.image_dir.resolve())}
    assert not any("feedback" in p or "chroma" in p for p in allowed)


def test_path_traversal_in_file_urls_is_refused(app_server):
    import urllib.request
    from urllib.error import HTTPError

    base = app_server["url"].rstrip("/")
    for attack in ("/gradio_api/file=/etc/passwd", "/gradio_api/file=../../../../etc/passwd",
                   f"/gradio_api/file={app_server['context'].feedback.path}"):
        try:
            with urllib.request.urlopen(base + attack, timeout=10) as response:
                body = response.read()
            assert b"root:" not in body and b"SQLite" not in body
        except HTTPError as error:
            assert error.code in (400, 403, 404)


def test_feedback_export_holds_only_records(client, app_server):
    context = app_server["context"]
    client.predict("dislike", "api", "0", "an export check", {"prompt": "p"}, {}, {}, api_name="/feedback")
    exported = [json.loads(line) for line in context.feedback.export_jsonl().splitlines()]
    assert exported and all(set(r) == {"id", "created_at", "session_id", "tab", "kind", "value", "comment",
                                       "inputs", "outputs", "parameters", "model_id", "latency_s"} for r in exported)
