"""Each tab's main journey in headless Chromium (Debian's /usr/bin/chromium), with screenshots.

The app runs the micro model with random weights: these tests check the UI works, not quality.
"""

import os
import re
import shutil

import pytest
from playwright.sync_api import expect

from omnibridge.ui.feedback import NO_VOTES

pytestmark = pytest.mark.browser

CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync", "--disable-quic",
                 "--disable-dev-shm-usage"]
EXAMPLE = os.path.abspath("assets/examples/scene_1.png")
TIMEOUT = 30_000


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args):
    if not shutil.which(CHROMIUM) and not os.path.exists(CHROMIUM):
        pytest.fail(f"browser tests need Chromium at {CHROMIUM} (apt-get install chromium, or set CHROMIUM_PATH)")
    return {**browser_type_launch_args, "executable_path": CHROMIUM, "args": CHROMIUM_ARGS}


@pytest.fixture
def app_page(page, app_server):
    page_errors = []  # a JavaScript error can leave a tab blank while every request still succeeds
    page.on("pageerror", lambda error: page_errors.append(str(error)))
    page.set_default_timeout(TIMEOUT)
    page.goto(app_server["url"], wait_until="load")
    page.locator("#chat-input textarea").wait_for()  # the app has rendered
    yield page
    assert not page_errors, f"the page raised JavaScript errors: {page_errors}"


def open_tab(page, name):
    page.get_by_role("tab", name=name).click()


def send_chat(page, text):
    """Send a chat message and wait until the answer has finished streaming."""
    before = page.locator("#chatbot [data-testid='bot']").count()
    page.locator("#chat-input textarea").fill(text)
    page.locator("#chat-input textarea").press("Enter")
    page.wait_for_function(
        "n => document.querySelectorAll(\"#chatbot [data-testid='bot']\").length > n"
        " && !document.querySelector('#chat-input textarea').disabled", arg=before)


def test_chat_streams_an_answer_about_an_uploaded_image(app_page, tmp_path):
    page = app_page
    page.locator("#chat-input input[type=file]").set_input_files(EXAMPLE)
    send_chat(page, "How many circles are there?")
    assert page.locator("#chatbot [data-testid='bot']").count() == 1
    assert page.locator("#chatbot img").count() >= 1  # the uploaded image is part of the conversation
    page.screenshot(path=str(tmp_path / "chat.png"), full_page=True)


def test_generate_shows_progress_and_an_image(app_page, tmp_path):
    page = app_page
    open_tab(page, "Generate & Edit")
    page.get_by_role("button", name="Settings ▼").click()
    steps = page.locator("input[aria-label='number input for Steps']")
    steps.fill("100")
    steps.press("Enter")
    # The progress bar fed by the step callback can come and go between two polls on a fast run, so a
    # MutationObserver records whether it was ever shown.
    page.evaluate("""() => {
        window.sawDenoising = false;
        new MutationObserver(() => {
            if (document.body.innerText.includes("denoising")) window.sawDenoising = true;
        }).observe(document.body, {childList: true, subtree: true, characterData: true});
    }""")
    page.locator("#gen-prompt textarea").fill("two red circles")
    page.locator("#gen-prompt textarea").press("Enter")
    page.locator("#gen-gallery img").first.wait_for()
    assert page.evaluate("window.sawDenoising")
    assert page.locator("#gen-caption textarea").input_value() != ""
    shown, frame = page.locator("#gen-gallery img").first.bounding_box(), page.locator("#gen-gallery").bounding_box()
    assert shown["height"] <= frame["height"] and shown["width"] <= frame["width"]  # the whole image is visible
    page.screenshot(path=str(tmp_path / "generate.png"), full_page=True)


def test_an_edit_example_switches_to_edit_mode_and_edits(app_page, tmp_path):
    page = app_page
    open_tab(page, "Generate & Edit")
    assert page.locator("#gen-prompt textarea").get_attribute("placeholder") == "two red circles above a blue square"
    page.locator("#gen-examples").get_by_text("remove the triangle").click()
    page.locator("#edit-image img").wait_for()  # the example's scene is loaded, its input shown
    assert page.locator("#gen-prompt textarea").input_value() == "remove the triangle"
    assert page.locator("#gen-prompt textarea").get_attribute("placeholder") == "make the circle blue"
    run = page.get_by_role("button", name="Edit", exact=True)
    run.wait_for()  # the run button follows the mode
    run.click()
    page.locator("#gen-gallery img").first.wait_for()
    assert page.locator("#gen-caption textarea").input_value() != ""
    page.screenshot(path=str(tmp_path / "edit-example.png"), full_page=True)


def test_gallery_search_by_text(app_page, tmp_path):
    page = app_page
    open_tab(page, "Gallery")
    page.locator("#gallery-query textarea").fill("a red circle")
    page.locator("#gallery-search").click()
    page.locator("#gallery-results img").first.wait_for()
    assert page.locator("#gallery-results img").count() >= 1
    page.screenshot(path=str(tmp_path / "gallery-text.png"), full_page=True)


def test_gallery_search_by_image(app_page, tmp_path):
    page = app_page
    open_tab(page, "Gallery")
    page.get_by_label("Image → images").check()
    page.locator("#gallery-query-image input[type=file]").set_input_files(EXAMPLE)
    page.locator("#gallery-query-image img").first.wait_for()  # the upload finished
    page.locator("#gallery-search").click()
    page.locator("#gallery-results img").first.wait_for()
    page.screenshot(path=str(tmp_path / "gallery-image.png"), full_page=True)


def test_gallery_image_to_captions_shows_the_likelihood_that_reranked_them(app_page, tmp_path):
    page = app_page
    open_tab(page, "Gallery")
    page.get_by_label("Image → captions").check()
    page.locator("#gallery-query-image input[type=file]").set_input_files(EXAMPLE)
    page.locator("#gallery-query-image img").first.wait_for()
    page.locator("#gallery-search").click()
    table = page.locator("#gallery-table")
    expect(table).to_contain_text("describe log p")
    # a log-likelihood (tens of nats below zero; a cosine never reaches -10) filled in, not left blank
    expect(table).to_contain_text(re.compile(r"-\d{2,}\.\d"))
    page.screenshot(path=str(tmp_path / "gallery-captions.png"), full_page=True)


def test_a_liked_answer_appears_in_the_feedback_tab(app_page, tmp_path):
    page = app_page
    send_chat(page, "hello")
    page.locator("#chatbot button[aria-label='Like']").last.click()
    page.locator("#chat-comment textarea").fill("browser test comment")
    page.locator("#chat-comment-send").click()
    open_tab(page, "Feedback")
    page.locator("#feedback-refresh").click()
    page.locator("#feedback-table").get_by_text("browser test comment").first.wait_for(state="attached")
    # the columns keep their set widths: left to the browser, an empty one wrapped its header a letter a line
    from omnibridge.ui.feedback import COLUMN_WIDTHS

    widths = page.locator("#feedback-table th").evaluate_all("cells => cells.map(c => c.getBoundingClientRect().width)")
    assert [round(w) for w in widths] == [int(w.removesuffix("px")) for w in COLUMN_WIDTHS], widths
    page.screenshot(path=str(tmp_path / "feedback.png"), full_page=True)


def test_chat_renders_html_as_text_not_markup(app_page, app_server):
    page = app_page
    page.evaluate("window.__xss = 0")
    payload = "<img src=x onerror=\"window.__xss=1\"><script>window.__xss=2</script>"
    send_chat(page, payload)
    page.wait_for_timeout(500)
    assert page.evaluate("window.__xss") == 0


def test_chat_draws_then_edits_the_drawing(app_page, tmp_path):
    page = app_page
    page.locator("#chat-mode").get_by_label("Always draw").check()
    send_chat(page, "draw two red circles")
    assert page.locator("#chatbot img").count() == 1  # the drawing is inline in the conversation
    send_chat(page, "now make the circles blue")  # a follow-up: the drawn image is an input of this turn
    assert page.locator("#chatbot img").count() == 2
    # a 64x64 drawing is drawn across its 192-pixel box, not at its native size in the middle of it
    drawing = page.locator("#chatbot img").first
    assert drawing.bounding_box()["width"] >= 192
    assert drawing.evaluate("img => getComputedStyle(img).objectFit") in ("contain", "fill")
    page.screenshot(path=str(tmp_path / "chat-draw-edit.png"), full_page=True)


def test_latent_map_draws_and_selects_an_item(app_page, tmp_path):
    page = app_page
    open_tab(page, "Gallery")
    page.get_by_role("button", name="Map of the shared latent space").click()
    page.locator("#map-draw").click()
    page.locator("#latent-map-svg g.th").first.wait_for()
    assert page.locator("#latent-map-svg g.th").count() >= 10  # one thumbnail per image
    assert page.locator("#latent-map-svg circle.pt").count() >= 10  # one dot per caption
    page.locator("#latent-map-svg g.th").first.dispatch_event("click")  # thumbnails overlap: no pointer click
    page.locator("#map-item img").wait_for()  # clicking a point selected that item
    page.screenshot(path=str(tmp_path / "latent-map.png"), full_page=True)


def test_compare_reveals_the_variants_after_the_vote(app_page, tmp_path):
    page = app_page
    open_tab(page, "Compare")
    page.locator("#compare-prompt textarea").fill("a blue square above a red circle")
    page.locator("#compare-run").click()
    page.locator("#compare-left img").wait_for()
    page.locator("#compare-right img").wait_for()
    assert page.locator("#compare-left img").bounding_box()["height"] >= 192  # 64x64 results shown large enough to judge
    assert "Left:" not in page.locator("#compare-reveal").inner_text()
    page.locator("#vote-left").click()
    page.locator("#compare-reveal").get_by_text("Left:").wait_for()
    page.screenshot(path=str(tmp_path / "compare.png"), full_page=True)
    open_tab(page, "Feedback")  # the win-rate chart, hidden while there were no votes, now draws this one
    page.locator("#feedback-refresh").click()
    page.locator("#feedback-win-chart").wait_for(state="visible")
    # retried until the refresh lands (meanwhile the note shows Gradio's progress text)
    expect(page.locator("#feedback-win-note")).not_to_contain_text(NO_VOTES)
    expect(page.locator("#feedback-win-note")).not_to_contain_text("processing")
