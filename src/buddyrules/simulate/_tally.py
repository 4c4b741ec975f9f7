"""Mergeable per-rulebook aggregates: what one shard learned, added up exactly.

Every field is a count, a sum, or a list that is sorted when the report is built, so merging
shards in any order gives the same totals, and the report never depends on how the users
were split.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

__all__ = ["BuddyOutcome", "Tally"]


class BuddyOutcome(NamedTuple):
    """Where one buddy ended up under one rulebook."""

    user_id: str
    audience: str
    events: int
    coins_earned: int
    coins: int
    badges: tuple[str, ...]
    badges_ready: tuple[str, ...]
    stage: int
    ready_stage: int
    from_initial_state: bool


def _add(into: dict[str, int], other: dict[str, int]) -> None:
    for k, v in other.items():
        into[k] = into.get(k, 0) + v


@dataclass(slots=True)
class Tally:
    """What the replay under one rulebook produced, in mergeable form.

    ``rules`` maps ``"kind:key"`` to ``[fired, granted, clipped]``; days are days since the
    Unix epoch (UTC); ``award_seconds`` holds, per badge, each award's time since hatching.
    """

    applied: int = 0
    by_type: dict[str, int] = field(default_factory=dict)
    rejected: dict[str, int] = field(default_factory=dict)
    rules: dict[str, list[int]] = field(default_factory=dict)
    problems: dict[str, int] = field(default_factory=dict)
    coins_by_source: dict[str, int] = field(default_factory=dict)
    tokens_by_source: dict[str, dict[str, int]] = field(default_factory=dict)
    tokens_spent: dict[str, int] = field(default_factory=dict)
    badges_awarded: dict[str, int] = field(default_factory=dict)
    badges_ready: dict[str, int] = field(default_factory=dict)
    award_seconds: dict[str, list[float]] = field(default_factory=dict)
    milestones: dict[tuple[str, int], int] = field(default_factory=dict)
    daily_coins: dict[int, int] = field(default_factory=dict)
    daily_tokens: dict[int, dict[str, int]] = field(default_factory=dict)
    buddies: list[BuddyOutcome] = field(default_factory=list)
    traced: int = 0  # events evaluated a second time for their trace (diagnostic)

    def merge(self, other: Tally) -> None:
        """Add ``other`` into this tally."""
        self.applied += other.applied
        _add(self.by_type, other.by_type)
        _add(self.rejected, other.rejected)
        for k, v in other.rules.items():
            mine = self.rules.get(k)
            if mine is None:
                self.rules[k] = list(v)
            else:
                for i, x in enumerate(v):
                    mine[i] += x
        _add(self.problems, other.problems)
        _add(self.coins_by_source, other.coins_by_source)
        for source, tokens in other.tokens_by_source.items():
            _add(self.tokens_by_source.setdefault(source, {}), tokens)
        _add(self.tokens_spent, other.tokens_spent)
        _add(self.badges_awarded, other.badges_awarded)
        _add(self.badges_ready, other.badges_ready)
        for k, secs in other.award_seconds.items():
            self.award_seconds.setdefault(k, []).extend(secs)
        for mk, n in other.milestones.items():
            self.milestones[mk] = self.milestones.get(mk, 0) + n
        for day, coins in other.daily_coins.items():
            self.daily_coins[day] = self.daily_coins.get(day, 0) + coins
        for day, tokens in other.daily_tokens.items():
            _add(self.daily_tokens.setdefault(day, {}), tokens)
        self.buddies.extend(other.buddies)
        self.traced += other.traced
