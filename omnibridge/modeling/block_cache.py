"""Reusing the DiT's middle blocks between denoising steps: cheaper steps, no training.

Adjacent denoising steps feed the transformer nearly the same input, and what its middle blocks add
to their input changes slowly from step to step (the observation behind FORA and Delta-DiT). So on a
"reuse" step only the first and the last block run: the middle blocks' contribution is the residual
they added at the last fully computed step. HunyuanDiT's long skips join block i to block L-1-i; the
last block's skip comes from the first block, which runs fresh, and every skip into a middle block is
only read by a middle block, so nothing stale reaches the output but the reused residual itself.

The blocks' `forward` is swapped per instance while the cache is entered and put back as it was on
leaving (a compiled forward that `HunyuanDecoder.compile_blocks` gave a block stays), so the model's
weights, its state dict and diffusers' own forward stay untouched.
"""

from __future__ import annotations

from torch import Tensor, nn


class MiddleBlockCache:
    """Context manager over a HunyuanDiT2DModel: `reuse = True` makes the next calls skip its middle
    blocks (1 .. L-2) and add their residual from the last call made with `reuse = False`."""

    def __init__(self, transformer: nn.Module):
        self.middle = list(transformer.blocks)[1:-1]
        self.reuse = False
        self.residual: Tensor | None = None
        self._middle_input: Tensor | None = None
        self._own_forwards: list = []  # each middle block's instance forward before entering, if it had one

    def prepare(self, step: int, guided_steps: int, interval: int, batch: int) -> None:
        """Plan denoising step `step`: the guided steps and, after them, every `interval`-th step run every
        block; the others reuse, once a residual of this batch size is stored."""
        self.reuse = (interval > 1 and step > guided_steps and (step - guided_steps) % interval != 0
                      and self.can_reuse(batch))

    def can_reuse(self, batch: int) -> bool:
        """Whether a residual of this batch size is stored (a guided step runs at twice the batch)."""
        return self.residual is not None and self.residual.shape[0] == batch

    def __enter__(self) -> "MiddleBlockCache":
        self._own_forwards = [vars(block).get("forward") for block in self.middle]
        last = len(self.middle) - 1
        for index, block in enumerate(self.middle):
            block.forward = self._wrap(block.forward, first=index == 0, last=index == last)
        return self

    def __exit__(self, *exc) -> None:
        for block, own_forward in zip(self.middle, self._own_forwards):
            if own_forward is None:
                del block.forward  # back to the class's forward
            else:
                block.forward = own_forward
        self.residual = self._middle_input = None

    def _wrap(self, forward, first: bool, last: bool):
        def cached_forward(hidden_states: Tensor, *args, **kwargs) -> Tensor:
            if self.reuse:
                return hidden_states + self.residual if first else hidden_states
            if first:
                self._middle_input = hidden_states
            output = forward(hidden_states, *args, **kwargs)
            if last:
                self.residual = output - self._middle_input
            return output

        return cached_forward
