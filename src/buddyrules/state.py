"""BuddyState: the immutable, serialisable state of one buddy.

``model_dump_json()`` round-trips exactly through ``BuddyState.model_validate_json``. The
engine never mutates a state; it builds a new one per event.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from buddyrules.rulebook.compiled import Rulebook

__all__ = ["BuddyState", "PathState", "RuleUsage", "StreakState"]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class StreakState(_Frozen):
    """One streak: current ``count``, ``best`` ever, last ticked period and paid milestones."""

    count: int = 0
    best: int = 0
    last_period: int | None = None
    milestones_paid: tuple[int, ...] = ()


class RuleUsage(_Frozen):
    """What a capped or limited rule has credited: per day, per ISO week and in total."""

    day: int | None = None
    day_total: int = 0
    week: int | None = None
    week_total: int = 0
    times: int = 0


class PathState(_Frozen):
    """Progress along one path: unlocked and completed steps, completed sub-steps."""

    unlocked: tuple[str, ...] = ()
    completed: tuple[str, ...] = ()
    sub_steps_done: tuple[str, ...] = ()  # "step/sub_step"


class BuddyState(_Frozen):
    """A buddy's whole state. Build a fresh one with :func:`buddyrules.new_buddy`."""

    user_id: str
    audience: str
    rulebook_version: str
    timezone: str | None = None
    hatched_at: datetime | None = None
    stage: int = 1
    coins: int = 0
    tokens: dict[str, int] = Field(default_factory=dict)
    skills: dict[str, int] = Field(default_factory=dict)
    badges: tuple[str, ...] = ()
    badges_ready: tuple[str, ...] = ()
    counters: dict[str, int] = Field(default_factory=dict)
    streaks: dict[str, StreakState] = Field(default_factory=dict)
    rule_usage: dict[str, RuleUsage] = Field(default_factory=dict)
    paths: dict[str, PathState] = Field(default_factory=dict)
    gates: tuple[str, ...] = ()
    decay_applied: dict[str, int] = Field(default_factory=dict)
    evolution_notified: int = 1
    last_event_at: datetime | None = None
    events_applied: int = 0

    def token(self, key: str) -> int:
        """A token balance (0 when never credited)."""
        return self.tokens.get(key, 0)

    def skill_value(self, key: str) -> int:
        """A skill value (0 when never credited)."""
        return self.skills.get(key, 0)

    def skill_level(self, rulebook: Rulebook, key: str) -> int:
        """A skill's level under ``rulebook``."""
        return rulebook.skills[key].level_of(self.skills.get(key, 0))

    def streak_count(self, key: str) -> int:
        """A streak's current count."""
        s = self.streaks.get(key)
        return s.count if s is not None else 0

    def summary(self) -> dict[str, Any]:
        """A short JSON-compatible summary for display."""
        return {
            "user_id": self.user_id,
            "audience": self.audience,
            "stage": self.stage,
            "coins": self.coins,
            "tokens": dict(self.tokens),
            "skills": dict(self.skills),
            "badges": list(self.badges),
            "badges_ready": list(self.badges_ready),
            "streaks": {k: {"count": v.count, "best": v.best} for k, v in self.streaks.items()},
            "events_applied": self.events_applied,
        }
