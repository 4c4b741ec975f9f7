"""Rulebooks for the tests: a small reference one (SPEC §9 in miniature) and deliberately
flawed ones, each hiding one mistake that ``check_rulebook`` must find."""

from __future__ import annotations

import copy
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import yaml

from buddyrules.testing.invariants import Step

PLUGIN_MODULE = "buddyrules.testing.pytest_plugin"
#: Whether an installed distribution registers the plugin as a ``pytest11`` entry point.
PLUGIN_REGISTERED = any(ep.value == PLUGIN_MODULE for ep in entry_points(group="pytest11"))

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_PATHS = sorted((ROOT / "rules_examples").glob("*/rulebook.yaml"))

#: SPEC §9 in miniature: what the invariant tests tamper with (kept here, not read from
#: rules_examples/, so that editing an example cannot break them).
REFERENCE: dict[str, Any] = {
    "name": "reference",
    "timezone": "UTC",
    "audiences": ["student"],
    "event_types": {"student": ["lesson_completed", "quiz_passed", "daily_login"]},
    "tokens": [
        {"key": "xp", "kind": "progression"},
        {"key": "freeze", "kind": "primary", "max_balance": 5},
    ],
    "coin_rules": [
        {"key": "lesson_coins", "event": "lesson_completed", "amount": 10, "daily_cap": 50},
        {
            "key": "perfect_score",
            "event": "lesson_completed",
            "when": "props.score >= 0.9",
            "amount": 5,
        },
        {"key": "first_ten_lessons", "event": "lesson_completed", "amount": 20, "total_limit": 10},
        {"key": "quiz_coins", "event": "quiz_passed", "amount": "round(props.score * 10)"},
    ],
    "skills": [{"key": "speaking", "max_value": 100, "points_per_level": 20, "max_level": 5}],
    "skill_rules": [
        {
            "event": "lesson_completed",
            "when": 'props.difficulty == "speaking"',
            "skill": "speaking",
            "amount": 5,
        },
        {
            "event": "lesson_completed",
            "when": 'props.difficulty == "grammar"',
            "skill": "speaking",
            "amount": 1,
        },
    ],
    "token_rules": [{"event": "lesson_completed", "token": "xp", "amount": 25}],
    "streaks": [
        {
            "key": "daily_lesson",
            "events": ["lesson_completed"],
            "period": "daily",
            "freeze_token": "freeze",
            "milestones": [{"count": 7, "reward": {"coins": 50, "badge": "week_warrior"}}],
        }
    ],
    "badges": [
        {"key": "first_lesson", "when": "event_count(lesson_completed) >= 1"},
        {"key": "week_warrior", "reward": {"coins": 50}},
        {"key": "scholar", "mode": "manual", "when": "event_count(lesson_completed) >= 100"},
    ],
    "evolution": {
        "stages": [
            {"name": "Hatchling"},
            {"name": "Fledgling", "when": 'tokens.xp >= 500 and has_badge("week_warrior")'},
        ]
    },
}

#: Two audiences: events must name theirs, and each audience registers its own types.
TWO_AUDIENCES: dict[str, Any] = {
    "name": "two-audiences",
    "timezone": "Europe/London",
    "audiences": ["student", "teacher"],
    "event_types": {"student": ["lesson_completed", "quiz_passed"], "teacher": ["lesson_prepared"]},
    "coin_rules": [
        {"key": "lesson", "audience": "student", "event": "lesson_completed", "amount": 10},
        {"key": "prep", "audience": "teacher", "event": "lesson_prepared", "amount": 5},
    ],
}

_BASE: dict[str, Any] = {
    "name": "flawed",
    "timezone": "Europe/Berlin",
    "audiences": ["shopper"],
    "event_types": {"shopper": ["purchase", "review", "login"]},
}


def _doc(name: str, **sections: Any) -> dict[str, Any]:
    doc = copy.deepcopy(_BASE)
    doc["name"] = name
    doc.update(copy.deepcopy(sections))
    return doc


#: Three coin rules on the same event, each capped at 110 a day: 150 coins per purchase
#: until the caps bite, so three purchases on one day pay 330 (> 300).
STACKING = _doc(
    "stacking",
    coin_rules=[
        {"key": "base_points", "event": "purchase", "amount": 50, "daily_cap": 110},
        {"key": "loyalty_points", "event": "purchase", "amount": 50, "daily_cap": 110},
        {"key": "weekend_points", "event": "purchase", "amount": 50, "daily_cap": 110},
        {"key": "login_bonus", "event": "login", "amount": 5, "daily_cap": 5},
    ],
)

#: A badge whose condition can never hold, and an evolution stage that needs it.
UNREACHABLE = _doc(
    "unreachable",
    coin_rules=[{"key": "points", "event": "purchase", "amount": 10}],
    badges=[
        {"key": "first_purchase", "when": "event_count(purchase) >= 1"},
        {"key": "paradox", "when": "props.rating > 5 and props.rating < 1"},
    ],
    evolution={
        "stages": [
            {"name": "Egg"},
            {"name": "Chick", "when": "coins >= 10"},
            {"name": "Phoenix", "when": 'has_badge("paradox")'},
        ]
    },
)

#: Amount expressions that go negative (a rating below 3) or fail (division by zero when a
#: review has no words).
BAD_AMOUNTS = _doc(
    "bad-amounts",
    coin_rules=[
        {"key": "purchase_points", "event": "purchase", "amount": 10},
        {"key": "rating_bonus", "event": "review", "amount": "(props.rating - 3) * 5"},
        {"key": "photo_ratio", "event": "review", "amount": "100 // props.words"},
    ],
)

#: A streak milestone pays a badge that is meant to be awarded by staff only.
MANUAL_BY_REWARD = _doc(
    "manual-by-reward",
    streaks=[
        {
            "key": "daily_login",
            "events": ["login"],
            "period": "daily",
            "milestones": [{"count": 3, "reward": {"coins": 10, "badge": "staff_pick"}}],
        }
    ],
    badges=[{"key": "staff_pick", "mode": "manual", "when": "coins >= 1000"}],
)


def at_most_300_coins_a_day(step: Step) -> None:
    """The user invariant of the brief: no buddy earns more than 300 coins in one day."""
    today = step.local_date()
    earned = sum(s.effects.coins for s in step.buddy_steps if step.local_date(s.event) == today)
    assert earned <= 300, f"{step.user_id} earned {earned} coins on {today} (limit 300)"


def write_yaml(path: Path, doc: dict[str, Any]) -> Path:
    """Write a rulebook mapping as YAML and return the path."""
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return path
