"""Model offload: run a model bigger than the GPU by keeping on it only what runs now and what still fits.

The full-size OmniBridge holds about 27 GB of weights (the LLM alone 16.6 GB in bfloat16; README, "The
full-size path on a GPU"), more than a 24 GB card. Its parts run one after another: the LLM writes and
reads the caption, the BiLM turns its states into the decoder's conditioning, HunyuanDiT denoises, the VAE
decodes. So, as diffusers' `enable_model_cpu_offload` does, each part moves to the GPU just before it runs.
Unlike it, a part leaves only when the budget needs its room, least recently used first: a card that holds
the whole model never moves anything, and a chat after a chat moves nothing.

    offload = ComponentOffload({"llm": llm, "transformer": dit}, torch.device("cuda"), max_bytes=20 * 2**30)
    offload.use("llm")          # the LLM is on the GPU (and whatever else still fits)
    offload.use("transformer")  # the DiT too; the LLM went back to the CPU if both do not fit
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

GIB = 2**30


def module_bytes(module: torch.nn.Module) -> int:
    """What a module takes on a device: its parameters and buffers."""
    tensors = list(module.parameters()) + list(module.buffers())
    return sum(t.numel() * t.element_size() for t in tensors)


class OffloadError(ValueError):
    """Model offload asked for where it cannot work: no GPU, or a negative budget."""


@dataclass
class OffloadStats:
    max_bytes: int
    resident: list[str]  # on the device now, least recently used first
    fetches: int  # moves onto the device
    moved_bytes: int  # both ways


class ComponentOffload:
    """Named components that live on `park_device` and move to `device` when `use`d."""

    def __init__(self, components: dict[str, torch.nn.Module], device: torch.device, max_bytes: int,
                 park_device: torch.device | str = "cpu"):
        self.device, self.park_device = torch.device(device), torch.device(park_device)
        if self.device == self.park_device:
            raise OffloadError(f"model offload moves parts between an accelerator and {self.park_device}; "
                               f"this model runs on {self.device} already")
        if max_bytes < 0:
            raise OffloadError("the offload budget must be at least 0 bytes")
        _check_no_shared_tensors(components)
        self.components = components
        self.sizes = {name: module_bytes(module) for name, module in components.items()}
        self.max_bytes = max_bytes
        self.resident: list[str] = []  # least recently used first
        self.fetches = self.moved_bytes = 0
        for name in components:
            self._park(name, count=False)

    def use(self, *names: str) -> None:
        """Put every named component on the device; move others back, least recently used first, until
        what stays fits the budget. The named ones always come, even together over the budget."""
        unknown = [n for n in names if n not in self.components]
        if unknown:
            raise KeyError(f"no component named {unknown}; known: {sorted(self.components)}")
        for name in names:  # already there: now the most recently used
            if name in self.resident:
                self.resident.remove(name)
                self.resident.append(name)
        arriving = [n for n in dict.fromkeys(names) if n not in self.resident]
        total = sum(self.sizes[n] for n in self.resident + arriving)
        for victim in [n for n in self.resident if n not in names]:
            if total <= self.max_bytes:
                break
            self._park(victim)
            total -= self.sizes[victim]
        for name in arriving:
            self._fetch(name)

    def stats(self) -> OffloadStats:
        return OffloadStats(self.max_bytes, list(self.resident), self.fetches, self.moved_bytes)

    # One method, so that a test can park on the meta device, where a part that was not brought back
    # before it runs fails loudly instead of running on the CPU.
    def _move(self, module: torch.nn.Module, device: torch.device) -> None:
        module.to(device)

    def _park(self, name: str, count: bool = True) -> None:
        self._move(self.components[name], self.park_device)
        if name in self.resident:
            self.resident.remove(name)
        if count:
            self.moved_bytes += self.sizes[name]

    def _fetch(self, name: str) -> None:
        self._move(self.components[name], self.device)
        self.resident.append(name)
        self.fetches += 1
        self.moved_bytes += self.sizes[name]


def _check_no_shared_tensors(components: dict[str, torch.nn.Module]) -> None:
    """A tensor shared by two components would move with one while the other runs elsewhere."""
    owner: dict[int, str] = {}
    for name, module in components.items():
        for tensor in list(module.parameters()) + list(module.buffers()):
            other = owner.setdefault(id(tensor), name)
            if other != name:
                raise ValueError(f"components {other!r} and {name!r} share a tensor; offload them as one")
