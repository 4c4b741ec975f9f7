"""Incremental badge and path passes: skipping unchanged conditions never changes a result.

``evaluate`` marks the state it returns as settled; the next ``evaluate`` under the same
rulebook then tests only the badge and path conditions whose inputs changed. These tests
compare that against evaluating every condition every time (forced by handing ``evaluate``
a state copy with a replaced container, which is never treated as settled).
"""

from __future__ import annotations

import pickle

import pytest
from hypothesis import given

import buddyrules as br
from buddyrules import BuddyState
from buddyrules.conditions._deps import state_deps
from buddyrules.engine.turn import settled_carry
from buddyrules.rulebook._deps import MIN_SKIPPABLE

from .helpers import (
    assert_same_outcomes,
    at,
    event,
    incremental_always,
    make_rulebook,
    replay_history,
)
from .strategies import History, histories


@given(histories)
def test_incremental_passes_give_exactly_what_full_passes_give(history: History) -> None:
    with incremental_always(history.rulebook):
        state_a, a = replay_history(history)
        state_b, b = replay_history(history, unsettled=True)
    assert_same_outcomes(a, b, state_a, state_b)


RULEBOOK = make_rulebook(
    coin_rules=[{"key": "lesson_coins", "event": "lesson", "amount": 10}],
    badges=[
        {"key": "rich", "when": "coins >= 500"},
        {"key": "regular", "when": "event_count(login) >= 2"},
        # Enough skippable badges for the engine to use incremental passes.
        *(
            {"key": f"quiz_{n}", "when": f"event_count(quiz) >= {n}"}
            for n in range(1, MIN_SKIPPABLE)
        ),
    ],
)


def test_incremental_passes_are_used_from_min_skippable_conditions() -> None:
    assert RULEBOOK.dependencies.worthwhile
    below = make_rulebook(
        badges=[
            {"key": f"quiz_{n}", "when": f"event_count(quiz) >= {n}"}
            for n in range(1, MIN_SKIPPABLE)
        ]
    )
    assert not below.dependencies.worthwhile
    few = make_rulebook(badges=[{"key": "rich", "when": "coins >= 500"}])
    assert not few.dependencies.worthwhile
    state = br.evaluate(few, br.new_buddy(few, "u1"), event("lesson", at(0))).state
    assert settled_carry(few, state) is None  # no record kept


def test_a_settled_state_is_recognised_and_its_copies_with_changes_are_not() -> None:
    state = br.new_buddy(RULEBOOK, "u1")
    assert settled_carry(RULEBOOK, state) is None  # a new buddy: test everything
    state = br.evaluate(RULEBOOK, state, event("lesson", at(0))).state
    assert settled_carry(RULEBOOK, state) == 0
    assert settled_carry(RULEBOOK, state.model_copy()) == 0  # same content
    assert settled_carry(RULEBOOK, state.model_copy(update={"coins": 600})) is None
    restored = BuddyState.model_validate_json(state.model_dump_json())
    assert settled_carry(RULEBOOK, restored) is None
    assert settled_carry(RULEBOOK, pickle.loads(pickle.dumps(state))) == 0
    other = make_rulebook(badges=[{"key": "rich", "when": "coins >= 5"}])
    assert settled_carry(other, state) is None  # another rulebook


def test_the_settlement_mark_is_not_state() -> None:
    state = br.evaluate(RULEBOOK, br.new_buddy(RULEBOOK, "u1"), event("lesson", at(0))).state
    restored = BuddyState.model_validate_json(state.model_dump_json())
    assert restored == state
    assert "_settled" not in state.model_dump_json()
    assert "_settled" not in state.model_dump()
    assert "_settled" not in repr(state)


def test_a_copy_edited_by_hand_is_evaluated_in_full() -> None:
    state = br.evaluate(RULEBOOK, br.new_buddy(RULEBOOK, "u1"), event("lesson", at(0))).state
    # coins changed outside evaluate: a login changes no coins, yet "rich" must be awarded.
    edited = state.model_copy(update={"coins": 600})
    out = br.evaluate(RULEBOOK, edited, event("login", at(1)))
    assert out.effects.badges_awarded == ("rich",)


def test_a_condition_on_an_untouched_counter_is_still_awarded_when_it_changes() -> None:
    state = br.new_buddy(RULEBOOK, "u1")
    for day in range(3):
        state = br.evaluate(RULEBOOK, state, event("lesson", at(day))).state
    out = br.evaluate(RULEBOOK, state, event("login", at(4)))
    assert out.effects.badges_awarded == ()
    out = br.evaluate(RULEBOOK, out.state, event("login", at(5)))
    assert out.effects.badges_awarded == ("regular",)


@pytest.mark.parametrize(
    ("source", "deps"),
    [
        ("coins >= 500", {"coins"}),
        ("event_count(lesson) >= 1", {"counters.lesson"}),
        ('event_count("lesson") >= 1 and stage < 3', {"counters.lesson", "stage"}),
        ("counters.quiz > 2 or tokens.gems >= 10", {"counters.quiz", "tokens.gems"}),
        ('"first" in badges and not has_badge("second")', {"badges"}),
        (
            "skills.grammar.level >= 2 and skill_level('speech') > 1",
            {"skills.grammar", "skills.speech"},
        ),
        ("streaks.daily.count >= 7 or streak('daily') == 3", {"streaks.daily"}),
        ("1 <= coins < 10", {"coins"}),
        ("audience == 'student' and -coins < 0", {"coins"}),
        ("True", set()),
    ],
)
def test_state_deps_of_safe_conditions(source: str, deps: set[str]) -> None:
    assert state_deps(source) == frozenset(deps)


@pytest.mark.parametrize(
    "source",
    [
        "props.score >= 0.9",  # reads the event
        "event.type == 'lesson'",
        "coins / 2 > 10",  # arithmetic may fail (guards, division)
        "coins + 1 > 10",
        "len(badges) > 2",  # a whole collection
        "tokens",
        "coins < 'a'",  # ordering across types fails at run time
        "'a' in [1, 2]",
        "coins if stage > 1 else 0",
        "max(coins, 5) > 3",
    ],
)
def test_conditions_that_must_always_be_tested(source: str) -> None:
    assert state_deps(source) is None


def test_an_evaluated_state_has_every_field_and_only_the_mark_besides() -> None:
    state = br.evaluate(RULEBOOK, br.new_buddy(RULEBOOK, "u1"), event("lesson", at(0))).state
    assert set(state.__dict__) == {*BuddyState.model_fields, "_settled"}


def test_the_namespace_holds_only_the_skills_and_streaks_expressions_read() -> None:
    skills = [
        {"key": "read", "max_value": 100, "points_per_level": 10, "max_level": 10},
        {"key": "unread", "max_value": 100, "points_per_level": 10, "max_level": 10},
    ]
    rb = make_rulebook(
        skills=skills,
        skill_rules=[{"event": "lesson", "skill": "unread", "amount": 30}],
        badges=[{"key": "b", "when": "skills.read.level >= 1"}],
    )
    assert [k for k, _, _ in rb.skill_levels] == ["read", "unread"]
    assert [k for k, _, _ in rb.namespace_skills] == ["read"]
    assert rb.namespace_streaks == ()
    # A computed key may name any skill: then all are in the namespace.
    dynamic = make_rulebook(
        skills=skills, badges=[{"key": "b", "when": "skill_level(props.which) >= 1"}]
    )
    assert [k for k, _, _ in dynamic.namespace_skills] == ["read", "unread"]
    # The unread skill still changes and is reported; explain traces still read the rest.
    out = br.evaluate(rb, br.new_buddy(rb, "u1"), event("lesson", at(0)), explain=True)
    assert out.state.skills == {"unread": 30}
    assert [c["skill"] for c in out.effects.skills] == ["unread"]
