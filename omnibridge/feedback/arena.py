"""Side-by-side comparisons (Chatbot-Arena style): the variant pairs, and win rates from the votes."""

from __future__ import annotations

from dataclasses import dataclass, field

CHOICES = ("left", "right", "tie", "both_bad")


@dataclass(frozen=True)
class Variant:
    name: str
    settings: dict = field(default_factory=dict, hash=False, compare=False)


# Generation pairs: (variant A, variant B); the sides are shuffled per battle.
GENERATION_PAIRS: dict[str, tuple[Variant, Variant]] = {
    "learned queries vs decoder text": (
        Variant("learned queries (OmniBridge)", {"use_learned_queries": True}),
        Variant("decoder's own text encoders", {"use_learned_queries": False})),
    "with vs without rewrite": (
        Variant("LLM prompt rewrite", {"rewrite": True}),
        Variant("no rewrite", {"rewrite": False})),
    "guidance 1.5 vs 4": (
        Variant("guidance 1.5", {"guidance_scale": 1.5}),
        Variant("guidance 4", {"guidance_scale": 4.0})),
    "two seeds": (
        Variant("seed s", {"seed_offset": 0}),
        Variant("seed s+1", {"seed_offset": 1})),
}
ANSWER_PAIRS: dict[str, tuple[Variant, Variant]] = {
    "greedy vs sampled": (
        Variant("greedy", {"temperature": 0.0}),
        Variant("sampled (T=0.8)", {"temperature": 0.8})),
}
CHECKPOINT_PAIR = "two checkpoints"


@dataclass
class PairStats:
    pair: str
    a: str
    b: str
    a_wins: int = 0
    b_wins: int = 0
    ties: int = 0
    both_bad: int = 0

    @property
    def votes(self) -> int:
        return self.a_wins + self.b_wins + self.ties + self.both_bad

    @property
    def a_win_rate(self) -> float | None:
        decided = self.a_wins + self.b_wins
        return self.a_wins / decided if decided else None


def win_rates(votes: list[dict]) -> list[PairStats]:
    """Aggregate vote records (parameters: pair, left, right; value: the choice) per variant pair.

    The first variant of a pair (alphabetically) is reported as `a`, so the sides users saw do not
    matter.
    """
    stats: dict[tuple[str, str, str], PairStats] = {}
    for vote in votes:
        parameters, choice = vote.get("parameters", {}), vote.get("value")
        left, right = parameters.get("left", {}).get("name"), parameters.get("right", {}).get("name")
        if not left or not right or choice not in CHOICES:
            continue
        a, b = sorted((left, right))
        key = (parameters.get("pair", ""), a, b)
        row = stats.setdefault(key, PairStats(key[0], a, b))
        if choice == "tie":
            row.ties += 1
        elif choice == "both_bad":
            row.both_bad += 1
        else:
            winner = left if choice == "left" else right
            if winner == a:
                row.a_wins += 1
            else:
                row.b_wins += 1
    return sorted(stats.values(), key=lambda s: (-s.votes, s.pair))
