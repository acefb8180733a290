"""The semantic-guided query-replacement schedule, as an explicit object.

During latent alignment the BiLM sees the decoder's text embeddings of the caption, and a growing
share of positions is replaced by learned queries, until at the end every position is a query (the
inference setting, where no text embeddings are needed). The official code encodes the phases in a
magic float (`mask_random_number` in {0, 0.005, 0.15, 0.75, 0.99, 1, 2}) and draws with Python's
`random` plus an unseeded CPU `torch.rand`; here each phase is a (p_min, p_max) range over a span of
training progress, and the draw uses a seeded generator on the model's device.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SchedulePhase:
    until: float  # the phase lasts until this fraction of training
    p_min: float
    p_max: float


# The official branches in their order: 0 -> 0.15 -> U(0.15,0.75) -> U(0.15,1) -> U(0.75,1) -> 1.
OFFICIAL_PHASES = (
    SchedulePhase(0.10, 0.0, 0.0),
    SchedulePhase(0.25, 0.15, 0.15),
    SchedulePhase(0.45, 0.15, 0.75),
    SchedulePhase(0.65, 0.15, 1.0),
    SchedulePhase(0.85, 0.75, 1.0),
    SchedulePhase(1.00, 1.0, 1.0),
)


@dataclass(frozen=True)
class SemanticGuidedSchedule:
    phases: tuple[SchedulePhase, ...] = OFFICIAL_PHASES

    def __post_init__(self):
        ends = [p.until for p in self.phases]
        if ends != sorted(ends) or not ends or ends[-1] < 1.0:
            raise ValueError("phases must be ordered by `until` and the last must reach 1.0")
        if any(not 0.0 <= p.p_min <= p.p_max <= 1.0 for p in self.phases):
            raise ValueError("each phase needs 0 <= p_min <= p_max <= 1")

    @classmethod
    def with_final_all_queries(cls, share: float) -> "SemanticGuidedSchedule":
        """The official phases compressed so that the last `share` of training is all queries.

        The official schedule spends its last 15% in the inference setting (every position a query);
        `--align-all-queries-share` tries more. One run at 0.5 (warm-started, against a newer decoder)
        lowered the full-path generation score, so the presets keep the official 0.15.
        """
        if not 0.0 < share < 1.0:
            raise ValueError("share must be in (0, 1)")
        ramp = OFFICIAL_PHASES[:-1]
        scale = (1.0 - share) / ramp[-1].until
        phases = tuple(SchedulePhase(p.until * scale, p.p_min, p.p_max) for p in ramp)
        return cls(phases + (SchedulePhase(1.0, 1.0, 1.0),))

    def probability_range(self, progress: float) -> tuple[float, float]:
        """The (p_min, p_max) replacement probability at a training progress in [0, 1]."""
        for phase in self.phases:
            if progress < phase.until:
                return phase.p_min, phase.p_max
        last = self.phases[-1]
        return last.p_min, last.p_max

    def sample_mask(
        self,
        batch: int,
        length: int,
        progress: float,
        generator: torch.Generator,
        exempt: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """[batch, length] bool, True where a learned query replaces the text embedding.

        Each sample draws its own probability within the phase's range. `exempt` ([batch] bool)
        marks samples that are never replaced (editing samples, as in the official code).
        """
        device = generator.device
        p_min, p_max = self.probability_range(progress)
        p = p_min + (p_max - p_min) * torch.rand(batch, 1, generator=generator, device=device)
        mask = torch.rand(batch, length, generator=generator, device=device) < p
        if p_min >= 1.0:
            mask = torch.ones_like(mask)
        if exempt is not None:
            mask &= ~exempt.to(device)[:, None]
        return mask
