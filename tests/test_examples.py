"""The example rulebooks load, lint clean, and their event logs exercise them.

Each example ships a ``rulebook.yaml`` and an ``events.jsonl`` made by
``scripts/make_example_events.py``. Replaying a log through the pure engine must raise nothing,
hit no evaluation problem (the generator only sends properties the rules read) and actually use
the example's mechanics: coins, badges (auto and manual), streak milestones, burns and freezes,
caps and limits that clip, evolution. A rulebook edit that silently stops a mechanic from firing
fails here.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import sys
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import buddyrules as br

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "rules_examples"
NAMES = sorted(p.parent.name for p in EXAMPLES.glob("*/rulebook.yaml"))

# Trace reasons for a clipped grant start with one of these (SPEC §4 order of limits).
CLIP_KINDS = ("total limit", "daily cap", "weekly cap", "max_balance")


@dataclass(frozen=True)
class Expect:
    """What replaying an example's log must show (each item at least once)."""

    badges: frozenset[str]
    ready: frozenset[str]
    milestones: frozenset[tuple[str, int]]
    clipped: frozenset[tuple[str, str]]  # (rule key, one of CLIP_KINDS)
    burned: frozenset[str]
    frozen: frozenset[str] = frozenset()
    evolves: bool = False  # auto_evolve: some buddy reaches the last stage
    rewards_capped: bool = False  # some event's only grant was clipped to 0


EXPECT: dict[str, Expect] = {
    "language_learning": Expect(
        badges=frozenset({"first_lesson", "week_warrior", "polyglot", "quiz_whiz"}),
        ready=frozenset(),
        milestones=frozenset({("daily_lesson", 7), ("daily_lesson", 30)}),
        clipped=frozenset(
            {
                ("lesson_coins", "daily cap"),
                ("login_coins", "daily cap"),
                ("first_ten_lessons", "total limit"),
            }
        ),
        burned=frozenset({"daily_lesson"}),
        frozen=frozenset({"daily_lesson"}),
        rewards_capped=True,
    ),
    "fitness": Expect(
        badges=frozenset(
            {"first_sweat", "consistent", "endurance_engine", "iron_core", "all_rounder"}
            | {"red_zone", "step_master", "twenty_five_sessions"}
        ),
        ready=frozenset({"coach_pick"}),
        milestones=frozenset(
            {("weekly_active", 4), ("weekly_active", 8), ("step_days", 7), ("step_days", 21)}
        ),
        clipped=frozenset(
            {
                ("workout_minutes", "daily cap"),
                ("intensity_bonus", "daily cap"),
                ("daily_steps", "daily cap"),
                ("welcome_workouts", "total limit"),
                ("earn_rest_week", "max_balance"),
            }
        ),
        burned=frozenset({"weekly_active", "step_days"}),
        frozen=frozenset({"weekly_active"}),
        evolves=True,
    ),
    "shop_loyalty": Expect(
        badges=frozenset(
            {"first_order", "silver_member", "gold_member", "platinum_member", "critic"}
            | {"connector", "eco_champion", "loyal_regular", "big_spender"}
        ),
        ready=frozenset({"vip_concierge"}),
        milestones=frozenset(
            {("monthly_shopper", 2), ("monthly_shopper", 3), ("app_habit", 4), ("app_habit", 6)}
        ),
        clipped=frozenset(
            {
                ("purchase_points", "daily cap"),
                ("purchase_points", "weekly cap"),
                ("big_basket", "weekly cap"),
                ("referral_bonus", "total limit"),
                ("app_checkin", "daily cap"),
                ("referral_gems", "max_balance"),
            }
        ),
        burned=frozenset({"app_habit"}),
        evolves=True,
        rewards_capped=True,
    ),
    "classroom": Expect(
        badges=frozenset(
            {"first_steps", "quiz_ace", "helping_hand", "steady_scholar", "mathlete"}
            | {"renaissance", "first_plan", "reliable_reviewer", "feedback_champion"}
        ),
        ready=frozenset({"teacher_of_the_month"}),
        milestones=frozenset({("homework_weeks", 3), ("homework_weeks", 6), ("feedback_weeks", 4)}),
        clipped=frozenset(
            {
                ("on_time_submission", "daily cap"),
                ("quiz_score", "daily cap"),
                ("timely_feedback", "daily cap"),
            }
        ),
        burned=frozenset({"homework_weeks", "feedback_weeks"}),
        frozen=frozenset({"homework_weeks"}),
    ),
}


def read_events(name: str) -> list[dict[str, Any]]:
    """The raw lines of an example's events.jsonl, parsed as JSON objects."""
    lines = (EXAMPLES / name / "events.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


@dataclass
class Replay:
    """Everything replaying one example's log produced, totalled over all buddies."""

    rulebook: br.Rulebook
    states: dict[tuple[str, str], br.BuddyState] = field(default_factory=dict)
    last_at: datetime | None = None
    coins: int = 0
    coins_by_audience: Counter[str] = field(default_factory=Counter)
    tokens: Counter[str] = field(default_factory=Counter)
    badges: Counter[str] = field(default_factory=Counter)
    ready: Counter[str] = field(default_factory=Counter)
    milestones: Counter[tuple[str, int]] = field(default_factory=Counter)
    streak_changes: Counter[tuple[str, str]] = field(default_factory=Counter)
    clipped: Counter[tuple[str, str]] = field(default_factory=Counter)
    debug_reasons: Counter[str | None] = field(default_factory=Counter)
    problems: list[tuple[str, Any]] = field(default_factory=list)
    paths: Counter[tuple[str, str]] = field(default_factory=Counter)
    evolved_to: Counter[int] = field(default_factory=Counter)
    evolution_ready: int = 0


def _clip_kind(reason: str) -> str | None:
    return next((kind for kind in CLIP_KINDS if reason.startswith(kind)), None)


@functools.cache
def replay(name: str) -> Replay:
    """Replay an example's log through ``evaluate`` (with traces), one buddy per user+audience."""
    rulebook = br.load_rulebook(EXAMPLES / name / "rulebook.yaml")
    out = Replay(rulebook)
    for raw in read_events(name):
        event = br.Event.from_dict(raw)
        assert event.occurred_at is not None
        audience = event.audience or rulebook.default_audience
        assert audience is not None
        key = (event.user_id, audience)
        state = out.states.get(key)
        if state is None:
            state = br.new_buddy(rulebook, event.user_id, audience, hatched_at=event.occurred_at)
        outcome = br.evaluate(rulebook, state, event, explain=True)
        out.states[key] = outcome.state
        out.last_at = event.occurred_at
        fx = outcome.effects
        out.coins += fx.coins
        out.coins_by_audience[audience] += fx.coins
        out.tokens.update(fx.token_amounts())
        out.badges.update(fx.badges_awarded)
        out.ready.update(fx.badges_ready)
        out.milestones.update((m["streak"], m["count"]) for m in fx.streak_milestones)
        out.streak_changes.update((s["streak"], s["change"]) for s in fx.streaks)
        out.debug_reasons[fx.debug_reason] += 1
        out.problems.extend((raw["event_id"], p) for p in fx.problems)
        out.paths.update((p["path"], p["status"]) for p in fx.paths)
        if fx.evolved_to is not None:
            out.evolved_to[fx.evolved_to] += 1
        out.evolution_ready += fx.evolution_ready
        for entry in fx.trace or ():
            kind = _clip_kind(str(entry.get("reason") or ""))
            if kind is not None and entry["kind"] in ("coin_rule", "token_rule"):
                out.clipped[(entry["rule"], kind)] += 1
    return out


@functools.cache
def _load_generator() -> ModuleType:
    path = ROOT / "scripts" / "make_example_events.py"
    spec = importlib.util.spec_from_file_location("_make_example_events", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while being created
    spec.loader.exec_module(module)
    return module


# -- the files ----------------------------------------------------------------------------------


def test_every_example_is_covered() -> None:
    assert set(NAMES) == set(EXPECT)
    for name in NAMES:
        assert (EXAMPLES / name / "events.jsonl").is_file(), name


@pytest.mark.parametrize("name", NAMES)
def test_rulebook_loads_and_lints_without_errors(name: str) -> None:
    rulebook = br.load_rulebook(EXAMPLES / name / "rulebook.yaml")
    errors = [f for f in br.lint_rulebook(rulebook) if f.severity == "error"]
    assert errors == []
    # The header comment explains the app and its design choices.
    text = (EXAMPLES / name / "rulebook.yaml").read_text(encoding="utf-8")
    assert text.startswith("# ")


@pytest.mark.parametrize("name", NAMES)
def test_events_are_valid_registered_and_sorted(name: str) -> None:
    rulebook = br.load_rulebook(EXAMPLES / name / "rulebook.yaml")
    raws = read_events(name)
    assert 600 <= len(raws) <= 2000
    ids: set[str] = set()
    users: set[str] = set()
    times: list[datetime] = []
    for raw in raws:
        event = br.Event.from_dict(raw)
        assert event.event_id is not None and event.event_id not in ids
        ids.add(event.event_id)
        users.add(event.user_id)
        # `audience` is required exactly when the rulebook has several (SPEC §1).
        assert ("audience" in raw) == (len(rulebook.audiences) > 1), raw
        audience = event.audience or rulebook.default_audience
        assert audience is not None
        assert rulebook.is_registered(audience, event.type), raw
        assert event.occurred_at is not None
        times.append(event.occurred_at)
    assert times == sorted(times)
    assert 30 <= len(users) <= 60
    assert timedelta(weeks=4) <= times[-1] - times[0] <= timedelta(weeks=8, days=1)


@pytest.mark.parametrize("name", NAMES)
def test_events_are_what_the_generator_makes(name: str) -> None:
    generator = _load_generator()
    text = (EXAMPLES / name / "events.jsonl").read_text(encoding="utf-8")
    assert generator.render(name) == text, "run: python scripts/make_example_events.py"


# -- replaying the logs -----------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_replay_exercises_the_rulebook(name: str) -> None:
    r = replay(name)
    expect = EXPECT[name]
    # The generator sends every property the rules read, with the right types.
    assert r.problems == []
    assert r.coins >= 10 * len(r.states)
    assert sum(r.tokens.values()) > 0
    assert expect.badges <= set(r.badges), expect.badges - set(r.badges)
    assert expect.ready <= set(r.ready), expect.ready - set(r.ready)
    assert expect.milestones <= set(r.milestones), expect.milestones - set(r.milestones)
    assert expect.clipped <= set(r.clipped), expect.clipped - set(r.clipped)
    burned = {streak for streak, change in r.streak_changes if change == "burned"}
    assert expect.burned <= burned
    frozen = {streak for streak, change in r.streak_changes if change == "frozen"}
    assert expect.frozen <= frozen
    if expect.rewards_capped:
        assert r.debug_reasons["rewards_capped"] > 0
    # Not everyone gets everything: a badge everyone earns at once teaches nothing.
    hard = [b.key for b in r.rulebook.badges if b.when is not None and b.mode == "auto"]
    assert any(r.badges[key] < len(r.states) // 2 for key in hard)
    if expect.evolves:
        assert r.evolved_to[len(r.rulebook.stages)] > 0
    else:
        assert r.evolution_ready > 0


@pytest.mark.parametrize("name", NAMES)
def test_replayed_states_are_consistent(name: str) -> None:
    r = replay(name)
    for (user, audience), state in r.states.items():
        assert state.user_id == user and state.audience == audience
        assert state.coins >= 0 and all(v >= 0 for v in state.tokens.values())
        assert len(set(state.badges)) == len(state.badges)
        for key, token in r.rulebook.tokens.items():
            if token.max_balance is not None:
                assert state.token(key) <= token.max_balance
        for key, skill in r.rulebook.skills.items():
            assert 0 <= state.skill_value(key) <= skill.max_value
        for badge in state.badges:
            spec = r.rulebook.badges_by_key[badge]
            assert spec.audience in (None, audience)
            assert set(spec.requires) <= set(state.badges)


def test_classroom_audiences_stay_apart() -> None:
    r = replay("classroom")
    assert r.coins_by_audience["student"] > 0 and r.coins_by_audience["teacher"] > 0
    # The trainee has one buddy per audience, each with its own progress.
    student, teacher = r.states[("trainee_01", "student")], r.states[("trainee_01", "teacher")]
    assert student.counters.keys().isdisjoint(teacher.counters.keys())
    teacher_badges = {b.key for b in r.rulebook.badges if b.audience == "teacher"}
    student_badges = {b.key for b in r.rulebook.badges if b.audience == "student"}
    for (_, audience), state in r.states.items():
        other = teacher_badges if audience == "student" else student_badges
        assert other.isdisjoint(state.badges) and other.isdisjoint(state.badges_ready)
        own_path = "fractions_unit" if audience == "student" else "teacher_onboarding"
        assert set(state.paths) <= {own_path}
    # Paths advance, but the steps gated by a hand-ticked sub-step wait for the teacher.
    assert r.paths[("fractions_unit", "completed")] > 0
    assert r.paths[("teacher_onboarding", "completed")] > 0
    for state in r.states.values():
        path = state.paths.get("fractions_unit")
        if path is not None:
            assert "mastery" not in path.completed


def test_fitness_sweep_decays_skills_and_burns_weekly_streaks() -> None:
    r = replay("fitness")
    assert r.last_at is not None
    later = r.last_at + timedelta(weeks=4)
    decayed = 0
    for state in r.states.values():
        swept = br.advance(r.rulebook, state, later)
        for rule in r.rulebook.decay:
            skill = r.rulebook.skills[rule.skill]
            before, after = state.skill_value(rule.skill), swept.state.skill_value(rule.skill)
            assert after <= before
            if after < before:
                decayed += 1
                assert after >= rule.floor
                assert rule.apply_only_above is not None
                assert skill.level_of(before) > rule.apply_only_above
        assert swept.state.skill_value("mobility") == state.skill_value("mobility")
        # Four idle weeks outnumber the two rest-week passes anyone can hold.
        assert swept.state.streak_count("weekly_active") == 0
        # Sweeping again at the same instant changes nothing.
        again = br.advance(r.rulebook, swept.state, later)
        assert again.state == swept.state
    assert decayed > 0
