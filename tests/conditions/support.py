"""Shared fixtures for the condition tests: declared symbols and a namespace builder."""

from __future__ import annotations

import copy
import math
from typing import Any

from buddyrules.conditions import EvalFailure, Symbols

SYMBOLS = Symbols(
    skills={"pronunciation", "grammar"},
    tokens={"xp", "gems"},
    streaks={"daily_lesson"},
    badges={"first_lesson", "week_warrior", "scholar"},
    event_types={"lesson_completed", "quiz_passed", "module_finished", "items", "get"},
)

_BASE_PROPS: dict[str, Any] = {
    "score": 0.92,
    "difficulty": "speaking",
    "name": "Ada",
    "nothing": None,
    "flag": True,
    "get": 7,
    "keys": "k",
    "items": [1, 2, 3],
    "format": "f",
    "my-key": "dashed",
    "lesson": {"level": "advanced", "minutes": 12},
    "which_badge": "first_lesson",
    "which_type": "lesson_completed",
}


def make_ns(props: dict[str, Any] | None = None, **overrides: Any) -> dict[str, Any]:
    """A realistic namespace as the engine builds it; ``props`` replaces the properties."""
    properties = copy.deepcopy(_BASE_PROPS) if props is None else props
    ns: dict[str, Any] = {
        "event": {
            "type": "lesson_completed",
            "audience": "student",
            "user_id": "user_42",
            "occurred_at": "2026-03-02T12:00:00Z",
            "properties": properties,
        },
        "props": properties,
        "coins": 120,
        "tokens": {"xp": 600, "gems": 3},
        "skills": {
            "pronunciation": {"value": 45, "level": 2},
            "grammar": {"value": 10, "level": 0},
        },
        "badges": frozenset({"first_lesson"}),
        "streaks": {"daily_lesson": {"count": 8, "best": 12}},
        "counters": {"lesson_completed": 12, "quiz_passed": 4, "items": 2},
        "stage": 2,
        "audience": "student",
    }
    ns.update(overrides)
    return ns


def same_value(left: Any, right: Any) -> bool:
    """Equal values of the same type, NaN equal to NaN and -0.0 distinct from 0.0."""
    if isinstance(left, EvalFailure) or isinstance(right, EvalFailure):
        return isinstance(left, EvalFailure) and isinstance(right, EvalFailure)
    if type(left) is not type(right):
        return False
    if isinstance(left, float):
        if math.isnan(left):
            return math.isnan(right)
        return left == right and math.copysign(1, left) == math.copysign(1, right)
    if isinstance(left, complex):
        return same_value(left.real, right.real) and same_value(left.imag, right.imag)
    if isinstance(left, list | tuple):
        return len(left) == len(right) and all(
            same_value(a, b) for a, b in zip(left, right, strict=True)
        )
    if isinstance(left, dict):
        return left.keys() == right.keys() and all(same_value(left[k], right[k]) for k in left)
    return bool(left == right)
