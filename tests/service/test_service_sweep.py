"""Engine.sweep: decay and streak burns, per buddy, idempotent per period."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from buddyrules import ValidationFailed

from .helpers import T0, Clock, engine_with, lesson


def test_sweep_applies_decay_once_per_period() -> None:
    clock = Clock()
    engine = engine_with(clock=clock)
    engine.hatch("alice")
    engine.admin.set_skill("alice", "pronunciation", 60)
    engine.outbox.ack([m.id for m in engine.outbox.pending()])

    summary = engine.sweep(T0 + timedelta(days=30))
    assert (summary.buddies, summary.changed) == (1, 1)
    value = engine.buddy("alice").skills["pronunciation"]
    assert value < 60
    decayed = [m for m in engine.outbox.pending() if m.type == "skill.decayed"]
    assert decayed and decayed[0].payload["value"] == value

    again = engine.sweep(T0 + timedelta(days=30, hours=1))
    assert again.changed == 0 and again.notifications == 0
    assert engine.buddy("alice").skills["pronunciation"] == value


def test_sweep_burns_lapsed_streaks_once() -> None:
    engine = engine_with(clock=Clock())
    engine.send(lesson("d1", occurred_at="2024-05-01T10:00:00Z"))
    engine.send(lesson("d2", occurred_at="2024-05-02T10:00:00Z"))
    assert engine.buddy("alice").streak_count("daily_lesson") == 2

    summary = engine.sweep(datetime.fromisoformat("2024-05-05T12:00:00+00:00"))
    assert summary.changed == 1 and summary.notifications == 1
    state = engine.buddy("alice")
    assert state.streak_count("daily_lesson") == 0
    assert state.streaks["daily_lesson"].best == 2
    burned = [m for m in engine.outbox.pending() if m.type == "streak.burned"]
    assert burned[0].payload == {"streak": "daily_lesson", "count_before": 2}
    assert engine.sweep(datetime.fromisoformat("2024-05-05T13:00:00+00:00")).changed == 0


def test_sweep_defaults_to_the_clock_and_visits_every_buddy() -> None:
    clock = Clock()
    engine = engine_with(clock=clock)
    for user in ("a", "b", "c"):
        engine.hatch(user)
    summary = engine.sweep()
    assert summary.at == T0 and summary.buddies == 3


def test_sweep_refuses_a_naive_time() -> None:
    engine = engine_with()
    with pytest.raises(ValidationFailed):
        engine.sweep(datetime(2024, 5, 1))
