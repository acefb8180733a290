"""Chat tab: multimodal, streamed, multi-turn; the model answers, draws or edits in the conversation.

The displayed history is the model's history: uploaded and drawn images stay in it as files and
are real inputs to later turns. A drawing turn is shown as "🎨 caption" and handed back to the
model as `<img>caption</img>` (the form it was trained on), an edit as "✏️ caption" / `<edit>`.
"""

from __future__ import annotations

import time
from pathlib import Path

import gradio as gr

from ..feedback.store import FeedbackRecord
from ..inputs import InvalidInputError, load_image
from ..modeling.decoder import GenerationCancelled
from .common import (EXAMPLE_DIR, MODEL_QUEUE, clamp_float, clamp_int, edit_warning, generation_seconds, on_gpu,
                     session_of, user_errors)
from .context import AppContext

DRAW_MARK, EDIT_MARK = "🎨 ", "✏️ "
MODES = {"Auto (the model decides)": "auto", "Always answer in text": "answer", "Always draw": "draw"}


def to_display(answer, answer_after: str = "") -> str:
    """The chat's text for an answer. Working the model wrote before its answer is shown as written (a model
    trained with `--show-work`: where each object is, then the answer on a line of its own), so that the
    history handed back to the model is what it wrote."""
    if answer.kind == "draw":
        return DRAW_MARK + answer.text
    if answer.kind == "edit":
        return EDIT_MARK + answer.text
    return f"{answer.working}{answer_after}{answer.text}" if answer.working else answer.text


def _text_of(content) -> str | None:
    if isinstance(content, str):
        return content
    if isinstance(content, dict) and content.get("type") == "text":
        return content.get("text", "")
    return None


def to_model_messages(history: list[dict]) -> list[dict]:
    """Gradio's chat history -> OpenAI-style messages, restoring the drawing/editing tags."""
    messages = []
    for message in history or []:
        contents = message.get("content")
        contents = contents if isinstance(contents, list) else [contents]
        parts = []
        for content in contents:
            text = _text_of(content)
            if text is None:
                file = content.get("file", content) if isinstance(content, dict) else None
                path = file.get("path") if isinstance(file, dict) else getattr(content, "path", None)
                if path:
                    parts.append({"type": "image", "path": path})
                continue
            if message["role"] == "assistant" and text.startswith(DRAW_MARK):
                text = f"<img>{text[len(DRAW_MARK):]}</img>"
            elif message["role"] == "assistant" and text.startswith(EDIT_MARK):
                text = f"<edit>{text[len(EDIT_MARK):]}</edit>"
            parts.append({"type": "text", "text": text})
        if parts:
            messages.append({"role": message["role"], "content": parts})
    return messages


def example_inputs() -> list[dict]:
    files = sorted(EXAMPLE_DIR.glob("scene_*.png"))
    questions = ["How many circles are there?", "Describe the image.", "What color is the square?",
                 "make the circle blue"]
    examples = [{"text": q, "files": [str(f)]} for q, f in zip(questions, files)]
    return examples + [{"text": "draw two red circles above a blue square", "files": []}]


def build_chat_tab(ctx: AppContext) -> dict:
    pipeline = ctx.pipeline
    with gr.Row():
        with gr.Column(scale=4):
            chatbot = gr.Chatbot(elem_id="chatbot", height=460, buttons=["copy"], sanitize_html=True,
                                 render_markdown=True, feedback_options=("Like", "Dislike"), label="Chat",
                                 placeholder="Ask about an image, or ask me to draw circles, squares and triangles.")
            box = gr.MultimodalTextbox(elem_id="chat-input", file_types=["image"], file_count="multiple",
                                       sources=["upload"], placeholder="Type a message, add images…",
                                       stop_btn=True, show_label=False)
            with gr.Row(visible=False) as comment_row:
                comment = gr.Textbox(label="Add a comment to your rating (optional)", scale=4,
                                     elem_id="chat-comment")
                comment_button = gr.Button("Send comment", scale=1, elem_id="chat-comment-send")
        with gr.Column(scale=1, min_width=220):
            mode = gr.Radio(list(MODES), value="Auto (the model decides)", label="Answer or draw",
                            elem_id="chat-mode")
            with gr.Accordion("Parameters", open=False):
                max_new_tokens = gr.Slider(1, 512, value=64, step=1, label="Max new tokens")
                temperature = gr.Slider(0.0, 1.5, value=0.0, step=0.05, label="Temperature",
                                        info="0 = greedy, the model's trained behaviour")
                top_p = gr.Slider(0.05, 1.0, value=1.0, step=0.05, label="Top-p")
                steps = gr.Slider(1, 100, value=pipeline.config.generation.num_inference_steps, step=1,
                                  label="Drawing steps")
    gr.Examples(examples=example_inputs(), inputs=[box], label="Examples")
    voted = gr.State(set())
    last_record = gr.State(None)
    latency = gr.State(None)

    def add_user_turn(message: dict | None, history: list[dict]):
        message = message or {}
        text = (message.get("text") or "").strip()
        files = message.get("files") or []
        if not text and not files:
            raise gr.Error("Type a message or add an image first.")
        for file in files:
            try:
                load_image(file if isinstance(file, str) else file.get("path"), ctx.settings.max_image_pixels)
            except InvalidInputError as error:
                raise gr.Error(f"{Path(str(file)).name}: {error}") from None
        history = list(history or [])
        history += [{"role": "user", "content": {"path": f if isinstance(f, str) else f["path"]}} for f in files]
        if text:
            history.append({"role": "user", "content": text})
        return history, gr.MultimodalTextbox(value=None, interactive=False)

    def respond_seconds(history, mode_label, max_tokens, temp, nucleus, draw_steps, request=None) -> int:
        defaults = ctx.pipeline.config.generation  # a turn may draw, or edit with the self-check's candidates
        return generation_seconds(draw_steps, max(defaults.candidates, defaults.edit_candidates)) + 20

    @on_gpu(respond_seconds)
    @user_errors
    def respond(history, mode_label, max_tokens, temp, nucleus, draw_steps, request: gr.Request = None):
        history = list(history or [])
        cancel = ctx.cancel_event(session_of(request))
        cancel.clear()

        def stop_between_steps(decoder, step, timestep, tensors):
            if cancel.is_set():
                raise GenerationCancelled()

        history.append({"role": "assistant", "content": "…"})
        started = time.perf_counter()
        turn = pipeline.stream_chat_turn(
            to_model_messages(history[:-1]), mode=MODES.get(mode_label, "auto"),
            max_new_tokens=clamp_int(max_tokens, 1, 512, 64), temperature=clamp_float(temp, 0.0, 1.5, 0.0),
            top_p=clamp_float(nucleus, 0.05, 1.0, 1.0),
            num_inference_steps=clamp_int(draw_steps, 1, 100, pipeline.config.generation.num_inference_steps),
            callback=stop_between_steps)
        try:
            for event in turn:
                if cancel.is_set():
                    break
                shown = to_display(event.answer, pipeline.config.prompts.answer_after)
                history[-1] = {"role": "assistant", "content": shown or "…"}
                if event.result is not None:
                    warning = edit_warning(event.result.parameters.get("source_description"), event.result.caption)
                    if warning:
                        gr.Warning(warning)
                    for image in event.result.images:
                        path = ctx.save_output(image, {**event.result.parameters, "chat": True})
                        history.append({"role": "assistant", "content": {"path": path}})
                yield history, round(time.perf_counter() - started, 3)
        finally:
            turn.close()

    def stop(request: gr.Request = None):
        ctx.cancel_event(session_of(request)).set()

    def unlock():
        return gr.MultimodalTextbox(interactive=True)

    def retry(history, retry_data: gr.RetryData):
        return list(history)[: retry_data.index + 1]

    def undo(history, undo_data: gr.UndoData):
        history = list(history)
        removed = history[undo_data.index]
        text = _text_of(removed["content"][0] if isinstance(removed["content"], list) else removed["content"])
        return history[: undo_data.index], gr.MultimodalTextbox(value={"text": text or "", "files": []})

    def record_like(history, already, seconds, like: gr.LikeData, request: gr.Request = None):
        index = like.index if isinstance(like.index, int) else like.index[0]
        if index in already:
            gr.Info("You already rated this answer.")
            return already, gr.Row(visible=False), None
        answer = history[index]
        asked = [m for m in history[:index] if m["role"] == "user"]
        record_id = ctx.feedback.add(FeedbackRecord(
            session_id=session_of(request), tab="chat", kind="like" if like.liked is True else "dislike",
            value=str(like.liked), inputs={"messages": to_model_messages(asked[-3:])},
            outputs={"answer": to_model_messages([answer])}, model_id=pipeline.variant_id, latency_s=seconds))
        gr.Info("Thanks for the feedback!")
        return already | {index}, gr.Row(visible=True), record_id

    def send_comment(text, record_id):
        if record_id is None or not (text or "").strip():
            raise gr.Error("Rate an answer first, then add a comment.")
        ctx.feedback.set_comment(int(record_id), text.strip())
        gr.Info("Comment saved.")
        return "", gr.Row(visible=False)

    answer_inputs = [chatbot, mode, max_new_tokens, temperature, top_p, steps]
    submitted = box.submit(add_user_turn, [box, chatbot], [chatbot, box], queue=False, api_visibility="private")
    answering = submitted.then(respond, answer_inputs, [chatbot, latency], api_visibility="private", **MODEL_QUEUE)
    answering.then(unlock, None, [box], api_visibility="private")
    box.stop(stop, None, None, cancels=[answering], queue=False, api_visibility="private")
    retried = chatbot.retry(retry, [chatbot], [chatbot], api_visibility="private")
    retried.then(respond, answer_inputs, [chatbot, latency], api_visibility="private", **MODEL_QUEUE)
    chatbot.undo(undo, [chatbot], [chatbot, box], api_visibility="private")
    chatbot.clear(lambda: (set(), gr.Row(visible=False)), None, [voted, comment_row], api_visibility="private")
    chatbot.like(record_like, [chatbot, voted, latency], [voted, comment_row, last_record], api_visibility="private")
    comment_button.click(send_comment, [comment, last_record], [comment, comment_row], api_visibility="private")
    comment.submit(send_comment, [comment, last_record], [comment, comment_row], api_visibility="private")
    _build_chat_api(ctx)
    return {"chatbot": chatbot, "box": box}


def _build_chat_api(ctx: AppContext) -> None:
    """`/chat` for gradio_client users: message + images (+ text history) -> streamed answer (+ image)."""
    with gr.Group(visible=False):
        message = gr.Textbox(label="message")
        images = gr.File(file_count="multiple", file_types=["image"], label="images")
        history = gr.JSON(label="history")
        mode = gr.Textbox(value="auto", label="mode")
        max_new_tokens = gr.Number(value=64, label="max_new_tokens", precision=0)
        temperature = gr.Number(value=0.0, label="temperature")
        top_p = gr.Number(value=1.0, label="top_p")
        answer = gr.Textbox(label="answer")
        image = gr.Image(type="filepath", format="png", label="image")
        trigger = gr.Button("chat")

    @user_errors
    def chat_api(text, files, past, mode_name, max_tokens, temp, nucleus):
        if mode_name not in ("auto", "answer", "draw"):
            raise InvalidInputError("mode must be auto, answer or draw")
        past = past if isinstance(past, list) else []
        messages = [m for m in past if isinstance(m, dict) and m.get("role") in ("user", "assistant")]
        content = [{"type": "image", "path": f if isinstance(f, str) else f.name} for f in (files or [])]
        if not (text or "").strip() and not content:
            raise InvalidInputError("the message is empty: type a question or add an image")
        content.append({"type": "text", "text": text or ""})
        messages.append({"role": "user", "content": content})
        for event in ctx.pipeline.stream_chat_turn(
                messages, mode=mode_name, max_new_tokens=clamp_int(max_tokens, 1, 512, 64),
                temperature=clamp_float(temp, 0.0, 1.5, 0.0), top_p=clamp_float(nucleus, 0.05, 1.0, 1.0)):
            path = None
            if event.result is not None:
                path = ctx.save_output(event.result.images[0], event.result.parameters)
            yield to_display(event.answer, ctx.pipeline.config.prompts.answer_after), path

    trigger.click(chat_api, [message, images, history, mode, max_new_tokens, temperature, top_p], [answer, image],
                  api_name="chat", **MODEL_QUEUE)

