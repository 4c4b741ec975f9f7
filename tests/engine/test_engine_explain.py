"""debug_reason and the explain trace (SPEC §1, §7), on the language-learning rulebook."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import buddyrules as br

from .helpers import Buddy, at, make_rulebook, trace_entry


@pytest.fixture(scope="module")
def language(language_rulebook_path: Path) -> br.Rulebook:
    return br.load_rulebook(language_rulebook_path)


def test_no_matching_rules_when_only_a_counter_changed(language: br.Rulebook) -> None:
    buddy = Buddy.hatch(language)
    # The first lesson awards first_lesson after paths ran (step 4 before step 5), so the
    # "numbers" step unlocks on the next event: send two to settle.
    buddy.send("lesson_completed", at(0))
    buddy.send("lesson_completed", at(0, 1))
    effects = buddy.send("unregistered_thing", at(0, 1))
    assert effects.debug_reason == "no_matching_rules"
    assert buddy.state.counters["unregistered_thing"] == 1


def test_a_fresh_buddys_first_path_step_is_already_open(language: br.Rulebook) -> None:
    state = br.new_buddy(language, "u1")
    assert state.paths["basics"].unlocked == ("greetings",)
    effects = Buddy(language, state).send("unregistered_thing", at())
    assert effects.paths == ()
    assert effects.debug_reason == "no_matching_rules"


def test_no_matching_rules_on_a_fresh_buddy() -> None:
    rb = make_rulebook(coin_rules=[{"key": "c", "event": "lesson", "amount": 1}])
    assert Buddy.hatch(rb).send("quiz", at()).debug_reason == "no_matching_rules"


def test_no_matching_rules_when_conditions_are_false() -> None:
    rb = make_rulebook(coin_rules=[{"key": "c", "event": "lesson", "amount": 1, "when": "False"}])
    assert Buddy.hatch(rb).send("lesson", at()).debug_reason == "no_matching_rules"


def test_rewards_capped_when_every_grant_was_clipped(language: br.Rulebook) -> None:
    buddy = Buddy.hatch(language)
    assert buddy.send("daily_login", at(0)).coins == 2
    effects = buddy.send("daily_login", at(0, 1))
    assert effects.coins == 0
    assert effects.debug_reason == "rewards_capped"


def test_no_debug_reason_when_something_visible_changed(language: br.Rulebook) -> None:
    buddy = Buddy.hatch(language)
    assert buddy.send("lesson_completed", at()).debug_reason is None
    # A capped rule next to a paying one: the event still changed something.
    for h in range(1, 6):
        effects = buddy.send("lesson_completed", at(0, h))
    assert effects.coins > 0 and effects.debug_reason is None


def test_trace_lists_every_rule_considered_with_reasons(language: br.Rulebook) -> None:
    buddy = Buddy.hatch(language)
    for day in range(10):
        buddy.send("lesson_completed", at(day), score=0.5)
    for h in range(5):
        buddy.send("lesson_completed", at(10, h), score=0.5)
    effects = buddy.send("lesson_completed", at(10, 6), score=0.5, explain=True)
    trace = effects.trace
    assert trace is not None
    json.dumps([dict(t) for t in trace])  # serialisable
    rules = {(t["kind"], t["rule"]) for t in trace}
    assert {
        ("streak", "daily_lesson"),
        ("coin_rule", "lesson_coins"),
        ("coin_rule", "perfect_score"),
        ("coin_rule", "first_ten_lessons"),
        ("skill_rule", "skill_rules[0]"),
        ("skill_rule", "skill_rules[1]"),
        ("token_rule", "token_rules[0]"),
        ("badge", "first_lesson"),
        ("badge", "polyglot"),
        ("badge", "scholar"),
        ("evolution", "stage 2"),
    } <= rules
    # Rules bound to other event types are not considered.
    assert ("coin_rule", "quiz_coins") not in rules
    assert trace_entry(effects, "daily_lesson")["reason"] == "already ticked this period"
    cap = trace_entry(effects, "lesson_coins")
    assert not cap["fired"] and "daily cap 50" in cap["reason"] and "clipped 10" in cap["reason"]
    perfect = trace_entry(effects, "perfect_score")
    assert perfect["reason"] == "condition false" and perfect["reads"] == {"props.score": 0.5}
    limit = trace_entry(effects, "first_ten_lessons")
    assert "total limit used up (10/10)" in limit["reason"]
    skill = trace_entry(effects, "skill_rules[0]")
    assert skill["reads"] == {"props.difficulty": "<missing>"}
    assert skill["reason"].startswith("evaluation problem")
    assert trace_entry(effects, "first_lesson")["reason"] == "already awarded"
    scholar = trace_entry(effects, "scholar")
    assert scholar["reason"] == "condition false"
    assert scholar["reads"] == {"counters.lesson_completed": 16}
    assert trace_entry(effects, "token_rules[0]")["fired"]
    assert effects.to_wire()["trace"] == [dict(t) for t in trace]
    assert buddy.last.trace == trace


def test_trace_is_off_by_default(language: br.Rulebook) -> None:
    outcome = br.evaluate(
        language,
        br.new_buddy(language, "u1"),
        {"user_id": "u1", "type": "lesson_completed", "occurred_at": "2026-03-02T10:00:00Z"},
    )
    assert outcome.trace is None and outcome.effects.trace is None
    assert "trace" not in outcome.effects.to_wire()


def test_trace_does_not_change_the_result(language: br.Rulebook) -> None:
    plain, explained = Buddy.hatch(language), Buddy.hatch(language)
    for day in range(9):
        for type_ in ("lesson_completed", "quiz_passed", "module_finished", "daily_login"):
            a = plain.send(type_, at(day), score=0.93, difficulty="grammar")
            b = explained.send(type_, at(day), explain=True, score=0.93, difficulty="grammar")
            assert a.to_wire() == b.to_wire(include_trace=False)
    assert plain.state == explained.state


def test_trace_camel_rendering_keeps_read_names() -> None:
    rb = make_rulebook(
        event_types={"student": ["lesson_done"]},
        coin_rules=[
            {"key": "c", "event": "lesson_done", "amount": 1, "when": "counters.lesson_done > 5"}
        ],
    )
    effects = Buddy.hatch(rb).send("lesson_done", at(), explain=True)
    camel = effects.to_camel()
    entry = next(t for t in camel["trace"] if t["rule"] == "c")
    # Field names are camelCase; the names an expression read are data and stay as written.
    assert entry["reads"] == {"counters.lesson_done": 1}
    assert "debugReason" in camel
