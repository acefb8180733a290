"""Quantization: the language model's weight memory and what 8-bit and 4-bit cost in time, against the
full-precision model loaded in the same run.

On a GPU quantization is what lets the full-size model fit a smaller card; on a CPU it only saves memory
(bitsandbytes' CPU products are slower than PyTorch's float32 ones), which is what this measures here.
"""

from __future__ import annotations

from omnibridge.modeling.devices import QUANTIZATIONS

from .harness import RequestThreads, Result, Timing, ratio

QUESTION = "Describe the image."


def run(full, model: str, image, repeats: int = 5, modes: tuple[str, ...] = QUANTIZATIONS) -> Result:
    """`full` is the run's pipeline of `model`, at full precision."""
    from omnibridge import OmniBridgePipeline

    # one thread team for all of them, as two checkpoints share one in the app: a second team, even an idle
    # one, made a full-precision answer 3.5x slower here (docs/performance-notes.md, quantization)
    pipes = {"full": full, **{mode: OmniBridgePipeline.from_pretrained(model, quantization=mode,
                                                                        model_thread=full.model_thread)
                              for mode in modes}}
    messages = [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": QUESTION}]}]
    answers = {name: pipe.chat(messages) for name, pipe in pipes.items()}
    requests = RequestThreads()
    runs = {}
    for name, pipe in pipes.items():
        runs[f"{name}_answer"] = requests(lambda pipe=pipe: pipe.chat(messages))
        runs[f"{name}_embed"] = requests(lambda pipe=pipe: pipe.embed_images([image] * 16))
    timings = Timing.interleaved(runs, repeats)
    weights_mb = {name: pipe.info()["memory"]["llm_weights_mb"] for name, pipe in pipes.items()}
    figures = {"llm_weights_mb": weights_mb, "answers": answers}
    for name in pipes:
        figures[name] = {"answer_s": timings[f"{name}_answer"].median_s,
                         "embed_16_images_s": timings[f"{name}_embed"].median_s}
        if name != "full":
            figures[name].update(
                weights_ratio=ratio(weights_mb[name], weights_mb["full"]),
                answer_time_ratio=ratio(timings[f"{name}_answer"].median_s, timings["full_answer"].median_s),
                embed_time_ratio=ratio(timings[f"{name}_embed"].median_s, timings["full_embed"].median_s),
                same_answer=answers[name] == answers["full"])
    summary = "quantize: " + ", ".join(
        f"{name} LLM weights x{figures[name]['weights_ratio']}, answer x{figures[name]['answer_time_ratio']} the time"
        for name in modes) + f" vs full precision ({weights_mb['full']:.1f} MB)"
    return Result("quantize", figures, summary, goal="none (report)")
