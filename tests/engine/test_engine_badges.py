"""Badges: auto and manual, requires, rewards, the fixpoint, at most once (SPEC §3 step 5)."""

from __future__ import annotations

from typing import Any

import pytest

import buddyrules as br
from buddyrules.engine.admin import admin_award_badge

from .helpers import Buddy, at, make_rulebook, trace_entry


def badge_rulebook(*badges: dict[str, Any], **sections: Any) -> br.Rulebook:
    sections.setdefault("tokens", [{"key": "gems", "kind": "primary"}])
    return make_rulebook(badges=list(badges), **sections)


def test_auto_badge_is_awarded_once() -> None:
    buddy = Buddy.hatch(badge_rulebook({"key": "first", "when": "event_count(lesson) >= 1"}))
    effects = buddy.send("lesson", at())
    assert effects.badges_awarded == ("first",)
    assert "badge.awarded" in [n.type for n in buddy.last.notifications]
    again = buddy.send("lesson", at(1), explain=True)
    assert again.badges_awarded == ()
    assert trace_entry(again, "first")["reason"] == "already awarded"
    assert buddy.state.badges == ("first",)


def test_badge_reward_pays_coins_and_tokens() -> None:
    buddy = Buddy.hatch(
        badge_rulebook(
            {
                "key": "b",
                "when": "event_count(lesson) >= 2",
                "reward": {"coins": 40, "tokens": {"gems": 3}},
            }
        )
    )
    assert buddy.send("lesson", at()).badges_awarded == ()
    effects = buddy.send("lesson", at(1))
    assert effects.badges_awarded == ("b",)
    assert effects.coins == 40 and effects.tokens == ("gems:3",)
    assert [e.reason for e in buddy.last.ledger] == ["badge:b", "badge:b"]


def test_a_badge_reward_can_complete_another_badge_in_the_same_event() -> None:
    # "rich" comes first in the rulebook, so it needs the second pass of the fixpoint.
    rb = badge_rulebook(
        {"key": "rich", "when": "coins >= 100"},
        {"key": "starter", "when": "event_count(lesson) >= 1", "reward": {"coins": 100}},
    )
    buddy = Buddy.hatch(rb)
    effects = buddy.send("lesson", at())
    assert effects.badges_awarded == ("starter", "rich")
    assert effects.coins == 100
    assert buddy.state.badges == ("starter", "rich")


def test_reward_badge_chain_and_cycles_award_each_once() -> None:
    rb = badge_rulebook(
        {"key": "a", "when": "event_count(lesson) >= 1", "reward": {"coins": 1, "badge": "b"}},
        {"key": "b", "reward": {"coins": 2, "badge": "c"}},
        {"key": "c", "reward": {"coins": 4, "badge": "a"}},
    )
    buddy = Buddy.hatch(rb)
    effects = buddy.send("lesson", at())
    assert effects.badges_awarded == ("a", "b", "c")
    assert effects.coins == 7
    assert buddy.send("lesson", at(1)).badges_awarded == ()


def test_requires_waits_for_the_prerequisite() -> None:
    rb = badge_rulebook(
        {"key": "advanced", "when": "event_count(lesson) >= 1", "requires": ["basic"]},
        {"key": "basic", "when": "event_count(quiz) >= 1"},
    )
    buddy = Buddy.hatch(rb)
    effects = buddy.send("lesson", at(), explain=True)
    assert effects.badges_awarded == ()
    assert trace_entry(effects, "advanced")["reason"] == "prerequisite missing: basic"
    # In one event the prerequisite is awarded first, then the dependent badge.
    assert buddy.send("quiz", at(1)).badges_awarded == ("basic", "advanced")


def test_manual_badge_is_ready_once_then_an_admin_award_pays_it() -> None:
    rb = badge_rulebook(
        {
            "key": "scholar",
            "mode": "manual",
            "when": "event_count(lesson) >= 2",
            "reward": {"coins": 25},
        },
        {"key": "rich", "when": "coins >= 25"},
    )
    buddy = Buddy.hatch(rb)
    buddy.send("lesson", at(0))
    ready = buddy.send("lesson", at(1))
    assert ready.badges_ready == ("scholar",)
    assert ready.badges_awarded == () and ready.coins == 0
    assert [n.type for n in buddy.last.notifications] == ["badge.ready"]
    assert buddy.state.badges_ready == ("scholar",)
    later = buddy.send("lesson", at(2), explain=True)
    assert later.badges_ready == ()
    assert trace_entry(later, "scholar")["reason"] == "already ready"
    awarded = buddy.apply(admin_award_badge(rb, buddy.state, "scholar"))
    # The reward pays and makes "rich" true at once.
    assert awarded.effects.badges_awarded == ("scholar", "rich")
    assert awarded.effects.coins == 25
    assert buddy.state.badges == ("scholar", "rich")
    assert list(buddy.state.badges_ready) == []
    again = buddy.apply(admin_award_badge(rb, buddy.state, "scholar"))
    assert again.effects.badges_awarded == () and again.effects.coins == 0


def test_badge_without_condition_only_by_reward_or_admin() -> None:
    rb = badge_rulebook({"key": "gift"})
    buddy = Buddy.hatch(rb)
    effects = buddy.send("lesson", at(), explain=True)
    assert effects.badges_awarded == ()
    assert "no condition" in trace_entry(effects, "gift")["reason"]
    assert admin_award_badge(rb, buddy.state, "gift").state.badges == ("gift",)


def test_audience_scoped_badge() -> None:
    rb = make_rulebook(
        audiences=["student", "teacher"],
        event_types={"student": ["lesson"], "teacher": ["lesson"]},
        badges=[{"key": "mentor", "when": "event_count(lesson) >= 1", "audience": "teacher"}],
    )
    assert Buddy.hatch(rb, audience="student").send("lesson", at()).badges_awarded == ()
    assert Buddy.hatch(rb, audience="teacher").send("lesson", at()).badges_awarded == ("mentor",)


@pytest.mark.parametrize("hidden", [True, False])
def test_hidden_badges_are_still_awarded(hidden: bool) -> None:
    rb = badge_rulebook({"key": "h", "when": "event_count(lesson) >= 1", "hidden": hidden})
    assert Buddy.hatch(rb).send("lesson", at()).badges_awarded == ("h",)


def test_badge_condition_problem_is_reported_and_false() -> None:
    rb = badge_rulebook({"key": "p", "when": "props.n > 1"})
    buddy = Buddy.hatch(rb)
    effects = buddy.send("lesson", at(), explain=True)
    assert effects.badges_awarded == ()
    assert trace_entry(effects, "p")["reason"].startswith("evaluation problem")
    assert buddy.send("lesson", at(), n=2).badges_awarded == ("p",)


def test_a_failing_badge_condition_is_reported_once_per_event() -> None:
    # "first" is awarded in the first pass, so the fixpoint runs a second pass.
    rb = badge_rulebook(
        {"key": "p", "when": "props.n > 1"},
        {"key": "first", "when": "event_count(lesson) >= 1"},
    )
    effects = Buddy.hatch(rb).send("lesson", at())
    assert effects.badges_awarded == ("first",)
    assert [p["rule"] for p in effects.problems] == ["p"]


def test_a_reward_naming_a_manual_badge_makes_it_ready_not_awarded() -> None:
    import buddyrules as br
    from buddyrules.engine.admin import admin_award_badge

    rb = br.load_rulebook(
        {
            "name": "manual-reward",
            "audiences": ["student"],
            "event_types": {"student": ["login"]},
            "streaks": [
                {
                    "key": "daily",
                    "events": ["login"],
                    "milestones": [{"count": 1, "reward": {"badge": "vip"}}],
                }
            ],
            "badges": [{"key": "vip", "mode": "manual", "reward": {"coins": 7}}],
        }
    )
    state = br.new_buddy(rb, "u")
    out = br.evaluate(
        rb, state, {"user_id": "u", "type": "login", "occurred_at": "2026-01-05T10:00:00Z"}
    )
    assert out.effects.badges_ready == ("vip",)
    assert out.effects.badges_awarded == ()
    assert out.state.badges == () and out.state.badges_ready == ("vip",)
    awarded = admin_award_badge(rb, out.state, "vip")
    assert awarded.state.badges == ("vip",) and awarded.effects.coins == 7
