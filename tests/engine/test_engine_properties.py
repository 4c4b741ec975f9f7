"""Property tests over generated histories (SPEC §3, §4 invariants).

Every history runs through ``evaluate`` (and ``advance`` for sweep steps); the invariants
are checked on every step. The ``ci`` Hypothesis profile (tests/conftest.py) fixes the
number of examples and makes runs reproducible.
"""

from __future__ import annotations

import json
from collections import defaultdict
from datetime import date, datetime
from typing import Any
from zoneinfo import ZoneInfo

from hypothesis import given
from hypothesis import strategies as st

import buddyrules as br
from buddyrules import BuddyState, Outcome

from .strategies import History, Step, histories, language_histories, small_histories


def run_step(rb: br.Rulebook, state: BuddyState, step: Step, explain: bool = False) -> Outcome:
    if step.event is not None:
        return br.evaluate(rb, state, step.event, explain=explain)
    return br.advance(rb, state, step.at)


def replay(
    history: History,
    state: BuddyState | None = None,
    steps: tuple[Step, ...] | None = None,
    explain: bool = False,
) -> tuple[BuddyState, list[Outcome]]:
    state = history.hatch() if state is None else state
    outcomes = []
    for step in history.steps if steps is None else steps:
        outcome = run_step(history.rulebook, state, step, explain)
        outcomes.append(outcome)
        state = outcome.state
    return state, outcomes


def wire(outcomes: list[Outcome]) -> list[str]:
    return [json.dumps(o.effects.to_wire(), sort_keys=False) for o in outcomes]


def local_day(history: History, at: datetime) -> date:
    tz = ZoneInfo(history.timezone or history.rulebook.timezone)
    return at.astimezone(tz).date()


def period_key(kind: str, day: date) -> tuple[int, ...]:
    if kind == "daily":
        return (day.toordinal(),)
    if kind == "weekly":
        iso = day.isocalendar()
        return (iso.year, iso.week)
    return (day.year, day.month)


@given(histories)
def test_same_inputs_give_byte_identical_outputs(history: History) -> None:
    explain = len(history.steps) % 2 == 0
    state_a, a = replay(history, explain=explain)
    state_b, b = replay(history, explain=explain)
    assert wire(a) == wire(b)
    assert state_a.model_dump_json() == state_b.model_dump_json()
    assert [o.ledger for o in a] == [o.ledger for o in b]
    assert [o.notifications for o in a] == [o.notifications for o in b]


@given(histories)
def test_explain_changes_nothing_but_the_trace(history: History) -> None:
    state_a, a = replay(history, explain=False)
    state_b, b = replay(history, explain=True)
    assert [o.effects.to_wire() for o in a] == [o.effects.to_wire(include_trace=False) for o in b]
    assert state_a == state_b
    for o in b:
        if o.trace is not None:
            json.dumps([dict(t) for t in o.trace])


@given(histories)
def test_the_input_state_is_never_mutated(history: History) -> None:
    state = history.hatch()
    for step in history.steps:
        before = state.model_dump_json()
        outcome = run_step(history.rulebook, state, step, explain=True)
        assert state.model_dump_json() == before
        state = outcome.state


@given(histories, st.data())
def test_split_and_resume_from_json_equals_running_whole(
    history: History, data: st.DataObject
) -> None:
    whole_state, whole = replay(history)
    cut = data.draw(st.integers(0, len(history.steps)), label="cut")
    first_state, first = replay(history, steps=history.steps[:cut])
    restored = BuddyState.model_validate_json(first_state.model_dump_json())
    assert restored == first_state
    final, second = replay(history, state=restored, steps=history.steps[cut:])
    assert final.model_dump_json() == whole_state.model_dump_json()
    assert wire(first + second) == wire(whole)


@given(histories)
def test_invariants_hold_on_every_step(history: History) -> None:
    rb = history.rulebook
    state = history.hatch()
    awarded: list[str] = []
    readied: list[str] = []
    activity: dict[str, set[tuple[int, ...]]] = defaultdict(set)
    daily: dict[tuple[str, date], int] = defaultdict(int)
    weekly: dict[tuple[str, tuple[int, ...]], int] = defaultdict(int)
    times: dict[str, int] = defaultdict(int)
    coin_rules = {r.key: r for r in rb.coin_rules}
    token_rules = {r.key: r for r in rb.token_rules}
    for step in history.steps:
        outcome = run_step(rb, state, step)
        new = outcome.state
        effects = outcome.effects
        # Balances never negative; skills within their range.
        assert new.coins >= 0
        assert all(v >= 0 for v in new.tokens.values()), new.tokens
        for key, value in new.skills.items():
            assert 0 <= value <= rb.skills[key].max_value
        for key in rb.tokens:
            limit = rb.tokens[key].max_balance
            if limit is not None:
                assert new.tokens.get(key, 0) <= max(limit, state.tokens.get(key, 0))
        # Coins in effects are what the ledger credited.
        assert effects.coins == sum(
            e.amount for e in outcome.ledger if e.currency == "coins" and e.amount > 0
        )
        # Each badge at most once, never revoked; ready at most once.
        awarded += effects.badges_awarded
        readied += effects.badges_ready
        assert len(awarded) == len(set(awarded))
        assert len(readied) == len(set(readied))
        assert set(state.badges) <= set(new.badges)
        assert len(new.badges) == len(set(new.badges))
        assert not set(new.badges) & set(new.badges_ready)
        # Stage within 1..len(stages), never backwards, at most one stage per step.
        assert 1 <= new.stage <= len(rb.stages)
        assert state.stage <= new.stage <= state.stage + 1
        if step.event is not None:
            day = local_day(history, step.at)
            # Streak count never above the number of distinct periods with activity.
            for streak in rb.streaks:
                if step.event["type"] in streak.events and (
                    streak.audience is None or streak.audience == history.audience
                ):
                    activity[streak.key].add(period_key(streak.period, day))
            # Caps and limits, recomputed per rule per local day and ISO week.
            for entry in outcome.ledger:
                if not entry.reason.startswith("rule:") or entry.amount <= 0:
                    continue
                key = entry.reason[5:]
                rule: Any = coin_rules.get(key) or token_rules.get(key)
                if rule is None:
                    continue
                daily[key, day] += entry.amount
                weekly[key, period_key("weekly", day)] += entry.amount
                times[key] += 1
                if rule.daily_cap is not None:
                    assert daily[key, day] <= rule.daily_cap
                if rule.weekly_cap is not None:
                    assert weekly[key, period_key("weekly", day)] <= rule.weekly_cap
                if getattr(rule, "total_limit", None) is not None:
                    assert times[key] <= rule.total_limit
        for key, streak_state in new.streaks.items():
            assert streak_state.count <= len(activity[key])
            assert streak_state.count <= streak_state.best <= len(activity[key])
            assert len(set(streak_state.milestones_paid)) == len(streak_state.milestones_paid)
        # debug_reason only when nothing visible changed.
        if step.event is not None and effects.debug_reason is not None:
            assert effects.debug_reason in ("no_matching_rules", "rewards_capped")
            assert effects.coins == 0 and effects.tokens == ()
            assert effects.badges_awarded == () and effects.badges_ready == ()
        state = new


@given(language_histories(max_steps=15))
def test_language_histories_only_pay_what_the_rules_say(history: History) -> None:
    # Coins only come from rules, streak ticks and milestones, badge rewards, path rewards.
    _, outcomes = replay(history)
    reasons = {e.reason.split(":")[0] for o in outcomes for e in o.ledger}
    assert reasons <= {"rule", "streak", "streak_milestone", "badge", "path", "streak_freeze"}


@given(small_histories(max_steps=12))
def test_advance_is_idempotent_at_every_point(history: History) -> None:
    rb = history.rulebook
    state = history.hatch()
    for step in history.steps:
        state = run_step(rb, state, step).state
        once = br.advance(rb, state, step.at)
        twice = br.advance(rb, once.state, step.at)
        assert twice.state.model_dump_json() == once.state.model_dump_json()
        assert twice.ledger == () and twice.notifications == ()


def _hand_written() -> Any:
    """The benchmark's hand-written language-learning rules: an independent implementation."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "engine.py"
    spec = importlib.util.spec_from_file_location("_engine_benchmark", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


HAND = _hand_written()


@given(language_histories())
def test_language_rulebook_agrees_with_the_hand_written_rules(history: History) -> None:
    # The hand-written rules work in UTC and know nothing of sweeps: compare on those steps.
    rb = history.rulebook
    state = br.new_buddy(rb, "u1")
    user = HAND.new_user()
    for step in history.steps:
        if step.event is None:
            continue
        event = br.Event.from_dict(step.event)
        outcome = br.evaluate(rb, state, event)
        effects, state = outcome.effects, outcome.state
        expected = HAND.handle(user, event)
        assert effects.coins == expected["coins"]
        assert list(effects.badges_awarded) == expected["badges_awarded"]
        assert list(effects.badges_ready) == expected["badges_ready"]
        assert list(effects.tokens) == expected["tokens"]
        assert effects.evolution_ready == expected["evolution_ready"]
        assert [dict(m) for m in effects.streak_milestones] == expected["streak_milestones"]
        assert state.coins == user["coins"]
        assert {k: state.tokens.get(k, 0) for k in user["tokens"]} == user["tokens"]
        assert {k: state.skills.get(k, 0) for k in user["skills"]} == user["skills"]
        assert list(state.badges) == user["badges"]
