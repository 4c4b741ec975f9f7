"""Per-event facts every mechanic needs: the event, its audience and its local periods."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from buddyrules.engine.periods import period_index, week_of

__all__ = ["EventContext"]


class EventContext:
    """The event being evaluated with its local date (buddy's timezone, else rulebook's).

    ``day`` and ``week`` are the indexes of the event's local day and ISO week, computed
    once (caps and daily/weekly streaks all need them). Read-only by convention; a plain
    slotted class because one is built per event.

    ``day`` is given as the local date's ordinal (:func:`~buddyrules.engine.periods.local_day`,
    with no ``date`` object built on the hot path).
    """

    __slots__ = ("audience", "day", "occurred_at", "type", "week")

    type: str
    audience: str
    occurred_at: datetime
    day: int
    week: int

    def __init__(self, event_type: str, audience: str, occurred_at: datetime, day: int) -> None:
        self.type = event_type
        self.audience = audience
        self.occurred_at = occurred_at
        self.day = day
        self.week = week_of(day)

    def move_to(self, event_type: str, occurred_at: datetime, day: int) -> None:
        """Describe the buddy's next event instead (a replay keeps one context per buddy)."""
        self.type = event_type
        self.occurred_at = occurred_at
        self.day = day
        self.week = week_of(day)

    @property
    def local_day(self) -> date:
        """The event's local date (monthly periods and traces need it; rarely read)."""
        return date.fromordinal(self.day)

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
