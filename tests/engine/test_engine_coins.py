"""Coin rules: amounts, multipliers, daily/weekly caps, total limits (SPEC §4)."""

from __future__ import annotations

from typing import Any

import buddyrules as br

from .helpers import Buddy, at, make_rulebook, trace_entry, utc


def coin_rulebook(*rules: dict[str, Any], **sections: Any) -> br.Rulebook:
    return make_rulebook(coin_rules=list(rules), **sections)


def test_a_plain_rule_pays_its_amount_with_a_ledger_entry() -> None:
    buddy = Buddy.hatch(coin_rulebook({"key": "c", "event": "lesson", "amount": 7}))
    effects = buddy.send("lesson", at())
    assert effects.coins == 7
    assert buddy.state.coins == 7
    assert [(e.currency, e.amount, e.balance_after, e.reason) for e in buddy.last.ledger] == [
        ("coins", 7, 7, "rule:c")
    ]
    assert [n.type for n in buddy.last.notifications] == ["coins.earned"]
    assert buddy.send("quiz", at()).coins == 0  # bound to another event type


def test_rules_run_in_rulebook_order_and_each_pays() -> None:
    rb = coin_rulebook(
        {"key": "a", "event": "lesson", "amount": 1},
        {"key": "b", "event": "lesson", "amount": 2, "when": "coins >= 1"},
    )
    buddy = Buddy.hatch(rb)
    # b reads the balance a has just credited in the same event.
    assert buddy.send("lesson", at()).coins == 3
    assert [e.reason for e in buddy.last.ledger] == ["rule:a", "rule:b"]


def test_daily_cap_clips_to_the_remainder_then_pays_nothing_until_the_next_day() -> None:
    buddy = Buddy.hatch(
        coin_rulebook({"key": "c", "event": "lesson", "amount": 10, "daily_cap": 25})
    )
    assert buddy.send("lesson", at(0, 0)).coins == 10
    assert buddy.send("lesson", at(0, 1)).coins == 10
    clipped = buddy.send("lesson", at(0, 2), explain=True)
    assert clipped.coins == 5
    entry = trace_entry(clipped, "c")
    assert entry["fired"] and entry["amount"] == 10 and entry["credited"] == 5
    assert "daily cap 25" in entry["reason"] and "clipped 5" in entry["reason"]
    capped = buddy.send("lesson", at(0, 3))
    assert capped.coins == 0
    assert capped.debug_reason == "rewards_capped"
    assert buddy.send("lesson", at(1)).coins == 10  # a new day
    assert buddy.state.coins == 35


def test_weekly_cap_resets_on_the_iso_week_boundary_sunday_to_monday() -> None:
    rb = coin_rulebook({"key": "w", "event": "lesson", "amount": 30, "weekly_cap": 50})
    buddy = Buddy.hatch(rb)
    assert buddy.send("lesson", utc("2026-03-23T10:00:00Z")).coins == 30  # Monday, week 13
    assert buddy.send("lesson", utc("2026-03-28T10:00:00Z")).coins == 20  # Saturday: clipped
    assert buddy.send("lesson", utc("2026-03-29T23:59:59Z")).coins == 0  # Sunday: capped
    assert buddy.send("lesson", utc("2026-03-30T00:00:00Z")).coins == 30  # Monday, week 14
    assert buddy.send("lesson", utc("2026-04-05T12:00:00Z")).coins == 20  # still week 14


def test_weekly_cap_uses_local_iso_weeks() -> None:
    rb = coin_rulebook(
        {"key": "w", "event": "lesson", "amount": 30, "weekly_cap": 30}, timezone="Europe/Berlin"
    )
    buddy = Buddy.hatch(rb)
    # Sunday 29 March 23:30 in Berlin (CEST, UTC+2) is 21:30 UTC: still ISO week 13.
    assert buddy.send("lesson", utc("2026-03-29T21:30:00Z")).coins == 30
    # Monday 00:30 in Berlin is Sunday 22:30 UTC, but week 14 locally.
    assert buddy.send("lesson", utc("2026-03-29T22:30:00Z")).coins == 30


def test_daily_and_weekly_caps_together() -> None:
    rb = coin_rulebook(
        {"key": "dw", "event": "lesson", "amount": 10, "daily_cap": 20, "weekly_cap": 45}
    )
    buddy = Buddy.hatch(rb)
    paid = [buddy.send("lesson", at(day, h)).coins for day in range(4) for h in range(3)]
    # day 0: 10,10,0; day 1: 10,10,0; day 2: 5 (weekly remainder), 0, 0; day 3: 0...
    assert paid == [10, 10, 0, 10, 10, 0, 5, 0, 0, 0, 0, 0]
    assert sum(paid) == 45


def test_total_limit_counts_paid_grants_only() -> None:
    rb = coin_rulebook(
        {"key": "t", "event": "lesson", "amount": 20, "daily_cap": 20, "total_limit": 2}
    )
    buddy = Buddy.hatch(rb)
    assert buddy.send("lesson", at(0)).coins == 20
    # Clipped to zero by the daily cap: that does not use the total limit.
    assert buddy.send("lesson", at(0, 1)).coins == 0
    assert buddy.state.rule_usage["t"].times == 1
    assert buddy.send("lesson", at(1)).coins == 20
    used_up = buddy.send("lesson", at(2), explain=True)
    assert used_up.coins == 0
    assert used_up.debug_reason == "rewards_capped"
    entry = trace_entry(used_up, "t")
    assert not entry["fired"] and "total limit used up (2/2)" in entry["reason"]
    assert buddy.state.rule_usage["t"].times == 2


def test_total_limit_not_used_by_a_zero_amount() -> None:
    rb = coin_rulebook({"key": "t", "event": "lesson", "amount": "props.n", "total_limit": 1})
    buddy = Buddy.hatch(rb)
    assert buddy.send("lesson", at(0), n=0).coins == 0
    assert buddy.send("lesson", at(1), n=3).coins == 3
    assert buddy.send("lesson", at(2), n=3).coins == 0


def test_multipliers_multiply_and_the_result_is_floored() -> None:
    rb = coin_rulebook(
        {
            "key": "m",
            "event": "lesson",
            "amount": 5,
            "multiplier": [
                {"when": "props.a == 1", "factor": 2},
                {"when": "props.b == 1", "factor": 1.5},
            ],
        }
    )
    buddy = Buddy.hatch(rb)
    assert buddy.send("lesson", at(0), a=0, b=0).coins == 5
    assert buddy.send("lesson", at(1), a=1, b=0).coins == 10
    assert buddy.send("lesson", at(2), a=0, b=1).coins == 7  # 7.5 floored
    both = buddy.send("lesson", at(3), a=1, b=1, explain=True)
    assert both.coins == 15  # 5 * 2 * 1.5
    assert trace_entry(both, "m")["multipliers"] == [2, 1.5]


def test_multiplier_applies_before_caps() -> None:
    rb = coin_rulebook(
        {
            "key": "m",
            "event": "lesson",
            "amount": 5,
            "daily_cap": 12,
            "multiplier": [{"when": "props.a == 1", "factor": 3}],
        }
    )
    buddy = Buddy.hatch(rb)
    assert buddy.send("lesson", at(0), a=1).coins == 12  # 15 clipped to 12
    assert buddy.send("lesson", at(0, 1), a=0).coins == 0


def test_amount_expressions_floor_and_report_problems() -> None:
    rb = coin_rulebook(
        {"key": "half", "event": "lesson", "amount": "props.n / 2"},
        {"key": "minus", "event": "quiz", "amount": "props.n - 10"},
        {"key": "broken", "event": "login", "amount": "props.missing * 2"},
    )
    buddy = Buddy.hatch(rb)
    half = buddy.send("lesson", at(), n=5)
    assert half.coins == 2 and half.problems == ()
    negative = buddy.send("quiz", at(), n=3, explain=True)
    assert negative.coins == 0
    assert [p["rule"] for p in negative.problems] == ["minus"]
    assert "negative" in negative.problems[0]["reason"]
    assert "amount" in trace_entry(negative, "minus")["reason"]
    failing = buddy.send("login", at(), explain=True)
    assert failing.coins == 0
    assert [p["rule"] for p in failing.problems] == ["broken"]
    assert "missing" in failing.problems[0]["reason"]
    assert failing.to_wire()["problems"] == [dict(p) for p in failing.problems]
    assert buddy.state.coins == 2


def test_a_condition_that_fails_is_false_and_says_why() -> None:
    rb = coin_rulebook({"key": "c", "event": "lesson", "amount": 1, "when": "props.score >= 0.5"})
    buddy = Buddy.hatch(rb)
    effects = buddy.send("lesson", at(), explain=True)
    assert effects.coins == 0
    entry = trace_entry(effects, "c")
    assert not entry["fired"]
    assert entry["reason"].startswith("evaluation problem")
    assert entry["reads"] == {"props.score": "<missing>"}
    mismatch = buddy.send("lesson", at(), score="high", explain=True)
    assert mismatch.coins == 0
    assert "type mismatch" in trace_entry(mismatch, "c")["reason"]
    assert buddy.send("lesson", at(), score=0.7).coins == 1


def test_audience_scoped_rules_apply_only_to_that_audience() -> None:
    rb = make_rulebook(
        audiences=["student", "teacher"],
        event_types={"student": ["lesson"], "teacher": ["lesson"]},
        coin_rules=[
            {"key": "for_all", "event": "lesson", "amount": 1},
            {"key": "for_teachers", "event": "lesson", "amount": 10, "audience": "teacher"},
        ],
    )
    student = Buddy.hatch(rb, audience="student")
    teacher = Buddy.hatch(rb, audience="teacher")
    effects = student.send("lesson", at(), explain=True)
    assert effects.coins == 1
    entry = trace_entry(effects, "for_teachers")
    assert not entry["fired"] and "audience mismatch" in entry["reason"]
    assert teacher.send("lesson", at()).coins == 11
