"""Per-event facts every mechanic needs: the event, its audience and its local periods."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from buddyrules.engine.periods import day_and_week, period_index

__all__ = ["EventContext"]


class EventContext:
    """The event being evaluated with its local date (buddy's timezone, else rulebook's).

    ``day`` and ``week`` are the indexes of the event's local day and ISO week, computed
    once (caps and daily/weekly streaks all need them). Read-only by convention; a plain
    slotted class because one is built per event.
    """

    __slots__ = ("audience", "day", "local_day", "occurred_at", "type", "week")

    type: str
    audience: str
    occurred_at: datetime
    local_day: date
    day: int
    week: int

    def __init__(
        self, event_type: str, audience: str, occurred_at: datetime, local_day: date
    ) -> None:
        self.type = event_type
        self.audience = audience
        self.occurred_at = occurred_at
        self.local_day = local_day
        self.day, self.week = day_and_week(local_day)

    @classmethod
    def of(
        cls, event_type: str, audience: str, occurred_at: datetime, local_day: date
    ) -> EventContext:
        """Build the context, computing day and ISO-week indexes once."""
        return cls(event_type, audience, occurred_at, local_day)

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
