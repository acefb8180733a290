"""Chat: time to first token and tokens/s, streamed through the pipeline vs a bare `model.generate`."""

from __future__ import annotations

import time

from omnibridge.modeling.chat_format import Message

from .harness import RequestThreads, Result, Timing, ratio

QUESTION = "Describe the image."


def run(pipe, image, repeats: int = 5) -> Result:
    messages = [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": QUESTION}]}]
    answer = pipe.chat(messages)
    new_tokens = max(1, len(pipe.tokenizer(answer, add_special_tokens=False).input_ids) + 1)

    def first_token() -> float:
        # Time to the first yield, as the user sees it; closing the stream (which waits for the
        # step already under way to finish) happens after the clock stops.
        start = time.perf_counter()
        stream = pipe.stream_chat(messages, max_new_tokens=new_tokens)
        next(stream)
        elapsed = time.perf_counter() - start
        stream.close()
        return elapsed

    def whole_answer():
        for _ in pipe.stream_chat(messages, max_new_tokens=new_tokens):
            pass

    encoded = pipe.format.encode([Message("user", [image, QUESTION])])
    batch = pipe._to_device(pipe.format.collate([encoded], "left")["inputs"])

    def bare(tokens: int):
        # the same stop tokens as the pipeline, so both stop after the same answer
        # on the pipeline's model thread, where its own answers run (the same OpenMP team)
        return lambda: pipe.run_job(lambda: pipe.llm.generate(**batch, max_new_tokens=tokens, do_sample=False,
                                                               eos_token_id=pipe._stop_ids(),
                                                               pad_token_id=pipe.format.pad_id))

    requests = RequestThreads()  # the pipeline is asked from request threads, as in the app
    # an answer takes milliseconds, so four times the rounds cost little and steady the medians
    timings = Timing.interleaved({"first": requests(first_token), "bare_first": bare(1),
                                  "total": requests(whole_answer), "bare_total": bare(new_tokens)}, repeats * 4)
    ttft, bare_first, total, bare_total = (timings[k] for k in ("first", "bare_first", "total", "bare_total"))
    figures = {
        "answer_tokens": new_tokens,
        "first_token_s": ttft.median_s, "bare_first_token_s": bare_first.median_s,
        "first_token_overhead": ratio(ttft.median_s, bare_first.median_s),
        "tokens_per_s": round(new_tokens / total.median_s, 1),
        "bare_tokens_per_s": round(new_tokens / bare_total.median_s, 1),
        "answer_overhead": ratio(total.median_s, bare_total.median_s),
        "spread_s": [total.min_s, total.max_s],
    }
    summary = (f"chat: first token {ttft.median_s * 1000:.0f} ms (bare {bare_first.median_s * 1000:.0f} ms), "
               f"{figures['tokens_per_s']} tok/s, overhead x{figures['answer_overhead']} vs bare generate")
    return Result("chat", figures, summary, goal="overhead <= 1.10x; first token <= 50 ms")
