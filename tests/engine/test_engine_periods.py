"""Local periods: days, ISO weeks and months in the buddy's (else the rulebook's) timezone."""

from __future__ import annotations

from datetime import date

import pytest

from buddyrules.engine.periods import local_date, period_index, period_start, zone

from .helpers import Buddy, make_rulebook, utc


def capped(timezone: str = "UTC") -> Buddy:
    rb = make_rulebook(
        timezone=timezone,
        coin_rules=[{"key": "c", "event": "lesson", "amount": 10, "daily_cap": 10}],
        streaks=[{"key": "d", "events": ["lesson"], "period": "daily"}],
    )
    return Buddy.hatch(rb)


@pytest.mark.parametrize(
    ("early", "late", "next_day"),
    [
        # 29 March 2026 in Berlin lasts 23 hours (CET -> CEST).
        ("2026-03-28T23:30:00Z", "2026-03-29T21:30:00Z", "2026-03-29T22:30:00Z"),
        # 25 October 2026 in Berlin lasts 25 hours (CEST -> CET): 00:30 and 23:30 local
        # are 24 hours apart in UTC and still the same local day.
        ("2026-10-24T22:30:00Z", "2026-10-25T22:30:00Z", "2026-10-25T23:30:00Z"),
    ],
)
def test_dst_days_are_one_local_day(early: str, late: str, next_day: str) -> None:
    buddy = capped("Europe/Berlin")
    assert buddy.send("lesson", utc(early)).coins == 10  # local 00:30
    same = buddy.send("lesson", utc(late))  # local 23:30, same day
    assert same.coins == 0
    assert same.streaks == ()  # no second tick that day
    nxt = buddy.send("lesson", utc(next_day))  # local 00:30 the next day
    assert nxt.coins == 10
    assert buddy.state.streaks["d"].count == 2


def test_the_buddys_timezone_overrides_the_rulebooks() -> None:
    rb = make_rulebook(
        coin_rules=[{"key": "c", "event": "lesson", "amount": 10, "daily_cap": 10}],
    )
    utc_buddy = Buddy.hatch(rb)
    ny_buddy = Buddy.hatch(rb, timezone="America/New_York")
    # 03:00Z is 22:00 the previous evening in New York (EST, UTC-5); 13:00Z is 09:00.
    first, second = utc("2026-03-03T03:00:00Z"), utc("2026-03-03T13:00:00Z")
    assert [utc_buddy.send("lesson", t).coins for t in (first, second)] == [10, 0]
    assert [ny_buddy.send("lesson", t).coins for t in (first, second)] == [10, 10]


def test_local_dates_and_period_indexes() -> None:
    berlin = zone("Europe/Berlin")
    assert local_date(utc("2026-03-29T21:59:59Z"), berlin) == date(2026, 3, 29)
    assert local_date(utc("2026-03-29T22:00:00Z"), berlin) == date(2026, 3, 30)
    sunday, monday = date(2026, 3, 29), date(2026, 3, 30)
    assert period_index("daily", monday) - period_index("daily", sunday) == 1
    assert period_index("weekly", monday) - period_index("weekly", sunday) == 1
    assert period_index("weekly", sunday) == period_index("weekly", date(2026, 3, 23))
    # ISO week 1 of 2026 starts on Monday 29 December 2025.
    assert period_index("weekly", date(2025, 12, 29)) == period_index("weekly", date(2026, 1, 4))
    assert period_index("weekly", date(2025, 12, 28)) + 1 == period_index(
        "weekly", date(2025, 12, 29)
    )
    assert (
        period_index("monthly", date(2026, 1, 1)) - period_index("monthly", date(2025, 12, 31)) == 1
    )
    with pytest.raises(ValueError):
        period_index("hourly", monday)


def test_period_start_is_local_midnight() -> None:
    berlin = zone("Europe/Berlin")
    day = period_index("daily", date(2026, 3, 29))
    assert period_start("daily", day, berlin).isoformat() == "2026-03-29T00:00:00+01:00"
    week = period_index("weekly", date(2026, 4, 1))
    assert period_start("weekly", week, berlin).date() == date(2026, 3, 30)
    month = period_index("monthly", date(2026, 10, 25))
    assert period_start("monthly", month, berlin).date() == date(2026, 10, 1)


def test_monthly_and_weekly_streak_periods_follow_the_timezone() -> None:
    rb = make_rulebook(
        timezone="Asia/Tokyo",
        streaks=[{"key": "m", "events": ["lesson"], "period": "monthly"}],
    )
    buddy = Buddy.hatch(rb)
    buddy.send("lesson", utc("2026-01-31T10:00:00Z"))  # 31 Jan 19:00 in Tokyo
    buddy.send("lesson", utc("2026-01-31T16:00:00Z"))  # 1 Feb 01:00 in Tokyo: next month
    assert buddy.state.streaks["m"].count == 2
