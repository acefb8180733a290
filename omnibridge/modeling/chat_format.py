"""Qwen2-VL's chat format, encoded piece by piece so that every span is known from token ids.

The official code finds captions and image tokens by fixed offsets (a 14-token prefix, a `[1:-2]`
slice); here the prompt is assembled from tokenised pieces, so the positions of the image tokens
and of the caption are recorded while it is built, for any template, tokenizer or batch.
M-RoPE needs `mm_token_type_ids` (1 at image tokens) next to the ids; `collate` builds them.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import torch
from PIL import Image

from .config import PromptConfig
from .image_patches import patches_at_native_size


@dataclass
class Message:
    role: str  # system, user or assistant
    parts: list  # str, PIL.Image.Image or SpanText, in order


@dataclass(frozen=True)
class SpanText:
    """Text whose token span is recorded under `name` (e.g. the caption to embed for retrieval)."""

    name: str
    text: str


@dataclass
class EncodedPrompt:
    input_ids: list[int]
    images: list[Image.Image] = field(default_factory=list)
    spans: dict[str, tuple[int, int]] = field(default_factory=dict)  # name -> [start, end)
    labels_from: int | None = None  # first position that training's next-token loss covers


class ChatFormat:
    def __init__(self, tokenizer, image_processor, prompts: PromptConfig):
        self.tokenizer, self.image_processor, self.prompts = tokenizer, image_processor, prompts
        ids = tokenizer.convert_tokens_to_ids
        self.im_start, self.im_end = ids("<|im_start|>"), ids("<|im_end|>")
        self.vision_start, self.vision_end = ids("<|vision_start|>"), ids("<|vision_end|>")
        self.image_pad = ids("<|image_pad|>")
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else ids("<|endoftext|>")
        self.merge = getattr(image_processor, "merge_size", 2)
        # Users must not be able to type control tokens into the conversation.
        self._reserved = sorted(
            {t for t in tokenizer.all_special_tokens} | set(tokenizer.get_added_vocab()), key=len, reverse=True)

    # ------------------------------------------------------------------------------ text pieces
    def text_ids(self, text: str) -> list[int]:
        if len(text) <= 256:  # role headers, templates and short prompts repeat: tokenise them once
            return list(self._short_text_ids(text))
        return self.tokenizer(text, add_special_tokens=False).input_ids

    @functools.lru_cache(maxsize=4096)
    def _short_text_ids(self, text: str) -> tuple[int, ...]:
        return tuple(self.tokenizer(text, add_special_tokens=False).input_ids)

    def sanitize(self, text: str) -> str:
        for token in self._reserved:
            text = text.replace(token, "")
        return text

    def token_id(self, token: str) -> int | None:
        """The id of a single-token tag, or None when the vocabulary has no such token."""
        token_id = self.tokenizer.convert_tokens_to_ids(token)
        return None if token_id is None or token_id == self.tokenizer.unk_token_id else token_id

    def tag_ids(self, tag: str) -> list[int]:
        """A control tag as ids: its own token when the vocabulary has one, else its text."""
        if not tag:
            return []
        token_id = self.token_id(tag)
        return [token_id] if token_id is not None else self.text_ids(tag)

    # ------------------------------------------------------------------------------------ images
    def image_token_count(self, image: Image.Image) -> int:
        # The processor's own resize arithmetic: counting tokens must not cost a full preprocessing pass
        # (a chat turn counts every image twice before it preprocesses them once).
        count_patches = getattr(self.image_processor, "get_number_of_image_patches", None)
        if count_patches is not None:
            return count_patches(image.height, image.width) // (self.merge**2)
        grid = self.image_processor(images=[image], return_tensors="pt")["image_grid_thw"][0]
        return int(grid.prod()) // (self.merge**2)

    def image_inputs(self, images: list[Image.Image]) -> dict:
        if not images:
            return {}
        native = patches_at_native_size(self.image_processor, images)
        if native is not None:
            return native
        out = self.image_processor(images=images, return_tensors="pt")
        return {"pixel_values": out["pixel_values"], "image_grid_thw": out["image_grid_thw"]}

    # ------------------------------------------------------------------------------ conversation
    def encode(
        self,
        messages: list[Message],
        add_generation_prompt: bool = True,
        answer: str | None = None,
        answer_span: str = "answer",
    ) -> EncodedPrompt:
        """Render a conversation; `answer` is appended as the assistant's reply (teacher forcing)."""
        if not messages or messages[0].role != "system":
            messages = [Message("system", [self.prompts.system])] + list(messages)
        ids: list[int] = []
        images: list[Image.Image] = []
        spans: dict[str, tuple[int, int]] = {}
        for message in messages:
            ids += [self.im_start] + self.text_ids(f"{message.role}\n")
            for part in self._ordered_parts(message):
                if isinstance(part, Image.Image):
                    start = len(ids) + 1
                    ids += [self.vision_start] + [self.image_pad] * self.image_token_count(part) + [self.vision_end]
                    spans[f"image{len(images)}"] = (start, len(ids) - 1)
                    images.append(part)
                elif isinstance(part, SpanText):
                    start = len(ids)
                    ids += self.text_ids(self.sanitize(part.text))
                    spans[part.name] = (start, len(ids))
                else:
                    text = part if message.role == "assistant" else self.sanitize(part)
                    ids += self.text_ids(text)
            ids += [self.im_end] + self.text_ids("\n")
        labels_from = None
        if add_generation_prompt or answer is not None:
            ids += [self.im_start] + self.text_ids("assistant\n")
            labels_from = len(ids)
        if answer is not None:
            answer_ids = self.text_ids(answer)
            spans[answer_span] = (len(ids), len(ids) + len(answer_ids))
            ids += answer_ids + [self.im_end]
        return EncodedPrompt(ids, images, spans, labels_from)

    def _ordered_parts(self, message: Message) -> list:
        if message.role != "user" or not self.prompts.text_before_images:
            return message.parts
        return sorted(message.parts, key=lambda part: isinstance(part, Image.Image))  # stable: text, then images

    def with_caption(self, prompt: EncodedPrompt, caption: str, opener: str, closer: str) -> EncodedPrompt:
        """The prompt followed by the assistant answer `<opener>caption<closer>`, its caption span recorded.

        The caption's hidden states in this teacher-forced pass are what conditions the decoder.
        """
        caption_ids = self.text_ids(caption)
        opener_ids = self.tag_ids(opener)
        start = len(prompt.input_ids) + len(opener_ids)
        ids = prompt.input_ids + opener_ids + caption_ids + self.tag_ids(closer) + [self.im_end]
        spans = {**prompt.spans, "caption": (start, start + len(caption_ids))}
        return EncodedPrompt(ids, list(prompt.images), spans, prompt.labels_from)

    def collate(self, prompts: list[EncodedPrompt], padding_side: str = "right") -> dict:
        """Pad to a batch; spans are shifted to the padded positions (left padding moves them)."""
        longest = max(len(p.input_ids) for p in prompts)
        input_ids = torch.full((len(prompts), longest), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(prompts), longest), dtype=torch.long)
        spans = []
        for row, prompt in enumerate(prompts):
            offset = longest - len(prompt.input_ids) if padding_side == "left" else 0
            input_ids[row, offset : offset + len(prompt.input_ids)] = torch.tensor(prompt.input_ids)
            attention_mask[row, offset : offset + len(prompt.input_ids)] = 1
            spans.append({k: (a + offset, b + offset) for k, (a, b) in prompt.spans.items()})
        batch = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "mm_token_type_ids": (input_ids == self.image_pad).int(),
            **self.image_inputs([image for p in prompts for image in p.images]),
        }
        return {"inputs": batch, "spans": spans}


def gather_spans(states: torch.Tensor, spans: list[tuple[int, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of `states` [B, T, D] over per-sample spans -> right-padded [B, N, D] and mask [B, N]."""
    longest = max(1, max(end - start for start, end in spans))
    out = states.new_zeros(states.shape[0], longest, states.shape[-1])
    mask = torch.zeros(states.shape[0], longest, dtype=torch.long, device=states.device)
    for row, (start, end) in enumerate(spans):
        out[row, : end - start] = states[row, start:end]
        mask[row, : end - start] = 1
    return out, mask
