"""OmniBridgePipeline: one model for chat, generation, editing and retrieval.

    from omnibridge import OmniBridgePipeline
    pipe = OmniBridgePipeline.from_pretrained("assets/omnibridge-shapes")
    pipe.chat([{"role": "user", "content": "How many circles are there?"}], images=["scene.png"])
    result = pipe.generate("draw two red circles", seed=1)      # result.images[0], result.caption
    vectors = pipe.embed_texts(["a red circle"])                   # [1, D] unit-norm float32

How each task flows (see docs in architecture.md):
- chat: Qwen2-VL with M-RoPE positions for images, tokens streamed.
- generate: the LLM rewrites the prompt into a caption (`<img> ... </img>`); one teacher-forced pass
  over that caption gives its hidden states; projector + BiLM turn them, through learned queries
  only, into the decoder's T5-slot conditioning; HunyuanDiT denoises with the caption's BERT slot
  and T5 mask.
- edit: the LLM, seeing the image, writes the target caption; the BiLM reads that caption's T5
  token embeddings while cross-attending to the image-token states; then the decoder as above.
- retrieval: LLM states of an image's tokens or a text's tokens -> retrieval queries through the
  BiLM -> attention pooling -> fused, unit-norm vectors.
"""

from __future__ import annotations

import contextlib
import copy
import math
import queue
import random
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterator, TypeVar

import numpy as np
import torch
from PIL import Image
from transformers import StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from .caption_choice import least_change
from .inputs import InvalidInputError, clean_text, load_image, normalize_messages
from .model_thread import ModelThread
from .offload import GIB, ComponentOffload, OffloadError
from .modeling.chat_format import ChatFormat, EncodedPrompt, Message, SpanText, gather_spans
from .modeling.decoder import SAMPLERS, CaptionEncoding, GenerationCancelled, StepCallback
from .modeling.devices import Placement, placement as choose_placement
from .modeling.features import feature_layers_only, feature_states
from .modeling.loading import (
    LoadedModel,
    detect_layout,
    load_official_layout,
    load_our_layout,
    resolve_folder,
    save_our_layout,
)
from .self_check import MAX_CANDIDATES, best_candidates, candidate_seeds

MAX_SEED = 2**31 - 1
# A streamed answer's text is updated at most this often (the first token always at once): 30 a second.
STREAM_INTERVAL_S = 1 / 30
# Room for a one-turn answer with its working: the built-in model's longest, a four-object description shown
# with every object's position, is 66 tokens (an answer alone at most 20); generation stops at the end token.
ANSWER_TOKENS = 96
Result = TypeVar("Result")

__all__ = ["OmniBridgePipeline", "GenerationResult", "ChatAnswer", "ChatTurnEvent", "GenerationCancelled", "InvalidInputError"]


@dataclass
class GenerationResult:
    images: list[Image.Image]
    prompt: str  # what the user asked for (or the edit instruction)
    caption: str  # what the decoder was conditioned on (the LLM's rewrite, or the prompt itself)
    seeds: list[int]
    timings: dict[str, float]
    parameters: dict = field(default_factory=dict)
    # With the self-check (candidates > 1): each kept image's image-caption cosine, else None
    scores: list[float] | None = None

    @property
    def seed(self) -> int:
        return self.seeds[0]


@dataclass
class ChatAnswer:
    """A chat reply as the model meant it: plain text, a drawing request, or an edit of the last image."""

    kind: str  # "text", "draw" or "edit"
    text: str  # the visible answer (the caption for drawings and edits)
    caption: str | None = None
    working: str = ""  # what the model wrote before a text answer when it shows its work (PromptConfig.answer_after)


@dataclass
class ChatTurnEvent:
    """One update of a chat turn: the answer so far, and at the end the drawn or edited images."""

    answer: ChatAnswer
    done: bool
    result: GenerationResult | None = None


class _StopOnEvent(StoppingCriteria):
    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids, scores, **kwargs) -> torch.Tensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


class _TokenQueue(BaseStreamer):
    """Hands each step's new token ids to the consuming thread. Decoding happens there, so the
    generating thread does nothing per token beyond a queue put.

    After the first token the consumer wakes at most every `interval` seconds (or at once when the
    answer ends) and takes what has arrived: on two cores a wake-up per token (decode the text, clean
    it, hand it to Gradio) competed with the model's own threads, for updates no eye can tell apart.
    """

    def __init__(self, interval: float = 0.0):
        self.queue: queue.SimpleQueue = queue.SimpleQueue()
        self.interval = interval
        self._ended = threading.Event()
        self._prompt_passed = False

    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_passed:  # generate() first hands over the prompt itself
            self._prompt_passed = True
            return
        self.queue.put(value.reshape(-1).tolist())

    def end(self) -> None:
        self._ended.set()
        self.queue.put(None)

    def batches(self, timeout: float) -> Iterator[list[int]]:
        """The new ids, grouped: everything that arrived since the last batch."""
        next_batch_at = 0.0
        while True:
            self._ended.wait(max(0.0, next_batch_at - time.monotonic()))  # returns early at the end
            try:
                first = self.queue.get(timeout=timeout)
            except queue.Empty:
                raise RuntimeError(f"the language model produced nothing for {timeout:.0f} s") from None
            if first is None:
                return
            ids, finished = list(first), False
            while not finished:
                try:
                    more = self.queue.get_nowait()
                except queue.Empty:
                    break
                finished = more is None
                ids += more or []
            next_batch_at = time.monotonic() + self.interval
            yield ids
            if finished:
                return


QUANTIZED_CANNOT_MOVE = ("model offload and quantization do not combine: bitsandbytes weights cannot move "
                         "between the CPU and the GPU; choose one")


class OmniBridgePipeline:
    """Owns every component; methods are thread-safe (one model job runs at a time)."""

    def __init__(self, model: LoadedModel, placement: Placement, model_thread: ModelThread | None = None):
        self.model = model
        self.config = model.config
        self.placement = placement
        self.llm = model.llm
        self.tokenizer = model.tokenizer
        self.alignment = model.alignment
        self.decoder = model.decoder
        self.format = ChatFormat(model.tokenizer, model.image_processor, model.config.prompts)
        self.decoder.set_sampler(model.config.generation.sampler)
        # A plain Lock, not an RLock: Gradio resumes a streaming generator on any worker thread, so the
        # thread that releases a job is not always the one that took it. Jobs never nest.
        self._lock = threading.Lock()
        self._counter_lock = threading.Lock()
        # Every model job runs on this one thread, whichever thread asked (model_thread.py says why).
        self.model_thread = model_thread or ModelThread.for_device(placement.device)
        self._prefix_caches: dict[tuple[int, ...], object] = {}  # shared prompt openings -> their KV cache
        self.offload: ComponentOffload | None = None  # enable_model_offload
        self.jobs_requested = 0  # running or waiting for the model
        self.max_jobs_requested = 0

    # ------------------------------------------------------------------------------------- io
    @classmethod
    def from_pretrained(cls, path_or_id: str | Path, device: str | torch.device | None = None,
                        dtype: str | torch.dtype | None = None, decoder: str | Path | None = None,
                        model_thread: ModelThread | None = None,
                        max_gpu_memory_gb: float | None = None,
                        quantization: str | None = None) -> "OmniBridgePipeline":
        """Our folder layout, or the official release (with `decoder`: HunyuanDiT-v1.2 diffusers folder/id).

        `model_thread`: another pipeline's, so that two models in one process share one thread team.
        `max_gpu_memory_gb`: load onto the CPU and offload (`enable_model_offload`), for a GPU smaller than
        the model; the model is never whole on the GPU, not even while it loads.
        `quantization`: "8bit" or "4bit" stores the LLM's linear layers with bitsandbytes (the other way to
        fit a smaller GPU: the full-size LLM's weights take about half or a third of their bf16 memory).
        """
        where = choose_placement(device, dtype, quantization)
        if max_gpu_memory_gb is not None and where.device.type == "cpu":
            raise OffloadError("model offload (max_gpu_memory_gb) needs a GPU; this model would run on the CPU")
        if max_gpu_memory_gb is not None and quantization is not None:
            raise OffloadError(QUANTIZED_CANNOT_MOVE)
        load_to = where if max_gpu_memory_gb is None else replace(where, device=torch.device("cpu"))
        folder = resolve_folder(path_or_id)
        model_thread = model_thread or ModelThread.for_device(where.device)

        def build() -> "OmniBridgePipeline":  # on the model thread: even setting up runs torch ops
            if detect_layout(folder) == "omnibridge":
                return cls(load_our_layout(folder, load_to), where, model_thread)
            return cls(load_official_layout(folder, decoder, load_to), where, model_thread)

        pipeline = model_thread.run(build)
        if max_gpu_memory_gb is not None:
            pipeline.enable_model_offload(max_gpu_memory_gb)
        return pipeline

    def save_pretrained(self, path: str | Path) -> None:
        save_our_layout(self.model, path)

    def warm_up(self, cache_dir: str | Path | None = None) -> None:
        """Start-up work done once: the negative-prompt encoding (cached on disk when given a folder)."""
        negative = self.config.generation.negative_prompt

        def encode() -> None:
            self._use("text_encoder", "text_encoder_2")
            if cache_dir is None:
                self.decoder.negative_encoding(negative)
            else:
                self.decoder.load_negative_cache(cache_dir, f"{self.model_id}|{self.model.source}", negative)

        self.run_job(encode)

    def enable_model_offload(self, max_gpu_memory_gb: float) -> None:
        """Keep at most about `max_gpu_memory_gb` GiB of weights on the GPU: each part (the LLM, the BiLM
        with the retrieval heads, and the decoder's transformer, VAE and two text encoders) moves there just
        before it runs, and parts that no longer fit go back to the CPU, least recently used first
        (offload.py). Leave room for activations: a 1024x1024 image took about 3.6 GB above the weights."""
        if self.placement.llm_quantization is not None:
            raise OffloadError(QUANTIZED_CANNOT_MOVE)

        def enable() -> None:
            components = {"llm": self.llm, "alignment": self.alignment, **self.decoder.modules()}
            self.offload = ComponentOffload(components, self.device, int(max_gpu_memory_gb * GIB))
            self.decoder.execution_device = self.device

        self.run_job(enable)

    def _use(self, *components: str) -> None:
        """Bring these parts to the device before they run (a no-op without model offload)."""
        if self.offload is not None:
            self.offload.use(*components)

    def compile(self, **compile_options) -> None:
        """Optional `torch.compile` of the DiT's blocks (a flag: the first image waits for the compiler, and
        not on ZeroGPU); block reuse keeps working (README, performance, `--compile`)."""
        self.decoder.compile_blocks(**compile_options)

    def use_onnxruntime(self, cache_dir: str | Path | None = None, int8: bool = False) -> str | None:
        """Run the DiT under ONNX Runtime for images of the model's default size (modeling/onnx_dit.py): the
        same pixels in x0.95-0.67 the time, by the CPU; with `int8` its matrix products in int8, about x0.69 the
        time of float32 and other pixels, of the same accuracy on the built-in model. The traced graphs are kept
        in `cache_dir`. Returns None once in use, else why not (PyTorch then stays).

        Not a model-thread job, unlike every other torch op here: tracing takes seconds on a first start, and the
        app would not answer meanwhile. It traces a copy of the DiT on the caller's thread (a second OpenMP team
        for those seconds), and requests switch to the graphs at their next step."""
        from .modeling.onnx_dit import OnnxUnavailable

        if self.offload is not None:
            return "model offload moves the DiT between devices"
        generation = self.config.generation
        try:
            self.decoder.use_onnxruntime(generation.height, generation.width, cache_dir, int8=int8)
        except OnnxUnavailable as error:
            return str(error)
        return None

    @property
    def model_id(self) -> str:
        return self.config.model_id

    def _as_served(self, name: str) -> str:
        """`name`, plus the LLM's quantization if any (`+4bit`)."""
        quantization = self.placement.llm_quantization
        return f"{name}+{quantization}" if quantization else name

    @property
    def variant_id(self) -> str:
        """The model as served, for feedback records: ratings of a 4-bit deployment are never counted as the
        full-precision model's."""
        return self._as_served(self.model_id)

    @property
    def embedding_model_id(self) -> str:
        """What the gallery records its vectors under: the name plus a digest of the embedding-side weights,
        since a retrained model keeps its name (modeling/fingerprint.py), plus the LLM's quantization: 4-bit
        weights moved the built-in model's retrieval R@1 by 0.12, too much to mix their vectors with others."""
        fingerprint = self.model.embedding_fingerprint
        return self._as_served(f"{self.model_id}@{fingerprint}" if fingerprint else self.model_id)

    @property
    def device(self) -> torch.device:
        return self.placement.device

    @contextlib.contextmanager
    def _job(self):
        """One model job at a time. Callers are counted before they wait, so `max_jobs_requested`
        shows whether the app really queues model work (it should never exceed 1)."""
        with self._counter_lock:
            self.jobs_requested += 1
            self.max_jobs_requested = max(self.max_jobs_requested, self.jobs_requested)
        try:
            with self._lock:
                yield
        finally:
            with self._counter_lock:
                self.jobs_requested -= 1

    def run_job(self, work: Callable[[], Result]) -> Result:
        """Run `work` as one model job: on the model thread, one job at a time, in inference mode (grad
        mode is per thread). Code that calls the components directly (a benchmark's bare baseline)
        uses it to run where the pipeline's own jobs run."""
        def job() -> Result:
            with torch.inference_mode():
                return work()

        with self._job():
            return self.model_thread.run(job)

    def _to_device(self, batch: dict) -> dict:
        moved = {}
        for key, value in batch.items():
            if key == "pixel_values":
                moved[key] = value.to(self.device, self.placement.llm_dtype)
            else:
                moved[key] = value.to(self.device)
        return moved

    # ------------------------------------------------------------------------------------ chat
    def prepare_conversation(self, messages: list[dict], images: list | None = None,
                             max_new_tokens: int = 256) -> list[Message]:
        """Normalise, then drop the oldest turns (and surplus images) to fit the token budget."""
        conversation = normalize_messages(messages, images)
        system = [m for m in conversation if m.role == "system"][:1]
        turns = [m for m in conversation if m.role != "system"]
        turns = self._limit_images(turns)
        budget = self.config.max_context_tokens - max_new_tokens - 16
        budget -= sum(self._message_tokens(m) for m in system)
        kept: list[Message] = []
        used = 0
        for message in reversed(turns):
            cost = self._message_tokens(message)
            if used + cost > budget:
                if not kept:  # the newest message alone is too long: keep its end
                    kept.append(self._truncate_message(message, budget))
                break
            kept.append(message)
            used += cost
        kept.reverse()
        while kept and kept[0].role != "user":  # a conversation restarts at a user turn
            kept.pop(0)
        if not kept:
            raise InvalidInputError("the message is too long for the model's context")
        return system + kept

    def _limit_images(self, turns: list[Message]) -> list[Message]:
        allowed = self.config.max_images_in_context
        total = sum(isinstance(p, Image.Image) for m in turns for p in m.parts)
        to_drop = max(0, total - allowed)
        limited = []
        for message in turns:
            parts = []
            for part in message.parts:
                if isinstance(part, Image.Image) and to_drop:
                    to_drop -= 1
                    continue
                parts.append(part)
            limited.append(Message(message.role, parts or ["(image omitted)"]))
        return limited

    def _message_tokens(self, message: Message) -> int:
        count = 6
        for part in message.parts:
            if isinstance(part, Image.Image):
                count += self.format.image_token_count(part) + 2
            else:
                count += len(self.format.text_ids(part if isinstance(part, str) else part.text))
        return count

    def _truncate_message(self, message: Message, budget: int) -> Message:
        images = [p for p in message.parts if isinstance(p, Image.Image)]
        text = " ".join(p for p in message.parts if isinstance(p, str))
        left = budget - sum(self.format.image_token_count(i) + 2 for i in images) - 6
        if left < 8:
            raise InvalidInputError("the message is too long for the model's context")
        ids = self.format.text_ids(text)[-left:]
        return Message(message.role, images + [self.tokenizer.decode(ids)])

    def _stop_ids(self) -> list[int]:
        """End of turn, and the closing tags of captions (generation stops right after a caption)."""
        prompts = self.config.prompts
        closers = [self.format.token_id(tag) for tag in (prompts.image_close, prompts.edit_close) if tag]
        return [self.format.im_end] + [i for i in closers if i is not None]

    def _stream(self, conversation: list[Message], max_new_tokens: int, temperature: float, top_p: float,
                seed: int | None, mode: str = "auto", has_image: bool = False) -> Iterator[str]:
        """Stream the assistant's reply (with the control tags) as it is generated; closing stops it."""
        max_new_tokens = int(np.clip(max_new_tokens, 1, 4096))
        temperature = float(np.clip(temperature, 0.0, 2.0))
        top_p = float(np.clip(top_p, 0.05, 1.0))
        encoded = self.format.encode(conversation, add_generation_prompt=True)
        tokens = _TokenQueue(interval=STREAM_INTERVAL_S)
        stop = threading.Event()
        sampling = temperature > 0
        errors: list[BaseException] = []
        routing = self._routing_constraints(mode, has_image, len(encoded.input_ids))

        def run():
            try:
                batch = self._to_device(self.format.collate([encoded], "left")["inputs"])
                if seed is not None:
                    torch.manual_seed(int(seed))
                with torch.inference_mode():
                    self._use("llm")
                    self.llm.generate(**batch, max_new_tokens=max_new_tokens, do_sample=sampling,
                                      temperature=temperature if sampling else None,
                                      top_p=top_p if sampling else None, top_k=None, eos_token_id=self._stop_ids(),
                                      pad_token_id=self.format.pad_id, streamer=tokens,
                                      stopping_criteria=StoppingCriteriaList([_StopOnEvent(stop)]), **routing)
            except BaseException as error:  # surfaced to the caller below
                errors.append(error)
                tokens.end()

        with self._job():
            finished = self.model_thread.submit(run)
            ids: list[int] = []
            try:
                for new_ids in tokens.batches(timeout=300):
                    ids += new_ids
                    text = self.tokenizer.decode(ids, skip_special_tokens=False)
                    if not text.endswith("\ufffd"):  # wait for the rest of a multi-byte character
                        yield self.clean_answer(text)
            finally:
                stop.set()
                finished.result()
        if errors:
            raise errors[0]

    def _routing_constraints(self, mode: str, has_image: bool, prompt_length: int) -> dict:
        """`answer` bans the drawing/editing tags; `draw` makes the first token one of them."""
        prompts = self.config.prompts
        tags = [t for t in (prompts.image_open, prompts.edit_open if has_image else "") if t]
        tag_ids = [i for i in (self.format.token_id(t) for t in tags) if i is not None]
        if mode == "answer":
            banned = [i for i in (self.format.token_id(t) for t in (prompts.image_open, prompts.edit_open) if t)
                      if i is not None]
            return {"suppress_tokens": banned} if banned else {}
        if mode == "draw" and not tag_ids:  # the vocabulary has no tag tokens: no constraint possible
            return {}
        if mode == "draw":
            vocabulary = list(range(len(self.tokenizer)))
            return {"prefix_allowed_tokens_fn": lambda _, ids: tag_ids if ids.shape[-1] == prompt_length else vocabulary}
        return {}

    def stream_chat(self, messages: list[dict], images: list | None = None, max_new_tokens: int = 256,
                    temperature: float = 0.0, top_p: float = 1.0, seed: int | None = None) -> Iterator[str]:
        """Yield the answer so far as it is generated (closing the iterator stops generation)."""
        conversation = self.prepare_conversation(messages, images, max_new_tokens)
        yield from self._stream(conversation, max_new_tokens, temperature, top_p, seed)

    def chat(self, messages: list[dict], images: list | None = None, max_new_tokens: int = 256,
             temperature: float = 0.0, top_p: float = 1.0, seed: int | None = None) -> str:
        answer = ""
        for answer in self.stream_chat(messages, images, max_new_tokens, temperature, top_p, seed):
            pass
        return answer

    def clean_answer(self, text: str) -> str:
        for token in ("<|im_end|>", "<|endoftext|>", "<|im_start|>"):
            text = text.replace(token, "")
        return text.strip()

    def answer_batch(self, images: list, questions: list[str], max_new_tokens: int = ANSWER_TOKENS) -> list[str]:
        """Greedy single-turn answers for (image, question) pairs in one batch (evaluation): the answers
        alone, without any working the model wrote before them."""
        loaded = [load_image(image) for image in images]
        prompts = [self.format.encode([Message("user", [image, clean_text(q, what="question")])])
                   for image, q in zip(loaded, questions, strict=True)]
        written = self.run_job(lambda: self._generate_after(prompts, None, max_new_tokens))
        return [self.split_working(text)[1] for text in written]

    def split_working(self, text: str) -> tuple[str, str]:
        """(working, answer): a model that shows its work writes `PromptConfig.answer_after` between the two;
        text without it is all answer."""
        separator = self.config.prompts.answer_after
        if not separator or separator not in text:
            return "", text.strip()
        working, _, answer = text.rpartition(separator)
        return working.strip(), answer.strip()

    def parse_answer(self, text: str) -> ChatAnswer:
        """Read the model's own routing: `<img>caption</img>` draws, `<edit>caption</edit>` edits."""
        prompts = self.format.prompts
        for kind, opener, closer in (("draw", prompts.image_open, prompts.image_close),
                                     ("edit", prompts.edit_open, prompts.edit_close)):
            if opener and text.lstrip().startswith(opener):
                caption = self.format.sanitize(text.lstrip()[len(opener):].split(closer)[0]).strip()
                return ChatAnswer(kind, caption, caption)
        working, answer = self.split_working(self.format.sanitize(text))  # no control tokens reach the reader
        return ChatAnswer("text", answer, working=working)

    # ------------------------------------------------------------------------------ generation
    def _generate_after(self, prompts: list[EncodedPrompt], forced_prefix: str | None, max_new_tokens: int,
                        beams: int = 1) -> list[str]:
        """Greedy continuation of prompts, optionally after a forced first token (e.g. `<img>`).

        `beams` > 1 runs beam search and returns each prompt's `beams` best continuations, best first."""
        prefix = self.format.tag_ids(forced_prefix) if forced_prefix else []
        prompts = [EncodedPrompt(p.input_ids + prefix, p.images, p.spans) for p in prompts]
        batch = self._to_device(self.format.collate(prompts, "left")["inputs"])
        self._use("llm")
        with torch.inference_mode():
            output = self.llm.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False, temperature=None,
                                       top_p=None, top_k=None, eos_token_id=self._stop_ids(),
                                       pad_token_id=self.format.pad_id, num_beams=beams,
                                       num_return_sequences=beams)
        new_tokens = output[:, batch["input_ids"].shape[1]:]
        return [self.tokenizer.decode(row, skip_special_tokens=True).strip() for row in new_tokens]

    def rewrite_prompts(self, prompts: list[str]) -> list[str]:
        """The OmniBridge prompt rewrite: free-form prompts -> captions in the decoder's language."""
        template = self.config.prompts.rewrite
        encoded = [self.format.encode([Message("user", [template.format(prompt=p)])]) for p in prompts]
        with feature_layers_only(self.llm, self.config.generation.rewrite_layers):
            captions = self._generate_after(encoded, self.config.prompts.image_open,
                                            self.config.generation.max_new_tokens)
        return [caption or prompt for caption, prompt in zip(captions, prompts)]

    def _caption_states(self, prompts: list[EncodedPrompt], captions: list[str], opener: str):
        """One teacher-forced pass over `<img>caption</img>` after each prompt: the hidden states of the
        caption tokens, and those of the first image in the prompt (editing conditions on them)."""
        forced = [self.format.with_caption(p, c, opener, self._closer(opener)) for p, c in zip(prompts, captions)]
        collated = self.format.collate(forced, "right")
        self._use("llm")
        with torch.inference_mode():
            states = feature_states(self.llm, self.config.feature_layers, self._to_device(collated["inputs"]))
        spans = collated["spans"]
        caption_states = gather_spans(states, [s["caption"] for s in spans])
        image_states = gather_spans(states, [s["image0"] for s in spans]) if all("image0" in s for s in spans) else None
        return caption_states, image_states

    def _closer(self, opener: str) -> str:
        prompts = self.config.prompts
        return prompts.edit_close if opener == prompts.edit_open else prompts.image_close

    def _resolve_settings(self, num_inference_steps, guidance_scale, height, width, num_images, seed):
        defaults = self.config.generation
        steps = int(np.clip(num_inference_steps or defaults.num_inference_steps, 1, 200))
        guidance = float(np.clip(defaults.guidance_scale if guidance_scale is None else guidance_scale, 1.0, 20.0))
        height = int(height or defaults.height)
        width = int(width or defaults.width)
        if height not in defaults.allowed_sizes or width not in defaults.allowed_sizes:
            raise InvalidInputError(f"size {width}x{height} is not supported; choose from {defaults.allowed_sizes}")
        count = int(np.clip(num_images, 1, 4))
        if seed is None or int(seed) < 0:
            seed = random.randrange(MAX_SEED)
        seed = int(seed) % (MAX_SEED + 1)
        return steps, guidance, height, width, [(seed + i) % (MAX_SEED + 1) for i in range(count)]

    def _condition(self, captions: list[str], states=None, t5_inputs=False) -> CaptionEncoding:
        """Decoder conditioning: BERT slot from the caption, T5 slot from the BiLM (or the decoder's T5).

        With the BiLM, the T5 encoder does not run: of the T5 side only its tokenizer's mask is used, as in the
        official code."""
        with torch.inference_mode():
            if states is None:  # the decoder's own text conditioning (the reference path)
                self._use("text_encoder", "text_encoder_2")
                return self.decoder.encode_captions(captions)
            self._use("text_encoder", "alignment")
            embeds, mask = self.decoder.encode_bert_slot(captions)
            ids, mask_2 = self.decoder.tokenize_t5(captions)
            llm_states, llm_mask = states
            inputs = self.decoder.t5_input_embeddings(ids).to(self.placement.llm_dtype) if t5_inputs else None
            condition = self.alignment.condition(llm_states, llm_mask, inputs_embeds=inputs)
        return CaptionEncoding(embeds, mask, condition.to(self.decoder.dtype), mask_2)

    def _resolve_candidates(self, candidates: int | None, default: int) -> int:
        return int(np.clip(int(default if candidates is None else candidates), 1, MAX_CANDIDATES))

    def set_sampler(self, kind: str) -> None:
        """Make `kind` (one of SAMPLERS) the default sampler. Building a scheduler runs torch ops, so it runs on
        the model thread: on any other thread they would start a second OpenMP team, and two teams on two
        cores made every later call 2-3x slower (docs/performance-notes.md, "One model thread")."""
        kind = self._resolve_sampler(kind)
        self.run_job(lambda: self.decoder.set_sampler(kind))

    def _resolve_sampler(self, sampler: str | None) -> str:
        if sampler in (None, ""):
            return self.decoder.sampler_kind
        if sampler not in SAMPLERS:
            raise InvalidInputError(f"sampler must be one of {', '.join(SAMPLERS)}")
        return sampler

    def _decode(self, cond, seeds, steps, guidance, height, width, callback, negative_prompt, init_image=None,
                strength=1.0, sampler=None, candidates=1, captions=None, cache_interval=1):
        """Denoise and decode one image per seed: (images, seeds, scores).

        With `candidates` > 1 every image is drawn that many times in one batch and the candidate
        whose embedding is closest to its caption (`captions`: one, or one per seed) is kept
        (self_check.py); `scores` are the kept ones' cosines, else None.
        `cache_interval` as in decoder.denoise (generation and edits each pass their own).
        """
        negative = self._negative_encoding(negative_prompt or self.config.generation.negative_prompt)
        init_latents = None
        if init_image is not None and strength < 1.0:
            init_latents = self._encode_image_latents(init_image, height, width)
        draws = candidate_seeds(seeds, candidates, MAX_SEED)
        per_draw = cond.repeat(len(draws)) if len(cond) == 1 else cond.repeat(candidates)
        self._use("transformer")
        latents = self.decoder.denoise(per_draw, draws, height, width, steps, guidance, negative, callback,
                                       init_latents=init_latents, strength=strength, sampler=sampler,
                                       guidance_cutoff=self.config.generation.guidance_cutoff,
                                       cache_interval=cache_interval)
        self._use("vae")
        images = self.decoder.decode_latents(latents)
        if candidates == 1:
            return images, seeds, None
        scores = self._caption_similarity(images, captions * len(seeds) if len(captions) == 1 else captions)
        kept = best_candidates(scores, candidates)
        return [images[i] for i in kept], [draws[i] for i in kept], [round(float(scores[i]), 4) for i in kept]

    def _negative_encoding(self, negative_prompt: str) -> CaptionEncoding:
        if not self.decoder.has_negative_encoding(negative_prompt):
            self._use("text_encoder", "text_encoder_2")
        return self.decoder.negative_encoding(negative_prompt)

    def _caption_similarity(self, images: list[Image.Image], captions: list[str]) -> np.ndarray:
        """Cosine of each image's embedding with its caption's (inside a job); the images come in equal
        groups, one per caption, as the self-check draws them."""
        image_vectors = self._embed_vectors([load_image(image) for image in images], "image0",
                                            self.alignment.embed_image_states)
        text_vectors = self._embed_vectors([SpanText("text", c) for c in captions], "text",
                                           self.alignment.embed_text_states)
        return (image_vectors * np.repeat(text_vectors, len(images) // len(captions), axis=0)).sum(axis=1)

    def _encode_image_latents(self, image: Image.Image, height: int, width: int) -> torch.Tensor:
        pixels = np.asarray(image.resize((width, height), Image.BICUBIC), dtype=np.float32) / 127.5 - 1
        tensor = torch.from_numpy(pixels).permute(2, 0, 1)[None].to(self.device, self.decoder.dtype)
        self._use("vae")
        with torch.inference_mode():
            return self.decoder.encode_images(tensor)

    def _conditions_for_prompts(self, prompts: list[str], captions: list[str], use_learned_queries: bool):
        """Decoder conditioning for text-to-image: the caption states after each user prompt -> BiLM."""
        states = None
        if use_learned_queries:
            template = self.config.prompts.rewrite
            encoded = [self.format.encode([Message("user", [template.format(prompt=p)])]) for p in prompts]
            states, _ = self._caption_states(encoded, captions, self.config.prompts.image_open)
        return self._condition(captions, states)

    def _edit_prompt(self, source: Image.Image, instruction: str) -> EncodedPrompt:
        """The user turn that an edit's caption is written after and its conditioning is read from."""
        return self.format.encode([Message("user", [source, self.config.prompts.edit.format(instruction=instruction)])])

    def _edit_condition(self, encoded: EncodedPrompt, caption: str) -> CaptionEncoding:
        """Decoder conditioning for editing: the caption's T5 embeddings attend to the image-token states."""
        prompts = self.config.prompts
        _, image_states = self._caption_states([encoded], [caption], prompts.edit_open or prompts.image_open)
        return self._condition([caption], image_states, t5_inputs=True)

    def _write_edit_caption(self, source: Image.Image, encoded: EncodedPrompt, instruction: str) -> tuple[str, dict]:
        """The edit's target caption, and how it was chosen when the model writes several (caption_choice.py)."""
        prompts, beams = self.config.prompts, self.config.generation.edit_caption_beams
        max_new_tokens = self.config.generation.max_new_tokens
        captions = [c.split("\n")[0].strip()
                    for c in self._generate_after([encoded], prompts.edit_open or None, max_new_tokens, beams)]
        choice = {}
        if beams > 1:
            asked = self.format.encode([Message("user", [source, prompts.describe])])
            description = self.split_working(self._generate_after([asked], None, ANSWER_TOKENS)[0])[1]
            choice = {"source_description": description, "caption_candidates": captions}
            captions = [captions[least_change(description, captions)]]
        caption = captions[0]
        # The official scripts fall back to the raw instruction when the LLM refuses.
        if not caption or caption.startswith("I'm unable to see the image"):
            caption = instruction
        return caption, choice

    def generate(self, prompt: str, rewrite: bool = True, seed: int | None = None,
                 num_inference_steps: int | None = None, guidance_scale: float | None = None,
                 height: int | None = None, width: int | None = None, num_images: int = 1,
                 negative_prompt: str | None = None, callback: StepCallback | None = None,
                 use_learned_queries: bool = True, caption: str | None = None,
                 sampler: str | None = None, candidates: int | None = None) -> GenerationResult:
        """Text to image through OmniBridge (or, with use_learned_queries=False, the decoder alone).

        Image i uses seed `seed + i`, so any one image can be reproduced on its own. `caption`
        skips the rewrite with a caption already written (a chat turn's drawing). `sampler` picks
        one of SAMPLERS for this call (default: the model's). `candidates` > 1 draws that many per
        image and keeps the one the model rates closest to the caption (self_check.py; default: the
        model's `candidates`).
        """
        prompt = clean_text(prompt)
        steps, guidance, height, width, seeds = self._resolve_settings(
            num_inference_steps, guidance_scale, height, width, num_images, seed)
        sampler = self._resolve_sampler(sampler)
        candidates = self._resolve_candidates(candidates, self.config.generation.candidates)
        cache_interval = self.config.generation.cache_interval

        def job():
            start = time.perf_counter()
            written = caption
            if written is None:
                written = self.rewrite_prompts([prompt])[0] if rewrite else prompt
            cond = self._conditions_for_prompts([prompt], [written], use_learned_queries)
            timings = {"rewrite_condition_s": time.perf_counter() - start}
            mark = time.perf_counter()
            drawn = self._decode(cond, seeds, steps, guidance, height, width, callback, negative_prompt,
                                 sampler=sampler, candidates=candidates, captions=[written],
                                 cache_interval=cache_interval)
            timings["denoise_decode_s"] = time.perf_counter() - mark
            timings["total_s"] = time.perf_counter() - start
            return written, drawn, timings

        caption, (images, kept_seeds, scores), timings = self.run_job(job)
        parameters = {"mode": "generate", "prompt": prompt, "caption": caption, "rewrite": rewrite,
                      "sampler": sampler, "num_inference_steps": steps, "guidance_scale": guidance,
                      "guidance_cutoff": self.config.generation.guidance_cutoff,
                      "cache_interval": cache_interval,
                      "height": height, "width": width, "candidates": candidates,
                      "seeds": kept_seeds, "conditioning": "learned_queries" if use_learned_queries else "decoder_text",
                      "model": self.model_id}
        return GenerationResult(images, prompt, caption, kept_seeds, timings, parameters, scores)

    def generate_batch(self, prompts: list[str], seeds: list[int], rewrite: bool = True,
                       use_learned_queries: bool = True, num_inference_steps: int | None = None,
                       guidance_scale: float | None = None, sampler: str | None = None,
                       candidates: int | None = None) -> tuple[list[Image.Image], list[str]]:
        """One image per prompt, all in one batch (evaluation and benchmarks): (images, captions)."""
        prompts = [clean_text(p) for p in prompts]
        steps, guidance, height, width, _ = self._resolve_settings(
            num_inference_steps, guidance_scale, None, None, 1, 0)
        sampler = self._resolve_sampler(sampler)
        candidates = self._resolve_candidates(candidates, self.config.generation.candidates)

        def job():
            captions = self.rewrite_prompts(prompts) if rewrite else list(prompts)
            cond = self._conditions_for_prompts(prompts, captions, use_learned_queries)
            images, _, _ = self._decode(cond, [int(s) for s in seeds], steps, guidance, height, width, None, None,
                                        sampler=sampler, candidates=candidates, captions=captions,
                                        cache_interval=self.config.generation.cache_interval)
            return images, captions

        return self.run_job(job)

    def edit(self, image, instruction: str, seed: int | None = None, num_inference_steps: int | None = None,
             guidance_scale: float | None = None, num_images: int = 1, strength: float = 1.0,
             negative_prompt: str | None = None, callback: StepCallback | None = None,
             height: int | None = None, width: int | None = None, caption: str | None = None,
             sampler: str | None = None, candidates: int | None = None) -> GenerationResult:
        """Edit by regeneration, as OmniBridge does: image + instruction -> target caption -> decoder.

        `strength` < 1 starts denoising from the source image's noised latents (SDEdit), which keeps
        more of its layout; 1.0 is the paper's setting. `caption` skips writing the target caption.
        `candidates` as in `generate` (default: the model's `edit_candidates`): candidates are rated
        against the target caption.
        """
        source = load_image(image)
        instruction = clean_text(instruction, what="instruction")
        strength = float(np.clip(strength, 0.05, 1.0))
        steps, guidance, height, width, seeds = self._resolve_settings(
            num_inference_steps, guidance_scale, height, width, num_images, seed)
        sampler = self._resolve_sampler(sampler)
        candidates = self._resolve_candidates(candidates, self.config.generation.edit_candidates)
        cache_interval = self.config.generation.edit_cache_interval

        def job():
            start = time.perf_counter()
            encoded = self._edit_prompt(source, instruction)
            written, choice = (caption, {}) if caption else self._write_edit_caption(source, encoded, instruction)
            cond = self._edit_condition(encoded, written)
            timings = {"rewrite_condition_s": time.perf_counter() - start}
            mark = time.perf_counter()
            drawn = self._decode(cond, seeds, steps, guidance, height, width, callback, negative_prompt,
                                 init_image=source, strength=strength, sampler=sampler, candidates=candidates,
                                 captions=[written], cache_interval=cache_interval)
            timings["denoise_decode_s"] = time.perf_counter() - mark
            timings["total_s"] = time.perf_counter() - start
            return written, choice, drawn, timings

        caption, choice, (images, kept_seeds, scores), timings = self.run_job(job)
        parameters = {"mode": "edit", "instruction": instruction, "caption": caption, **choice,
                      "sampler": sampler, "num_inference_steps": steps,
                      "guidance_scale": guidance, "guidance_cutoff": self.config.generation.guidance_cutoff,
                      "cache_interval": cache_interval,
                      "strength": strength, "height": height, "width": width,
                      "candidates": candidates, "seeds": kept_seeds, "model": self.model_id}
        return GenerationResult(images, instruction, caption, kept_seeds, timings, parameters, scores)

    # -------------------------------------------------------------------------- chat with images
    def stream_chat_turn(self, messages: list[dict], images: list | None = None, mode: str = "auto",
                         max_new_tokens: int = 256, temperature: float = 0.0, top_p: float = 1.0,
                         seed: int | None = None, num_inference_steps: int | None = None,
                         guidance_scale: float | None = None, callback: StepCallback | None = None):
        """A chat turn that may answer, draw or edit: yields ChatTurnEvent as it goes.

        The model's own first tokens decide (`<img>` draws, `<edit>` edits the last image in the
        conversation, anything else is an answer); `mode` "answer" or "draw" forces one side.
        """
        if mode not in ("auto", "answer", "draw"):
            raise InvalidInputError("mode must be auto, answer or draw")
        conversation = self.prepare_conversation(messages, images, max_new_tokens)
        last_image = next((p for m in reversed(conversation) for p in reversed(m.parts)
                           if isinstance(p, Image.Image)), None)
        text = ""
        for text in self._stream(conversation, max_new_tokens, temperature, top_p, seed, mode, last_image is not None):
            yield ChatTurnEvent(self.parse_answer(text), done=False)
        answer = self.parse_answer(text)
        if answer.kind == "edit" and last_image is None:
            answer = ChatAnswer("draw", answer.text, answer.caption)
        if answer.kind == "text":
            yield ChatTurnEvent(answer, done=True)
            return
        request = next((p for p in reversed(conversation[-1].parts) if isinstance(p, str)), "")
        if not answer.caption:  # an empty caption: draw what was asked, as the official edit script does
            answer = ChatAnswer(answer.kind, request or "a picture", request or "a picture")
        request = request or answer.caption
        settings = dict(seed=seed, num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                        callback=callback, caption=answer.caption)
        if answer.kind == "edit":
            if self.config.generation.edit_caption_beams > 1:  # the edit writes its own and chooses among beams
                settings["caption"] = None
            result = self.edit(last_image, request, **settings)
            answer = ChatAnswer("edit", result.caption, result.caption)
        else:
            result = self.generate(request, **settings)
        yield ChatTurnEvent(answer, done=True, result=result)

    # ------------------------------------------------------------------------------- retrieval
    @property
    def retrieval_logit_scale(self) -> float:
        """The temperature the retrieval heads were trained with: cosines times this are their logits."""
        # a Python float read off the (trainable) parameter: no torch op off the model thread, no grad warning
        return math.exp(float(self.alignment.logit_scale.detach()))

    def description_log_likelihoods(self, images: list, captions: list[str], batch_size: int = 32) -> np.ndarray:
        """For each (image, caption) pair, log p(caption, end of turn | image, the describe prompt): how
        readily the model would describe the image with that caption (rerank.py)."""
        loaded = [load_image(image) for image in images]
        texts = [clean_text(caption, what="caption", allow_empty=True) for caption in captions]
        if len(loaded) != len(texts):
            raise InvalidInputError("give one caption per image")
        return self.run_job(lambda: self._description_log_likelihoods(loaded, texts, batch_size))

    def _description_log_likelihoods(self, images: list[Image.Image], captions: list[str],
                                     batch_size: int) -> np.ndarray:
        scores = [np.zeros(0)]
        self._use("llm")
        for start in range(0, len(images), batch_size):
            chunk = zip(images[start:start + batch_size], captions[start:start + batch_size])
            prompts = [self.format.encode([Message("user", [image, self.config.prompts.describe])], answer=caption)
                       for image, caption in chunk]
            collated = self.format.collate(prompts, "right")
            inputs = self._to_device(collated["inputs"])
            answers = [spans["answer"] for spans in collated["spans"]]
            with torch.inference_mode():
                states = self.llm.model(**inputs).last_hidden_state
                # position t predicts token t + 1: only the answer's positions go through the LM head (a full
                # model's vocabulary over every image token would take gigabytes), predicting the answer's tokens
                # and the end of turn after them
                predicting, mask = gather_spans(states, [(first - 1, last) for first, last in answers])
                targets, _ = gather_spans(inputs["input_ids"].unsqueeze(-1),
                                          [(first, last + 1) for first, last in answers])
                log_probs = torch.log_softmax(self.llm.lm_head(predicting).float(), dim=-1)
                token_scores = log_probs.gather(-1, targets).squeeze(-1) * mask
            scores.append(token_scores.sum(dim=1).cpu().numpy())
        return np.concatenate(scores)

    @property
    def embedding_dim(self) -> int:
        return self.config.retrieval.embed_dim

    def embed_texts(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        """[N, D] float32 unit vectors; a text's vector is the same alone or in any batch."""
        parts = [SpanText("text", clean_text(t, what="text")) for t in texts]
        return self._embed(parts, "text", self.alignment.embed_text_states, batch_size)

    def embed_images(self, images: list, batch_size: int = 64) -> np.ndarray:
        """[N, D] float32 unit vectors from the LLM states of each image's tokens."""
        return self._embed([load_image(image) for image in images], "image0", self.alignment.embed_image_states,
                           batch_size)

    def _embed(self, parts: list, span: str, embed_states, batch_size: int) -> np.ndarray:
        return self.run_job(lambda: self._embed_vectors(parts, span, embed_states, batch_size))

    def _embed_vectors(self, parts: list, span: str, embed_states, batch_size: int = 64) -> np.ndarray:
        """One user turn per item; the LLM states over the item's own tokens -> retrieval heads (inside a job)."""
        vectors = [np.zeros((0, self.embedding_dim), np.float32)]
        self._use("llm", "alignment")
        for start in range(0, len(parts), batch_size):
            prompts = [self.format.encode([Message("user", [part])]) for part in parts[start:start + batch_size]]
            collated = self.format.collate(prompts, "right")
            states, offset = self._states_after_shared_prefix(collated)
            spans = [(a - offset, b - offset) for a, b in (s[span] for s in collated["spans"])]
            span_states, mask = gather_spans(states, spans)
            vectors.append(embed_states(span_states, mask).cpu().numpy())
        return np.concatenate(vectors).astype(np.float32)

    def _states_after_shared_prefix(self, collated: dict) -> tuple[torch.Tensor, int]:
        """The LLM's feature states (modeling/features.py) for a batch, from the first position its prompts
        do not share."""
        with feature_layers_only(self.llm, self.config.feature_layers):
            return self._last_states_after_shared_prefix(collated)

    def _last_states_after_shared_prefix(self, collated: dict) -> tuple[torch.Tensor, int]:
        """The LLM's last hidden states for a batch, from the first position its prompts do not share.

        Every embedding prompt opens with the same tokens (system turn, user header): 15 of an image's
        37 and 14 of a caption's ~30. Attention is causal, so their keys and values never depend on
        what follows: they are computed once per pipeline and reused, and each item pays only for
        its own tokens. The result is the full forward pass's, from `offset` on.
        """
        inputs = self._to_device(collated["inputs"])
        ids, attention = inputs["input_ids"], inputs["attention_mask"]
        offset = min(start for spans in collated["spans"] for start, _ in spans.values())
        shared = ids[0, :offset]
        if offset == 0 or not bool((ids[:, :offset] == shared).all() and attention[:, :offset].all()):
            return self.llm.model(**inputs).last_hidden_state, 0
        positions, _ = self.llm.model.get_rope_index(ids, inputs["mm_token_type_ids"],
                                                     image_grid_thw=inputs.get("image_grid_thw"),
                                                     attention_mask=attention)
        key = tuple(shared.tolist())
        if key not in self._prefix_caches:
            prefix = self.llm.model(input_ids=shared[None], position_ids=positions[:, :1, :offset], use_cache=True)
            self._prefix_caches[key] = prefix.cache
        cache = copy.deepcopy(self._prefix_caches[key])  # the pass below appends to the cache it is given
        cache.batch_repeat_interleave(ids.shape[0])
        images = {k: v for k, v in inputs.items() if k in ("pixel_values", "image_grid_thw")}
        states = self.llm.model(input_ids=ids[:, offset:], mm_token_type_ids=inputs["mm_token_type_ids"][:, offset:],
                                attention_mask=attention, position_ids=positions[:, :, offset:], cache=cache,
                                use_cache=True, **images).last_hidden_state
        return states, offset

    # ------------------------------------------------------------------------------------ info
    def info(self) -> dict:
        import psutil

        def count(module) -> int:
            return sum(p.numel() for p in module.parameters())

        decoder_parts = {name: count(module) for name, module in self.decoder.modules().items()}
        # transformers' count: bitsandbytes stores two 4-bit weights in one element, which numel() sees as one
        llm_parameters = self.llm.num_parameters()
        memory = {"process_rss_mb": round(psutil.Process().memory_info().rss / 2**20, 1),
                  "llm_weights_mb": round(self.llm.get_memory_footprint() / 2**20, 1)}
        if self.device.type == "cuda":
            memory["cuda_allocated_mb"] = round(torch.cuda.memory_allocated(self.device) / 2**20, 1)
            memory["cuda_peak_mb"] = round(torch.cuda.max_memory_allocated(self.device) / 2**20, 1)
        if self.offload is not None:
            stats = self.offload.stats()
            memory["offload"] = {"max_gpu_memory_gb": round(stats.max_bytes / GIB, 2), "on_gpu": stats.resident,
                                 "moves_to_gpu": stats.fetches, "moved_gb": round(stats.moved_bytes / GIB, 2)}
        return {
            "model_id": self.model_id,
            "source": self.model.source,
            "layout": self.model.layout,
            "device": str(self.device),
            "dtype": {"llm": str(self.placement.llm_dtype).replace("torch.", ""),
                      "decoder": str(self.placement.decoder_dtype).replace("torch.", "")},
            "quantization": {"llm": self.placement.llm_quantization},
            "dit_runtime": self.decoder.dit_runtime,  # "onnxruntime-int8" once the app's background build is done
            "parameters": {"llm": llm_parameters, "alignment": count(self.alignment), **decoder_parts,
                           "total": llm_parameters + count(self.alignment) + sum(decoder_parts.values())},
            "memory": memory,
            "embedding_dim": self.embedding_dim,
            "jobs": {"running_or_waiting": self.jobs_requested, "most_at_once": self.max_jobs_requested},
            "image_size": self.config.generation.height,
        }
