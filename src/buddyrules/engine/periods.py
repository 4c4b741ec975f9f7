"""Period arithmetic: the one place that turns an instant into a day, ISO week or month.

A period is an integer index so that consecutive periods differ by one: days are proleptic
Gregorian ordinals, weeks count ISO weeks (Monday first; ordinal 1, 0001-01-01, is a Monday)
and months count ``year * 12 + month - 1``. Local dates come from ``astimezone``, so a local
day of 23 or 25 hours around a DST change is still one day.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta, tzinfo
from functools import lru_cache
from zoneinfo import ZoneInfo

__all__ = [
    "local_date",
    "local_day",
    "month_index",
    "next_month_start_utc",
    "period_index",
    "period_start",
    "week_index",
    "week_of",
    "zone",
]


@lru_cache(maxsize=256)
def zone(name: str) -> ZoneInfo:
    """A cached ZoneInfo (constructing one per event would dominate the hot path)."""
    return ZoneInfo(name)


def local_date(instant: datetime, tz: ZoneInfo) -> date:
    """The calendar date of ``instant`` in ``tz``."""
    return instant.astimezone(tz).date()


def local_day(instant: datetime, tz: tzinfo) -> int:
    """The ``daily`` period index of ``instant`` in ``tz``: its local date's ordinal.

    The engine's hot path: no ``date`` is built (``tz`` may be ``datetime.UTC``, see
    ``Rulebook.period_tz``, which costs nothing for an instant already in UTC).
    """
    return instant.astimezone(tz).toordinal()


def week_of(day: int) -> int:
    """The ISO-week index of a ``daily`` period index (weeks start on Monday)."""
    return (day - 1) // 7


def week_index(day: date) -> int:
    """The ISO-week index of a date (weeks start on Monday)."""
    return week_of(day.toordinal())


def month_index(day: date) -> int:
    """The month index of a date."""
    return day.year * 12 + day.month - 1


def period_index(kind: str, day: date) -> int:
    """The index of the ``daily``/``weekly``/``monthly`` period that contains ``day``."""
    if kind == "daily":
        return day.toordinal()
    if kind == "weekly":
        return week_index(day)
    if kind == "monthly":
        return month_index(day)
    raise ValueError(f"unknown period kind {kind!r}")


def period_start(kind: str, index: int, tz: ZoneInfo) -> datetime:
    """The first local instant of a period, as an aware datetime in ``tz``."""
    if kind == "daily":
        day = date.fromordinal(index)
    elif kind == "weekly":
        day = date.fromordinal(index * 7 + 1)
    elif kind == "monthly":
        day = date(index // 12, index % 12 + 1, 1)
    else:
        raise ValueError(f"unknown period kind {kind!r}")
    return datetime.combine(day, time(0), tzinfo=tz)


def next_month_start_utc(instant: datetime) -> datetime:
    """The first instant of the UTC month after ``instant`` (when a monthly quota resets)."""
    utc = instant.astimezone(UTC)
    year, month = (utc.year + 1, 1) if utc.month == 12 else (utc.year, utc.month + 1)
    return datetime(year, month, 1, tzinfo=UTC)


def days_between(earlier: datetime, later: datetime) -> float:
    """Elapsed days (may be fractional) from ``earlier`` to ``later``."""
    return (later - earlier) / timedelta(days=1)
