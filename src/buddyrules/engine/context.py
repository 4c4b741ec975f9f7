"""Per-event facts every mechanic needs: the event, its audience and its local periods."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from buddyrules.engine.periods import period_index

__all__ = ["EventContext"]


@dataclass(frozen=True, slots=True)
class EventContext:
    """The event being evaluated with its local date (buddy's timezone, else rulebook's)."""

    type: str
    audience: str
    occurred_at: datetime
    local_day: date
    day: int
    week: int

    @classmethod
    def of(
        cls, event_type: str, audience: str, occurred_at: datetime, local_day: date
    ) -> EventContext:
        """Build the context, computing day and ISO-week indexes once."""
        return cls(
            type=event_type,
            audience=audience,
            occurred_at=occurred_at,
            local_day=local_day,
            day=period_index("daily", local_day),
            week=period_index("weekly", local_day),
        )

    def period(self, kind: str) -> int:
        """The index of this event's ``daily``/``weekly``/``monthly`` period."""
        if kind == "daily":
            return self.day
        if kind == "weekly":
            return self.week
        return period_index(kind, self.local_day)

    def describe(self) -> dict[str, Any]:
        """For traces."""
        return {"type": self.type, "audience": self.audience, "local_day": str(self.local_day)}
