"""What every training stage shares: seeding, a JSONL log, a progress bar and resumable state."""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm


def step_rng(seed: int, stage: str, step: int) -> random.Random:
    """A data RNG derived from (seed, stage, step): resuming at step k replays exactly the same data."""
    return random.Random(f"{seed}/{stage}/{step}")


def images_to_tensor(images: list[np.ndarray]) -> torch.Tensor:
    """uint8 [H, W, 3] arrays -> float [B, 3, H, W] in [-1, 1]."""
    stacked = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float()
    return stacked / 127.5 - 1.0


@dataclass
class StageProgress:
    """Counters that survive a resume."""

    step: int = 0
    seconds: float = 0.0
    images_seen: int = 0
    best_metric: float = -1.0
    extra: dict = field(default_factory=dict)


class StageRun:
    """A stage's log file, progress bar, wall clock and checkpoint file in `<work_dir>/<stage>/`."""

    def __init__(self, work_dir: Path, stage: str, total_steps: int | None, resume: bool, seed: int):
        self.dir = Path(work_dir) / stage
        self.dir.mkdir(parents=True, exist_ok=True)
        self.stage, self.seed = stage, seed
        self.state_path = self.dir / "state.pt"
        self.log_path = self.dir / "log.jsonl"
        self.progress = StageProgress()
        self.saved_state: dict | None = None
        if resume and self.state_path.exists():
            self.saved_state = torch.load(self.state_path, map_location="cpu", weights_only=False)
            self.progress = StageProgress(**self.saved_state["progress"])
        elif self.log_path.exists() and not resume:
            self.log_path.unlink()
        torch.manual_seed(seed)
        self.losses: list[float] = []  # this run's losses (the first/last averages go into the summary)
        self.bar = tqdm(total=total_steps, initial=self.progress.step, desc=stage, dynamic_ncols=True,
                        mininterval=2.0)
        self._clock = time.monotonic()

    def tick(self, batch_size: int, **metrics: float) -> None:
        now = time.monotonic()
        self.progress.seconds += now - self._clock
        self._clock = now
        self.progress.step += 1
        self.progress.images_seen += batch_size
        self.bar.update(1)
        self.bar.set_postfix({k: f"{v:.4f}" for k, v in metrics.items()}, refresh=False)
        if "loss" in metrics:
            self.losses.append(metrics["loss"])
        if self.progress.step % 25 == 0 or self.progress.step == 1:
            self.log(**metrics)

    def log(self, **record) -> None:
        entry = {"stage": self.stage, "step": self.progress.step, "seconds": round(self.progress.seconds, 1),
                 "images_seen": self.progress.images_seen, **record}
        with self.log_path.open("a") as handle:
            handle.write(json.dumps(entry) + "\n")

    def save(self, **state) -> None:
        """Atomically write the resumable state (a crash mid-write keeps the previous file)."""
        tmp = self.state_path.with_suffix(".tmp")
        torch.save({"progress": vars(self.progress), **state}, tmp)
        tmp.replace(self.state_path)

    def pause_clock(self) -> None:
        """Stop counting time (evaluation inside a stage is not training time)."""
        self.progress.seconds += time.monotonic() - self._clock

    def resume_clock(self) -> None:
        self._clock = time.monotonic()

    def close(self) -> dict:
        self.bar.close()
        summary = {"stage": self.stage, "steps": self.progress.step, "seconds": round(self.progress.seconds, 1),
                   "images_seen": self.progress.images_seen}
        if len(self.losses) >= 2:
            window = max(1, min(10, len(self.losses) // 4))
            summary["first_loss"] = round(sum(self.losses[:window]) / window, 5)
            summary["last_loss"] = round(sum(self.losses[-window:]) / window, 5)
        print(json.dumps(summary), flush=True)
        return summary


def optimizer_step(optimizer: torch.optim.Optimizer, loss: torch.Tensor | None, parameters, lr: float,
                   clip: float = 1.0) -> None:
    """Set the learning rate, backpropagate `loss` (None: gradients are already there), clip, step."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    if loss is not None:
        loss.backward()
    torch.nn.utils.clip_grad_norm_(parameters, clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def warmup_cosine_lr(step: int, total_steps: int, peak: float, warmup: int) -> float:
    """Linear warm-up to `peak`, then a cosine down to a tenth of it at `total_steps`."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total_steps - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


class EMA:
    """Exponential moving average of parameters with the usual warm-up of its decay."""

    def __init__(self, module: torch.nn.Module, max_decay: float = 0.999):
        self.max_decay = max_decay
        self.shadow = {k: v.detach().clone().float() for k, v in module.state_dict().items()}
        # frozen weights are kept as they are: averaging a constant would still round it
        self.frozen = {name for name, p in module.named_parameters(remove_duplicate=False) if not p.requires_grad}
        self.updates = 0

    @torch.no_grad()
    def update(self, module: torch.nn.Module) -> None:
        self.updates += 1
        decay = min(self.max_decay, (1 + self.updates) / (10 + self.updates))
        for key, value in module.state_dict().items():
            if key in self.frozen:
                continue
            if value.dtype.is_floating_point:
                self.shadow[key].mul_(decay).add_(value.detach().float(), alpha=1 - decay)
            else:
                self.shadow[key].copy_(value)

    def state_dict(self) -> dict:
        return {"shadow": self.shadow, "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        # saved states load on the CPU; the averages live where the module does
        self.shadow = {k: v.to(self.shadow[k].device) if k in self.shadow else v for k, v in state["shadow"].items()}
        self.updates = state["updates"]

    def copy_to(self, module: torch.nn.Module) -> None:
        module.load_state_dict({k: v.to(module.state_dict()[k].dtype) for k, v in self.shadow.items()})
