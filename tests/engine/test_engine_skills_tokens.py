"""Skill rules (clamp, levels) and token rules (caps, max_balance, "key:amount")."""

from __future__ import annotations

from typing import Any

import buddyrules as br

from .helpers import Buddy, at, make_rulebook, trace_entry


def skills_rulebook(**sections: Any) -> br.Rulebook:
    return make_rulebook(
        skills=[{"key": "s", "max_value": 30, "points_per_level": 10, "max_level": 2}],
        skill_rules=[{"key": "sr", "event": "lesson", "skill": "s", "amount": 12}],
        **sections,
    )


def test_skill_values_clamp_at_max_value_and_levels_are_reported() -> None:
    buddy = Buddy.hatch(skills_rulebook())
    first = buddy.send("lesson", at(0))
    assert buddy.state.skills == {"s": 12}
    assert [dict(s) for s in first.skills] == [
        {"skill": "s", "before": 0, "level_before": 0, "value": 12, "delta": 12, "level": 1}
    ]
    assert [n.type for n in buddy.last.notifications] == ["skill.leveled"]
    second = buddy.send("lesson", at(1))
    assert second.skills[0]["level"] == 2 and buddy.state.skills["s"] == 24
    third = buddy.send("lesson", at(2), explain=True)
    assert buddy.state.skills["s"] == 30  # clamped
    assert third.skills[0]["delta"] == 6 and third.skills[0]["level"] == 2  # max_level
    assert "max_value" in trace_entry(third, "sr")["reason"]
    assert not [n for n in buddy.last.notifications if n.type == "skill.leveled"]
    full = buddy.send("lesson", at(3))
    assert full.skills == () and full.debug_reason == "rewards_capped"


def test_skill_amount_expression() -> None:
    rb = make_rulebook(
        skills=[{"key": "s", "max_value": 100, "points_per_level": 10, "max_level": 10}],
        skill_rules=[{"key": "sr", "event": "lesson", "skill": "s", "amount": "props.n * 1.5"}],
    )
    buddy = Buddy.hatch(rb)
    buddy.send("lesson", at(), n=3)
    assert buddy.state.skills["s"] == 4  # 4.5 floored


def test_skill_rule_condition_reads_the_skill() -> None:
    rb = make_rulebook(
        skills=[{"key": "s", "max_value": 100, "points_per_level": 10, "max_level": 10}],
        skill_rules=[
            {"key": "a", "event": "lesson", "skill": "s", "amount": 10},
            {
                "key": "b",
                "event": "lesson",
                "skill": "s",
                "amount": 1,
                "when": "skills.s.level >= 1",
            },
        ],
    )
    buddy = Buddy.hatch(rb)
    buddy.send("lesson", at())
    assert buddy.state.skills["s"] == 11  # b saw the level a had just reached


def token_rulebook(*rules: dict[str, Any], **sections: Any) -> br.Rulebook:
    return make_rulebook(
        tokens=[
            {"key": "gems", "kind": "primary", "max_balance": 12},
            {"key": "xp", "kind": "progression"},
        ],
        token_rules=list(rules),
        **sections,
    )


def test_token_credits_are_clipped_to_max_balance() -> None:
    buddy = Buddy.hatch(
        token_rulebook({"key": "g", "event": "lesson", "token": "gems", "amount": 5})
    )
    assert buddy.send("lesson", at(0)).tokens == ("gems:5",)
    assert buddy.send("lesson", at(1)).tokens == ("gems:5",)
    clipped = buddy.send("lesson", at(2), explain=True)
    assert clipped.tokens == ("gems:2",)
    assert "max_balance" in trace_entry(clipped, "g")["reason"]
    full = buddy.send("lesson", at(3))
    assert full.tokens == () and full.debug_reason == "rewards_capped"
    assert buddy.state.tokens["gems"] == 12
    assert buddy.last.ledger == ()


def test_token_daily_and_weekly_caps() -> None:
    buddy = Buddy.hatch(
        token_rulebook(
            {
                "key": "x",
                "event": "lesson",
                "token": "xp",
                "amount": 4,
                "daily_cap": 6,
                "weekly_cap": 10,
            }
        )
    )
    got = [
        buddy.send("lesson", at(day, h)).token_amounts().get("xp", 0)
        for day in range(3)
        for h in range(2)
    ]
    assert got == [4, 2, 4, 0, 0, 0]
    assert buddy.send("lesson", at(7)).tokens == ("xp:4",)  # next ISO week


def test_tokens_effect_lists_one_entry_per_token_in_order_of_first_credit() -> None:
    rb = token_rulebook(
        {"key": "x", "event": "lesson", "token": "xp", "amount": 3},
        {"key": "g", "event": "lesson", "token": "gems", "amount": 2},
        {"key": "x2", "event": "lesson", "token": "xp", "amount": 1},
        streaks=[{"key": "daily", "events": ["lesson"], "tick_reward": {"tokens": {"gems": 1}}}],
    )
    buddy = Buddy.hatch(rb)
    effects = buddy.send("lesson", at())
    # The streak (step 2) credits gems before the token rules (step 3) credit xp.
    assert effects.tokens == ("gems:3", "xp:4")
    assert effects.token_amounts() == {"gems": 3, "xp": 4}
    assert buddy.state.tokens == {"gems": 3, "xp": 4}


def test_token_amount_expression_problem_grants_zero() -> None:
    buddy = Buddy.hatch(
        token_rulebook({"key": "x", "event": "lesson", "token": "xp", "amount": "10 / props.n"})
    )
    effects = buddy.send("lesson", at(), n=0)
    assert effects.tokens == ()
    assert effects.problems and "division by zero" in effects.problems[0]["reason"]
    assert buddy.send("lesson", at(), n=4).tokens == ("xp:2",)
