"""Event plans (steps 2-6 compiled per event type) give exactly what the interpreter gives.

``evaluate`` runs a plan when it neither traces nor uses the incremental passes; with
``explain=True`` it runs the interpreter, whose trace only adds entries. So the reference
here is the same history replayed with ``explain=True``: every effect (problems included),
ledger entry, notification and state must be identical, event by event.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import buddyrules as br
from buddyrules import BuddyState, Outcome
from buddyrules.engine import plans
from buddyrules.engine.plans import plan_for

from .helpers import (
    assert_same_outcomes,
    at,
    incremental_always,
    make_rulebook,
    replay_history,
)
from .strategies import History, histories

EXAMPLES = Path(__file__).resolve().parents[2] / "rules_examples"


@given(histories)
def test_plans_give_exactly_what_the_interpreter_gives(history: History) -> None:
    # (A rulebook with many skippable conditions runs the incremental passes instead of a
    # plan; the comparison holds for it too.)
    state_a, a = replay_history(history)
    state_b, b = replay_history(history, explain=True)
    assert_same_outcomes(a, b, state_a, state_b)


@given(histories)
def test_rules_only_plans_with_incremental_passes_match_the_interpreter(history: History) -> None:
    # Forced incremental passes: evaluate runs a rules-only plan for steps 2-3, then notes
    # what changed and runs steps 4-6 incrementally; explain=True interprets every step.
    with incremental_always(history.rulebook):
        state_a, a = replay_history(history)
        state_b, b = replay_history(history, explain=True)
    assert_same_outcomes(a, b, state_a, state_b)


def _planned_and_interpreted(
    rulebook: br.Rulebook, start: BuddyState, events: list[dict[str, Any]]
) -> list[Outcome]:
    """Apply ``events`` untraced (a plan) and traced (the interpreter); assert both gave the
    same outcomes; return the plan's."""
    a = b = start
    outs_a, outs_b = [], []
    for event in events:
        oa = br.evaluate(rulebook, a, event)
        ob = br.evaluate(rulebook, b, event, explain=True)
        outs_a.append(oa)
        outs_b.append(ob)
        a, b = oa.state, ob.state
    assert_same_outcomes(outs_a, outs_b, a, b)
    return outs_a


def _example_events(rulebook: br.Rulebook) -> list[dict[str, Any]]:
    """Two weeks of every registered type with properties near the examples' thresholds."""
    types = sorted({t for ts in rulebook.event_types.values() for t in ts})
    events = []
    for day in range(15):
        for n, type_ in enumerate(types):
            for score in (0.5, 0.95):
                events.append(
                    {
                        "type": type_,
                        "user_id": "u1",
                        "occurred_at": at(days=day * 1.3, hours=n + score),
                        "properties": {
                            "score": score,
                            "difficulty": "speaking" if day % 2 else "grammar",
                            "amount": 25 * (day + 1),
                            "minutes": 20 + day,
                            "distance_km": day + score,
                        },
                    }
                )
    return events


@pytest.mark.parametrize("name", sorted(p.name for p in EXAMPLES.iterdir() if p.is_dir()))
def test_plans_match_the_interpreter_on_every_example(name: str) -> None:
    rulebook = br.load_rulebook(EXAMPLES / name / "rulebook.yaml")
    for audience in rulebook.audiences:
        events = [{**event, "audience": audience} for event in _example_events(rulebook)]
        outs = _planned_and_interpreted(rulebook, br.new_buddy(rulebook, "u1", audience), events)
        assert any(o.ledger for o in outs), "the example events should earn something"


def test_a_plan_is_compiled_once_per_event_type_and_dropped_with_its_rulebook() -> None:
    rulebook = make_rulebook(coin_rules=[{"key": "c", "event": "lesson", "amount": 3}])
    first = plan_for(rulebook, "lesson")
    assert plan_for(rulebook, "lesson") is first
    assert plan_for(rulebook, "quiz") is not first
    key = id(rulebook)
    assert key in plans._PLANS
    del rulebook, first
    import gc

    gc.collect()
    assert key not in plans._PLANS


def test_keys_are_written_as_literals() -> None:
    # Keys reach the plan's source only through repr(); a hyphenated key stays one string.
    rulebook = make_rulebook(
        coin_rules=[{"key": "x-y", "event": "lesson", "amount": 1, "daily_cap": 5}],
        badges=[{"key": "b-1", "when": "coins >= 1"}],
    )
    state = br.new_buddy(rulebook, "u1")
    out = br.evaluate(rulebook, state, {"type": "lesson", "user_id": "u1", "occurred_at": at()})
    assert out.ledger[0].reason == "rule:x-y"
    assert out.effects.badges_awarded == ("b-1",)
    assert out.state.rule_usage["x-y"].day_total == 1


@given(st.lists(st.tuples(st.integers(0, 20), st.sampled_from(["lesson", "quiz"])), max_size=40))
def test_caps_under_late_events_match_the_interpreter(arrivals: list[tuple[int, str]]) -> None:
    # Events in any order (late ones included: an earlier day or week than the last
    # credit), against daily and weekly caps and a total limit, written out by the plans.
    events = [
        {"type": type_, "user_id": "u1", "occurred_at": at(days=day, hours=n % 5)}
        for n, (day, type_) in enumerate(arrivals)
    ]
    _planned_and_interpreted(_CAPPED, br.new_buddy(_CAPPED, "u1"), events)


_CAPPED = make_rulebook(
    tokens=[{"key": "gems", "kind": "primary", "max_balance": 40}],
    coin_rules=[
        {"key": "daily", "event": "lesson", "amount": 4, "daily_cap": 10},
        {"key": "weekly", "event": "lesson", "amount": 7, "weekly_cap": 30},
        {"key": "both", "event": "quiz", "amount": 6, "daily_cap": 9, "weekly_cap": 20},
        {"key": "limited", "event": "quiz", "amount": 5, "total_limit": 3, "daily_cap": 8},
        {"key": "once", "event": "lesson", "amount": 50, "total_limit": 2},
    ],
    token_rules=[
        {"key": "g_day", "event": "quiz", "token": "gems", "amount": 3, "daily_cap": 5},
        {"key": "g_week", "event": "lesson", "token": "gems", "amount": 4, "weekly_cap": 9},
    ],
)


def _plan_source(rulebook: br.Rulebook, event_type: str) -> str:
    """The source of ``event_type``'s plan, as written (not compiled)."""
    return plans._Writer(rulebook, event_type).source()


def test_conditions_are_written_into_the_plan_reading_the_turn() -> None:
    rulebook = make_rulebook(
        coin_rules=[
            {"key": "c", "event": "lesson", "amount": "props.score * 10", "when": "coins < 50"}
        ],
        badges=[
            {"key": "b0"},
            {"key": "b", "when": 'skills.grammar.level >= 1 and "b0" not in badges'},
        ],
        skills=[{"key": "grammar", "max_value": 100, "points_per_level": 20, "max_level": 5}],
    )
    source = _plan_source(rulebook, "lesson")
    assert "props['score']" in source
    assert "turn.coins < 50" in source
    assert "_min(turn.skills.get('grammar', 0) //" in source
    assert "(ns)" not in source  # no expression goes through the namespace
    assert "open_namespace" not in source


@pytest.mark.parametrize(
    "when",
    ['event.type == "lesson"', "len(skills) == 0", "len(streaks) >= 1 and coins >= 0"],
)
def test_a_plan_builds_the_namespace_for_reads_only_it_holds(when: str) -> None:
    rulebook = make_rulebook(
        coin_rules=[{"key": "c", "event": "lesson", "amount": 2, "when": when}],
        streaks=[{"key": "daily", "events": ["lesson"], "period": "daily"}],
    )
    source = _plan_source(rulebook, "lesson")
    assert "turn.ns or turn.open_namespace(event, ctx)" in source
    state = br.new_buddy(rulebook, "u1")
    events = [
        {"type": "lesson", "user_id": "u1", "occurred_at": at(days=d)} for d in (0, 0.2, 1, 3)
    ]
    outs = _planned_and_interpreted(rulebook, state, events)
    assert sum(o.effects.coins for o in outs) == 8


def test_an_unpickled_rulebook_plans_the_same(tmp_path: Path) -> None:
    # Unpickled expressions are recompiled without the rulebook's symbols, so skill_level()
    # and streak() become helper calls; plans write those out too.
    import pickle

    rulebook = make_rulebook(
        coin_rules=[
            {"key": "c", "event": "lesson", "amount": 3, "when": 'streak("daily") >= 2'},
            {"key": "d", "event": "lesson", "amount": 1, "when": 'skill_level("grammar") >= 1'},
        ],
        skill_rules=[{"event": "lesson", "skill": "grammar", "amount": 30}],
        skills=[{"key": "grammar", "max_value": 100, "points_per_level": 20, "max_level": 5}],
        streaks=[{"key": "daily", "events": ["lesson"], "period": "daily"}],
    )
    copy = pickle.loads(pickle.dumps(rulebook))
    assert "_streak_of(turn.streaks, 'daily').count" in _plan_source(copy, "lesson")
    events = [
        {"type": "lesson", "user_id": "u1", "occurred_at": at(days=d)} for d in (0, 1, 2, 2.5)
    ]
    a = _planned_and_interpreted(copy, br.new_buddy(copy, "u1"), events)
    b = _planned_and_interpreted(rulebook, br.new_buddy(rulebook, "u1"), events)
    assert [o.effects.to_wire() for o in a] == [o.effects.to_wire() for o in b]
    assert a[-1].state.coins == b[-1].state.coins > 0


def test_a_plan_keeps_the_names_inlined_expressions_call() -> None:
    # Inlined conditions call HELPERS by name (_min, _streak, _reason...); a plan's own
    # globals must not rebind any of them to something else.
    from buddyrules.conditions._compiler import HELPERS

    rulebook = make_rulebook(coin_rules=[{"key": "c", "event": "lesson", "amount": 1}])
    writer = plans._Writer(rulebook, "lesson")
    writer.source()
    for name, helper in HELPERS.items():
        assert writer.globals[name] is helper, name
