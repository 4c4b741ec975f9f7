"""Shared helpers for the CLI tests: a runner that keeps stdout and stderr apart, rulebooks."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from click.testing import CliRunner, Result

from buddyrules.cli import cli

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "rules_examples"
LANGUAGE = EXAMPLES / "language_learning" / "rulebook.yaml"
LANGUAGE_EVENTS = EXAMPLES / "language_learning" / "events.jsonl"


def runner() -> CliRunner:
    """A CliRunner whose result has separate ``stdout`` and ``stderr``."""
    try:
        return CliRunner(mix_stderr=False)  # type: ignore[call-arg]  # click < 8.2
    except TypeError:
        return CliRunner()  # click >= 8.2 keeps them apart (result.output has both)


def invoke(args: Sequence[str], input: str | bytes | None = None) -> Result:
    """Run ``buddyrules ARGS`` as a user would; never let an exception escape silently."""
    result = runner().invoke(cli, list(args), input=input, catch_exceptions=True)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"the CLI raised {result.exception!r}\n{result.stderr}")
    return result


def minimal_rulebook(**extra: Any) -> dict[str, Any]:
    """A small valid rulebook with one audience and ``auto_hatch: false``."""
    doc: dict[str, Any] = {
        "name": "mini",
        "timezone": "UTC",
        "audiences": ["student"],
        "event_types": {"student": ["lesson_completed", "quiz_passed"]},
        "auto_hatch": False,
        "tokens": [{"key": "xp", "kind": "progression"}],
        "coin_rules": [
            {"key": "lesson", "event": "lesson_completed", "amount": 10, "daily_cap": 15},
            {
                "key": "perfect",
                "event": "lesson_completed",
                "when": "props.score >= 0.9",
                "amount": 5,
            },
        ],
        "token_rules": [{"event": "quiz_passed", "token": "xp", "amount": 7}],
        "badges": [{"key": "first", "when": "event_count(lesson_completed) >= 1"}],
        "evolution": {
            "stages": [{"name": "Egg"}, {"name": "Chick", "when": "coins >= 20"}],
        },
    }
    doc.update(extra)
    return doc


def two_audiences() -> dict[str, Any]:
    """A rulebook with two audiences (events must name theirs)."""
    return minimal_rulebook(
        audiences=["student", "teacher"],
        event_types={"student": ["lesson_completed", "quiz_passed"], "teacher": ["class_taught"]},
        coin_rules=[
            {"key": "lesson", "event": "lesson_completed", "amount": 10},
            {"key": "taught", "event": "class_taught", "amount": 3, "audience": "teacher"},
        ],
    )


def write_rulebook(path: Path, doc: dict[str, Any]) -> Path:
    """Write ``doc`` as YAML (or JSON for a ``.json`` path) and return the path."""
    if path.suffix == ".json":
        path.write_text(json.dumps(doc), encoding="utf-8")
    else:
        path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return path


def event(user: str, type_: str, at: str | None = "2025-03-03T10:00:00Z", **fields: Any) -> str:
    """One JSON line."""
    data: dict[str, Any] = {"user_id": user, "type": type_, **fields}
    if at is not None:
        data["occurred_at"] = at
    return json.dumps(data)


def write_events(path: Path, lines: Sequence[str]) -> Path:
    """Write JSON lines."""
    path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
    return path


def json_lines(text: str) -> list[dict[str, Any]]:
    """Parse every non-empty line of ``text`` as JSON."""
    return [json.loads(line) for line in text.splitlines() if line.strip()]
