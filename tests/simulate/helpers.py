"""Shared data for the simulation tests: rulebooks and a deterministic event log."""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import buddyrules as br

ROOT = Path(__file__).resolve().parents[2]
LANGUAGE = ROOT / "rules_examples" / "language_learning" / "rulebook.yaml"


def language() -> br.Rulebook:
    """The language-learning example rulebook."""
    return br.load_rulebook(LANGUAGE)


def variant(**changes: Any) -> dict[str, Any]:
    """The language-learning rulebook as a mapping, renamed, with top-level sections replaced."""
    doc = language().to_dict()
    doc["name"] = "language-learning-candidate"
    doc.update(changes)
    return doc


def with_coin_amount(key: str, amount: int | str) -> dict[str, Any]:
    """The language-learning rulebook with one coin rule's amount changed."""
    doc = variant()
    for rule in doc["coin_rules"]:
        if rule["key"] == key:
            rule["amount"] = amount
    return doc


def tight_candidate() -> dict[str, Any]:
    """A candidate whose caps and maxima bite, with conditional and expression amounts.

    It exercises every way a grant can be clipped: daily and weekly caps on literal,
    conditional and expression amounts, a multiplier, a token ``max_balance`` and a skill's
    ``max_value``.
    """
    doc = variant()
    doc["coin_rules"] = [
        {"key": "lesson_coins", "event": "lesson_completed", "amount": 12, "daily_cap": 30},
        {
            "key": "perfect_score",
            "event": "lesson_completed",
            "when": "props.score >= 0.5",
            "amount": 7,
            "multiplier": [{"when": "streaks.daily_lesson.count >= 2", "factor": 1.5}],
            "daily_cap": 20,
        },
        {"key": "first_ten_lessons", "event": "lesson_completed", "amount": 20, "total_limit": 5},
        {
            "key": "quiz_coins",
            "event": "quiz_passed",
            "amount": "round(props.score * 10)",
            "weekly_cap": 25,
        },
        {
            "key": "quiz_bonus",
            "event": "quiz_passed",
            "when": "props.score >= 0.3",
            "amount": 4,
            "daily_cap": 4,
        },
        {"key": "login_coins", "event": "daily_login", "amount": 3, "daily_cap": 5},
        {
            "key": "module_bonus",
            "event": "module_finished",
            "amount": "50 + counters.module_finished",
        },
    ]
    doc["skill_rules"] = [
        {"event": "lesson_completed", "when": 'props.difficulty == "speaking"',
         "skill": "pronunciation", "amount": 9},
        {"event": "lesson_completed", "skill": "grammar", "amount": "round(props.score * 20)"},
        {"event": "quiz_passed", "skill": "grammar", "amount": 3},
    ]  # fmt: skip
    doc["token_rules"] = [
        {"event": "lesson_completed", "token": "xp", "amount": 25},
        {"event": "quiz_passed", "token": "gems", "amount": "round(props.score * 9)",
         "weekly_cap": 40},
        {"event": "module_finished", "token": "freeze", "amount": 2},
        {"event": "daily_login", "when": "props.streak_day >= 2", "token": "gems", "amount": 2,
         "daily_cap": 2},
    ]  # fmt: skip
    doc["tokens"] = [
        {"key": "gems", "kind": "primary", "max_balance": 60},
        {"key": "xp", "kind": "progression"},
        {"key": "freeze", "kind": "primary", "max_balance": 3},
    ]
    return doc


_TYPES = ["lesson_completed"] * 6 + ["quiz_passed"] * 2 + ["daily_login"] * 2 + ["module_finished"]


def make_events(
    users: int = 40, per_user: int = 40, *, seed: int = 7, days: int = 20
) -> list[dict[str, Any]]:
    """A deterministic, shuffled event log: bursts of lessons (caps bite), streaks, ties."""
    rnd = random.Random(seed)
    start = datetime(2024, 3, 1, 6, 0, tzinfo=UTC)
    out: list[dict[str, Any]] = []
    for u in range(users):
        user = f"user_{u:03d}"
        heavy = u % 5 == 0  # a few heavy users hit caps and maxima
        n = per_user * (3 if heavy else 1)
        for i in range(n):
            day = rnd.randrange(days)
            at = start + timedelta(days=day, minutes=rnd.randrange(0, 16 * 60))
            if i % 17 == 0 and out and out[-1]["user_id"] == user:
                at_text = out[-1]["occurred_at"]  # a tie in occurred_at: input order decides
            else:
                at_text = at.isoformat().replace("+00:00", "Z")
            kind = rnd.choice(_TYPES)
            props: dict[str, Any] = {}
            if kind == "lesson_completed":
                props = {
                    "score": round(rnd.random(), 2),
                    "difficulty": rnd.choice(["speaking", "grammar", "reading"]),
                }
            elif kind == "quiz_passed":
                props = {"score": round(rnd.random(), 2)}
            elif kind == "daily_login":
                props = {"streak_day": rnd.randrange(4)}
            out.append(
                {
                    "event_id": f"{user}-{i}",
                    "user_id": user,
                    "type": kind,
                    "properties": props,
                    "occurred_at": at_text,
                }
            )
    rnd.shuffle(out)
    return out


def replay_buddies(
    rulebook: br.Rulebook, events: Iterable[Mapping[str, Any]]
) -> dict[tuple[str, str], tuple[br.BuddyState, int]]:
    """Per (user, audience): the final state and coins earned, by calling ``evaluate``."""
    per_buddy: dict[tuple[str, str], list[tuple[datetime, int, br.Event]]] = {}
    for i, data in enumerate(events):
        event = br.Event.from_dict(data)
        assert event.occurred_at is not None
        audience = event.audience or rulebook.default_audience
        assert audience is not None
        per_buddy.setdefault((event.user_id, audience), []).append((event.occurred_at, i, event))
    out: dict[tuple[str, str], tuple[br.BuddyState, int]] = {}
    for (user, audience), items in per_buddy.items():
        items.sort(key=lambda t: (t[0], t[1]))
        state = br.new_buddy(rulebook, user, audience, hatched_at=items[0][0])
        earned = 0
        for _, _, event in items:
            outcome = br.evaluate(rulebook, state, event)
            earned += outcome.effects.coins
            state = outcome.state
        out[(user, audience)] = (state, earned)
    return out


def replay_by_hand(
    rulebook: br.Rulebook, events: Iterable[Mapping[str, Any]]
) -> dict[str, tuple[br.BuddyState, int]]:
    """Per user (one audience): the final state and the coins earned."""
    return {user: v for (user, _), v in replay_buddies(rulebook, events).items()}
