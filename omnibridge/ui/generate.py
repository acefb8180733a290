"""Generate & Edit tab: prompt -> (LLM rewrite) -> images, or image + instruction -> edited images."""

from __future__ import annotations

import hashlib
import random
import time

import gradio as gr
from PIL import Image

from ..feedback.store import FeedbackRecord
from ..gallery.store import content_id
from ..inputs import MAX_PROMPT_CHARS, clean_text, load_image
from ..modeling.decoder import SAMPLERS, GenerationCancelled
from ..pipeline import MAX_SEED
from ..self_check import MAX_CANDIDATES
from .common import (EXAMPLE_DIR, MODEL_QUEUE, clamp_float, clamp_int, edit_warning, generation_seconds, on_gpu,
                     session_of, user_errors)
from .components import ImageInput
from .context import AppContext


# No accuracy figures here: the app may load another model than the built-in one they were measured
# on (README, "fewer steps", has them: DDPM@100 is the most accurate there).
SAMPLER_LABELS = {
    "dpm++": "DPM-Solver++ (fast)",
    "ddpm": "DDPM, 100 steps (the official setting; several times slower)",
    "unipc": "UniPC (fast)",
    "ddim": "DDIM",
    "dpm++sde": "DPM-Solver++ SDE",
}
SAMPLER_STEPS = {"ddpm": 100}  # the others: the model's default
assert set(SAMPLER_LABELS) == set(SAMPLERS)
PLACEHOLDERS = {"Generate": "two red circles above a blue square", "Edit": "make the circle blue"}


def example_rows() -> list[list]:
    """The tab's examples as [mode, image to edit, prompt]: a visitor with no Shapes image at hand can still try
    an edit, on the example scenes, with instructions of the kinds the model was trained on."""
    scene = {path.stem: str(path) for path in EXAMPLE_DIR.glob("scene_*.png")}
    return [["Generate", None, "two red circles above a blue square"],
            ["Generate", None, "three green triangles"],
            ["Edit", scene["scene_4"], "make the circle blue"],
            ["Edit", scene["scene_2"], "remove the triangle"],
            ["Edit", scene["scene_2"], "add a small red circle"],
            ["Edit", scene["scene_4"], "move the circle to the right"]]


def _guidance_info(cutoff: float) -> str:
    info = "Higher follows the caption harder; too high erases objects"
    if cutoff < 1.0:
        info += (f". This model guides the first {cutoff:.0%} of the steps; the rest run unguided, "
                 "at about half the cost")
    return info


def file_sha(path: str) -> str:
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()[:16]


class Generator:
    """The tab's model calls, shared by the UI events and the `/generate` and `/edit` endpoints."""

    def __init__(self, ctx: AppContext):
        self.ctx = ctx

    def _callback(self, session: str, steps: int, progress):
        cancel = self.ctx.cancel_event(session)
        cancel.clear()

        def on_step(decoder, step, timestep, tensors):
            if cancel.is_set():
                raise GenerationCancelled()
            progress((step + 1) / steps, desc=f"denoising {step + 1}/{steps}")

        return on_step

    def _settings(self, seed, randomize, steps, guidance, count):
        defaults = self.ctx.pipeline.config.generation
        seed = random.randrange(MAX_SEED) if randomize or seed is None else clamp_int(seed, 0, MAX_SEED, 0)
        return (seed, clamp_int(steps, 1, 100, defaults.num_inference_steps),
                clamp_float(guidance, 1.0, 20.0, defaults.guidance_scale), clamp_int(count, 1, 4, 1))

    @staticmethod
    def _candidates(candidates) -> int | None:
        """The self-check's count; None (left out, 0 or not a number) is the model's default."""
        count = clamp_int(candidates, 0, MAX_CANDIDATES, 0)
        return count or None

    def _outputs(self, result, started: float, extra: dict | None = None):
        result.parameters.update(extra or {})
        paths = [self.ctx.save_output(image, {**result.parameters, "seed": s})
                 for image, s in zip(result.images, result.seeds)]
        details = {**result.parameters, "timings_s": {k: round(v, 3) for k, v in result.timings.items()},
                   "latency_s": round(time.perf_counter() - started, 3)}
        if result.scores is not None:
            details["self_check_scores"] = result.scores
        records = [{"path": p, "parameters": {**result.parameters, "seed": s}, "latency_s": details["latency_s"]}
                   for p, s in zip(paths, result.seeds)]
        return paths, result.caption, result.seed, details, records

    def generate(self, prompt, rewrite, seed, randomize, steps, guidance, count, session="api",
                 progress=gr.Progress(), size=None, sampler=None, candidates=None):
        started = time.perf_counter()
        prompt = clean_text(prompt, MAX_PROMPT_CHARS)
        seed, steps, guidance, count = self._settings(seed, randomize, steps, guidance, count)
        result = self.ctx.pipeline.generate(prompt, rewrite=bool(rewrite), seed=seed, num_inference_steps=steps,
                                            guidance_scale=guidance, num_images=count, height=size, width=size,
                                            callback=self._callback(session, steps, progress), sampler=sampler,
                                            candidates=self._candidates(candidates))
        return self._outputs(result, started)

    def edit(self, image, instruction, seed, randomize, steps, guidance, strength, count, session="api",
             progress=gr.Progress(), size=None, sampler=None, candidates=None):
        started = time.perf_counter()
        if not image:
            raise gr.Error("Add an image to edit (upload one, or use 'Send to edit' on a result).")
        source = load_image(image, self.ctx.settings.max_image_pixels)
        instruction = clean_text(instruction, MAX_PROMPT_CHARS, what="instruction")
        seed, steps, guidance, count = self._settings(seed, randomize, steps, guidance, count)
        result = self.ctx.pipeline.edit(source, instruction, seed=seed, num_inference_steps=steps,
                                        guidance_scale=guidance, strength=clamp_float(strength, 0.05, 1.0, 1.0),
                                        num_images=count, height=size, width=size,
                                        callback=self._callback(session, steps, progress), sampler=sampler,
                                        candidates=self._candidates(candidates))
        outputs = self._outputs(result, started, {"source_sha": content_id(source)})
        warning = edit_warning(result.parameters.get("source_description"), result.caption)
        if warning:
            gr.Warning(warning)  # the image is drawn anyway: the user sees what came of it
            outputs[3]["warning"] = warning  # details: what an API caller reads
        return outputs


def _seconds(mode_name, image, text, do_rewrite, seed_value, random_seed, n_steps, scale, edit_strength, n,
             side=None, sampler_kind=None, n_candidates=1, *request_and_progress) -> int:
    """ZeroGPU duration for one request of the tab (the same arguments as the event)."""
    drawn = clamp_int(n, 1, 4, 1) * clamp_int(n_candidates, 1, MAX_CANDIDATES, 1)
    return generation_seconds(clamp_int(n_steps, 1, 100, 20), drawn)


def build_generate_tab(ctx: AppContext) -> dict:
    generator = Generator(ctx)
    defaults = ctx.pipeline.config.generation
    with gr.Row():
        with gr.Column(scale=2):
            mode = gr.Radio(["Generate", "Edit"], value="Generate", label="Mode", elem_id="gen-mode")
            source = ImageInput(label="Image to edit", sources=["upload", "clipboard"], visible=False,
                              elem_id="edit-image", format="png", height=220, elem_classes="fill-frame")
            prompt = gr.Textbox(label="Prompt", placeholder=PLACEHOLDERS["Generate"], max_lines=4,
                                elem_id="gen-prompt", info="Press Enter to run. In Edit mode: the instruction, "
                                                            "e.g. 'make the circle blue'.")
            rewrite = gr.Checkbox(value=True, label="Rewrite the prompt with the LLM (OmniBridge's rewrite step)")
            with gr.Row():
                seed = gr.Number(value=0, precision=0, label="Seed", minimum=0, maximum=MAX_SEED, elem_id="gen-seed")
                randomize = gr.Checkbox(value=True, label="Randomize seed")
            with gr.Accordion("Settings", open=False):
                sampler = gr.Dropdown([(label, kind) for kind, label in SAMPLER_LABELS.items()],
                                      value=defaults.sampler, label="Sampler", elem_id="gen-sampler",
                                      info="Picking one sets its usual step count")
                steps = gr.Slider(1, 100, value=defaults.num_inference_steps, step=1, label="Steps")
                guidance = gr.Slider(1.0, 10.0, value=defaults.guidance_scale, step=0.5, label="Guidance",
                                     info=_guidance_info(defaults.guidance_cutoff))
                count = gr.Slider(1, 4, value=1, step=1, label="Images")
                candidates = gr.Slider(1, MAX_CANDIDATES, value=defaults.candidates, step=1,
                                       label="Self-check: candidates per image", elem_id="gen-candidates",
                                       info="Draw this many and keep the one the model itself rates closest to "
                                            "the caption (its retrieval embeddings); each one costs an image's time")
                strength = gr.Slider(0.05, 1.0, value=1.0, step=0.05, label="Edit strength", visible=False,
                                     info="1 regenerates from the new caption (the paper); lower keeps more layout")
                sizes = [f"{side} x {side}" for side in defaults.allowed_sizes]
                size = gr.Dropdown(sizes, value=f"{defaults.height} x {defaults.height}", label="Size",
                                   visible=len(sizes) > 1, info="the sizes this model was trained for")
                if len(sizes) == 1:
                    gr.Markdown(f"Image size: {sizes[0]} (the only size this model was trained for)")
            with gr.Row():
                run = gr.Button("Generate", variant="primary", elem_id="gen-run")
                stop = gr.Button("Stop", elem_id="gen-stop")
            gr.Examples(examples=example_rows(), inputs=[mode, source, prompt], label="Examples",
                        elem_id="gen-examples")
        with gr.Column(scale=3):
            gallery = gr.Gallery(label="Results", columns=2, height=420, format="png", type="filepath",
                                 object_fit="contain", buttons=["download", "fullscreen"], elem_id="gen-gallery")
            caption = gr.Textbox(label="Caption the decoder saw", interactive=False, elem_id="gen-caption")
            with gr.Row():
                like = gr.Button("👍 Like", elem_id="gen-like", scale=0, min_width=120)
                dislike = gr.Button("👎 Dislike", elem_id="gen-dislike", scale=0, min_width=120)  # 90 wrapped "Dislike"
                save = gr.Button("Save to gallery", elem_id="gen-save")
                to_edit = gr.Button("Send to edit", elem_id="gen-to-edit")
            details = gr.JSON(label="Details", open=False)
    results = gr.State([])
    selected = gr.State(0)
    rated = gr.State(set())

    def switch(mode_name):
        editing = mode_name == "Edit"
        return (gr.Image(visible=editing), gr.Slider(visible=editing), gr.Checkbox(visible=not editing),
                gr.Button(value="Edit" if editing else "Generate"),
                defaults.edit_candidates if editing else defaults.candidates,
                gr.Textbox(placeholder=PLACEHOLDERS[mode_name]))

    @on_gpu(_seconds)
    @user_errors
    def run_ui(mode_name, image, text, do_rewrite, seed_value, random_seed, n_steps, scale, edit_strength, n,
               size_label, sampler_kind, n_candidates, request: gr.Request = None, progress=gr.Progress()):
        session = session_of(request)
        side = clamp_int(str(size_label or "").split(" x ")[0], 1, 8192, defaults.height)
        if mode_name == "Edit":
            outputs = generator.edit(image, text, seed_value, random_seed, n_steps, scale, edit_strength, n,
                                     session, progress, side, sampler_kind, n_candidates)
        else:
            outputs = generator.generate(text, do_rewrite, seed_value, random_seed, n_steps, scale, n, session,
                                         progress, side, sampler_kind, n_candidates)
        return (*outputs, 0, set())

    def stop_now(request: gr.Request = None):
        ctx.cancel_event(session_of(request)).set()

    def pick(evt: gr.SelectData):
        return evt.index

    def current(records, index):
        if not records:
            raise gr.Error("Generate an image first.")
        return records[min(int(index or 0), len(records) - 1)]

    def rate(kind):
        def record(records, index, text, already, request: gr.Request = None):
            item = current(records, index)
            if item["path"] in already:
                gr.Info("You already rated this image.")
                return already
            ctx.feedback.add(FeedbackRecord(
                session_id=session_of(request), tab="generate", kind=kind, value=kind,
                inputs={"prompt": text, "source_image_sha": item["parameters"].get("source_sha", "")},
                outputs={"image_sha": file_sha(item["path"]), "caption": item["parameters"].get("caption")},
                parameters=item["parameters"], model_id=ctx.pipeline.variant_id, latency_s=item.get("latency_s")))
            gr.Info("Thanks for the feedback!")
            return already | {item["path"]}
        return record

    @user_errors
    def save_to_gallery(records, index):
        item = current(records, index)
        ids = ctx.gallery.add([Image.open(item["path"])], [item["parameters"].get("caption") or ""],
                              source="generated")
        gr.Info(f"Saved to the gallery ({ids[0][:8]}).")

    def send_to_edit(records, index):
        item = current(records, index)
        return (gr.Radio(value="Edit"), gr.Image(value=item["path"], visible=True), gr.Slider(visible=True),
                gr.Checkbox(visible=False), gr.Button(value="Edit"), defaults.edit_candidates)

    ui_inputs = [mode, source, prompt, rewrite, seed, randomize, steps, guidance, strength, count, size, sampler,
                 candidates]
    ui_outputs = [gallery, caption, seed, details, results, selected, rated]
    mode.change(switch, [mode], [source, strength, rewrite, run, candidates, prompt], queue=False,
                api_visibility="private")
    sampler.change(lambda kind: SAMPLER_STEPS.get(kind, defaults.num_inference_steps), [sampler], [steps],
                   queue=False, api_visibility="private")
    running = gr.on([run.click, prompt.submit], run_ui, ui_inputs, ui_outputs, api_visibility="private",
                    **MODEL_QUEUE)
    stop.click(stop_now, None, None, cancels=[running], queue=False, api_visibility="private")
    gallery.select(pick, None, [selected], queue=False, api_visibility="private")
    like.click(rate("like"), [results, selected, prompt, rated], [rated], api_visibility="private")
    dislike.click(rate("dislike"), [results, selected, prompt, rated], [rated], api_visibility="private")
    save.click(save_to_gallery, [results, selected], None, api_visibility="private", **MODEL_QUEUE)
    to_edit.click(send_to_edit, [results, selected], [mode, source, strength, rewrite, run, candidates],
                  queue=False, api_visibility="private")
    _build_generate_api(generator)
    return {"mode": mode, "source": source, "prompt": prompt, "run": run, "strength": strength,
            "rewrite": rewrite}


def _build_generate_api(generator: Generator) -> None:
    """`/generate` and `/edit`: plain inputs for gradio_client users."""
    with gr.Group(visible=False):
        prompt = gr.Textbox(label="prompt")
        image = ImageInput(label="image")
        rewrite = gr.Checkbox(value=True, label="rewrite")
        seed = gr.Number(value=0, precision=0, label="seed")
        randomize = gr.Checkbox(value=False, label="randomize_seed")
        steps = gr.Number(value=generator.ctx.pipeline.config.generation.num_inference_steps, label="steps")
        guidance = gr.Number(value=generator.ctx.pipeline.config.generation.guidance_scale, label="guidance")
        strength = gr.Number(value=1.0, label="strength")
        count = gr.Number(value=1, precision=0, label="num_images")
        sampler = gr.Textbox(value="", label="sampler")
        candidates = gr.Number(value=0, precision=0, label="candidates")  # 0: the model's default
        images = gr.Gallery(format="png", type="filepath", label="images")
        caption = gr.Textbox(label="caption")
        used_seed = gr.Number(label="seed_used")
        details = gr.JSON(label="details")
        generate_button, edit_button = gr.Button("generate"), gr.Button("edit")

    @user_errors
    def generate_api(text, do_rewrite, seed_value, random_seed, n_steps, scale, n, sampler_kind="",
                     n_candidates=None, progress=gr.Progress()):
        return generator.generate(text, do_rewrite, seed_value, random_seed, n_steps, scale, n, "api", progress,
                                  sampler=sampler_kind or None, candidates=n_candidates)[:4]

    @user_errors
    def edit_api(source, text, seed_value, random_seed, n_steps, scale, edit_strength, n, sampler_kind="",
                 n_candidates=None, progress=gr.Progress()):
        return generator.edit(source, text, seed_value, random_seed, n_steps, scale, edit_strength, n, "api",
                              progress, sampler=sampler_kind or None, candidates=n_candidates)[:4]

    outputs = [images, caption, used_seed, details]
    generate_button.click(generate_api, [prompt, rewrite, seed, randomize, steps, guidance, count, sampler,
                                         candidates], outputs, api_name="generate", **MODEL_QUEUE)
    edit_button.click(edit_api, [image, prompt, seed, randomize, steps, guidance, strength, count, sampler,
                                 candidates], outputs, api_name="edit", **MODEL_QUEUE)
