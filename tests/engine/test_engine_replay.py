"""A replay on one working copy gives what a chain of ``evaluate`` calls gives, event by event.

:class:`~buddyrules.engine.replay.BuddyReplay` (used by ``simulate``) applies a buddy's
events to a single turn instead of building a new state per event. Each event's changes,
the grants it records for per-rule statistics and the final state must equal the chain's.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given

import buddyrules as br
from buddyrules import BuddyState
from buddyrules.engine.replay import BuddyReplay
from buddyrules.engine.turn import Turn, ledger_entry, notification
from buddyrules.errors import ValidationFailed
from buddyrules.events import Event
from buddyrules.simulate._rulestats import recorded_grants

from .helpers import at, make_rulebook
from .strategies import History, histories


def _changes(turn: Turn) -> dict[str, Any]:
    return {
        "coins": turn.coins_credited,
        "badges_awarded": tuple(turn.awarded_now),
        "badges_ready": tuple(turn.ready_now),
        "tokens": tuple(f"{k}:{v}" for k, v in turn.token_credits.items()),
        "evolution_ready": turn.evolution_ready,
        "streak_milestones": tuple(turn.milestones),
        "skills": tuple(turn.skill_changes.values()),
        "streaks": tuple(turn.streak_changes),
        "evolved_to": turn.evolved_to,
        "paths": tuple(turn.path_changes),
        "problems": tuple(turn.problems),
        # A turn writes rows; the outcome presents them as records.
        "ledger": tuple(map(ledger_entry, turn.ledger)),
        "notifications": None
        if turn.notifications is None
        else tuple(map(notification, turn.notifications)),
    }


def _expected(out: br.Outcome) -> dict[str, Any]:
    e = out.effects
    return {
        "coins": e.coins,
        "badges_awarded": e.badges_awarded,
        "badges_ready": e.badges_ready,
        "tokens": e.tokens,
        "evolution_ready": e.evolution_ready,
        "streak_milestones": e.streak_milestones,
        "skills": e.skills,
        "streaks": e.streaks,
        "evolved_to": e.evolved_to,
        "paths": e.paths,
        "problems": e.problems,
        "ledger": out.ledger,
        "notifications": out.notifications,
    }


@given(histories)
def test_a_replay_equals_a_chain_of_evaluate_calls(history: History) -> None:
    rulebook = history.rulebook
    events = [Event.coerce(s.event) for s in history.steps if s.event is not None]
    start = history.hatch()
    replay = BuddyReplay(rulebook, start, record_grants=True)
    quiet = BuddyReplay(rulebook, start, notifications=False)
    state = start
    for event in events:
        out = br.evaluate(rulebook, state, event)
        traced = br.evaluate(rulebook, state, event, explain=True)
        turn = replay.apply(event)
        assert _changes(turn) == _expected(out)
        assert turn.grants == recorded_grants(traced.trace or ())
        silent = quiet.apply(event)
        assert silent.notifications is None and silent.grants is None
        assert {**_changes(silent), "notifications": out.notifications} == _expected(out)
        state = out.state
    assert replay.state().model_dump_json() == state.model_dump_json()
    assert replay.state() == state
    assert quiet.state().model_dump_json() == state.model_dump_json()


def test_the_state_can_be_read_between_events_without_disturbing_the_replay() -> None:
    rulebook = make_rulebook(
        tokens=[{"key": "gems", "kind": "primary"}],
        coin_rules=[{"key": "c", "event": "lesson", "amount": 3, "daily_cap": 5}],
        token_rules=[{"event": "quiz", "token": "gems", "amount": 2}],
    )
    start = br.new_buddy(rulebook, "u1")
    replay = BuddyReplay(rulebook, start)
    assert replay.state() is start
    state = start
    for n, type_ in enumerate(["lesson", "quiz", "lesson", "lesson", "quiz"]):
        event = Event.coerce({"type": type_, "user_id": "u1", "occurred_at": at(hours=n)})
        replay.apply(event)
        state = br.evaluate(rulebook, state, event).state
        middle = replay.state()
        assert middle == state
    assert middle.coins == 5 and middle.tokens == {"gems": 4}
    assert start.coins == 0 and start.counters == {}  # the input is never touched


def test_a_replay_checks_its_events_as_evaluate_does() -> None:
    rulebook = make_rulebook(coin_rules=[{"key": "c", "event": "lesson", "amount": 1}])
    replay = BuddyReplay(rulebook, br.new_buddy(rulebook, "u1"))
    with pytest.raises(ValidationFailed):
        replay.apply(Event.coerce({"type": "lesson", "user_id": "u2", "occurred_at": at()}))
    with pytest.raises(ValidationFailed):
        replay.apply(Event.coerce({"type": "lesson", "user_id": "u1"}))


def test_next_event_resets_exactly_the_per_event_fields() -> None:
    rulebook = make_rulebook(coin_rules=[{"key": "c", "event": "lesson", "amount": 1}])
    state: BuddyState = br.new_buddy(rulebook, "u1")
    fresh = Turn(rulebook, state)
    used = Turn(rulebook, state)
    for name in Turn.PER_EVENT:
        setattr(used, name, "changed")
    used.next_event()
    for name in Turn.PER_EVENT:
        assert getattr(used, name) == getattr(fresh, name), name
    # Everything else a turn holds is the buddy's working copy, or fixed for the turn.
    buddy = {
        "coins", "tokens", "skills", "badges", "ready", "counters", "streaks", "rule_usage",
        "paths", "gates", "decay_applied", "stage", "evolution_notified", "ns", "dirty",
        "grants", "rulebook", "base", "explain", "_decay_owned", "_paths_owned",
        "_skills_owned", "_streaks_owned", "_usage_owned",
    }  # fmt: skip
    assert set(Turn.__slots__) == buddy | set(Turn.PER_EVENT)


def test_a_replay_gives_conditions_the_event_time_when_the_rulebook_reads_it() -> None:
    rulebook = make_rulebook(
        coin_rules=[
            {
                "key": "late",
                "event": "lesson",
                "amount": 2,
                "when": 'event.occurred_at >= "2026-03-04"',
            },
            {"key": "typed", "event": "quiz", "amount": 1, "when": 'event.type == "quiz"'},
        ],
    )
    assert rulebook.reads_event_time
    start = br.new_buddy(rulebook, "u1")
    replay = BuddyReplay(rulebook, start)
    state = start
    earned = []
    for day, type_ in [(0, "lesson"), (1, "quiz"), (2, "lesson"), (3, "lesson"), (3, "quiz")]:
        event = Event.coerce({"type": type_, "user_id": "u1", "occurred_at": at(days=day)})
        out = br.evaluate(rulebook, state, event)
        assert _changes(replay.apply(event)) == _expected(out)
        earned.append(out.effects.coins)
        state = out.state
    assert earned == [0, 1, 2, 2, 1]
    assert replay.state() == state
