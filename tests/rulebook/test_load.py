"""Loading rulebooks: formats, strictness, cross-references, the content hash."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

import buddyrules as br
from buddyrules.errors import ResourceNotFound, RulebookError


def minimal(**extra: Any) -> dict[str, Any]:
    """A small valid rulebook mapping, with overrides."""
    doc: dict[str, Any] = {
        "name": "mini",
        "audiences": ["student"],
        "event_types": {"student": ["lesson_completed", "quiz_passed"]},
        "tokens": [{"key": "gems", "kind": "primary"}, {"key": "xp", "kind": "progression"}],
        "skills": [{"key": "grammar", "max_value": 100, "points_per_level": 10, "max_level": 10}],
        "coin_rules": [{"key": "lesson", "event": "lesson_completed", "amount": 10}],
        "badges": [{"key": "first", "when": "event_count(lesson_completed) >= 1"}],
    }
    doc.update(extra)
    return doc


def problems_of(doc: dict[str, Any]) -> list[dict[str, Any]]:
    with pytest.raises(RulebookError) as info:
        br.load_rulebook(doc)
    assert info.value.code == "rulebook_invalid"
    assert info.value.status == 422
    return info.value.problems


def paths_of(doc: dict[str, Any]) -> set[str]:
    return {p["path"] for p in problems_of(doc)}


def test_language_example_loads(language_rulebook_path: Path) -> None:
    rb = br.load_rulebook(language_rulebook_path)
    assert rb.name == "language-learning"
    assert rb.audiences == ("student",)
    assert rb.default_audience == "student"
    assert rb.is_registered("student", "lesson_completed")
    assert not rb.is_registered("student", "nope")
    assert [s.name for s in rb.stages] == ["Hatchling", "Fledgling", "Juvenile"]
    assert len(rb.version) == 16


def test_same_content_same_version_whatever_the_format(
    tmp_path: Path, language_rulebook_path: Path
) -> None:
    data = yaml.safe_load(language_rulebook_path.read_text())
    as_json = tmp_path / "rb.json"
    # Reversed key order must not change the hash.
    as_json.write_text(json.dumps(dict(reversed(list(data.items())))))
    as_toml = tmp_path / "rb.toml"
    as_toml.write_text(_to_toml(data))
    assert tomllib.loads(as_toml.read_text())["name"] == "language-learning"
    versions = {
        br.load_rulebook(language_rulebook_path).version,
        br.load_rulebook(as_json).version,
        br.load_rulebook(as_toml).version,
        br.load_rulebook(data).version,
    }
    assert len(versions) == 1


def test_version_changes_with_content() -> None:
    a = br.load_rulebook(minimal())
    b = br.load_rulebook(
        minimal(coin_rules=[{"key": "lesson", "event": "lesson_completed", "amount": 11}])
    )
    assert a.version != b.version
    assert a == br.load_rulebook(minimal())
    assert hash(a) == hash(br.load_rulebook(minimal()))


def test_unknown_keys_are_errors_everywhere() -> None:
    doc = minimal(
        coin_rules=[{"key": "lesson", "event": "lesson_completed", "amount": 10, "ammount": 3}],
        badges=[{"key": "first", "when": "True", "reward": {"coins": 1, "gem": 2}}],
        colour="blue",
    )
    found = paths_of(doc)
    assert "coin_rules[0].ammount" in found
    assert "badges[0].reward.gem" in found
    assert "colour" in found


def test_every_cross_reference_is_checked_and_all_problems_listed() -> None:
    doc = minimal(
        coin_rules=[
            {"key": "a", "event": "lesson_completed", "amount": 1},
            {"key": "b", "event": "not_registered", "amount": 1},
            {"key": "c", "event": "lesson_completed", "amount": 1, "audience": "teacher"},
        ],
        skill_rules=[{"event": "lesson_completed", "skill": "nope", "amount": 1}],
        token_rules=[{"event": "quiz_passed", "token": "gemz", "amount": 1}],
        streaks=[{"key": "s", "events": ["lesson_completed", "bogus"], "freeze_token": "ice"}],
        badges=[
            {"key": "first", "when": "True", "requires": ["ghost"]},
            {"key": "second", "reward": {"tokens": {"rubies": 1}, "badge": "phantom"}},
        ],
        gates=[{"key": "g", "token": "xp", "cost": 5}],
        decay=[{"skill": "vocab", "amount": 1}],
    )
    found = paths_of(doc)
    assert {
        "coin_rules[1].event",
        "coin_rules[2].audience",
        "skill_rules[0].skill",
        "token_rules[0].token",
        "streaks[0].events[1]",
        "streaks[0].freeze_token",
        "badges[0].requires[0]",
        "badges[1].reward.tokens.rubies",
        "badges[1].reward.badge",
        "gates[0].token",
        "decay[0].skill",
    } <= found


def test_event_type_registered_for_the_rule_audience() -> None:
    doc = minimal(
        audiences=["student", "teacher"],
        event_types={"student": ["lesson_completed"], "teacher": ["class_taught"]},
        coin_rules=[{"event": "class_taught", "amount": 1, "audience": "student"}],
        badges=[],
    )
    problems = problems_of(doc)
    assert any(p["path"] == "coin_rules[0].event" and "student" in p["message"] for p in problems)


def test_gate_token_must_be_primary() -> None:
    problems = problems_of(minimal(gates=[{"key": "g", "token": "xp", "cost": 5}]))
    assert any("primary" in p["message"] for p in problems)


def test_badge_prerequisite_cycle() -> None:
    doc = minimal(
        badges=[
            {"key": "a", "when": "True", "requires": ["b"]},
            {"key": "b", "when": "True", "requires": ["c"]},
            {"key": "c", "when": "True", "requires": ["a"]},
        ]
    )
    problems = problems_of(doc)
    assert any("cycle" in p["message"] for p in problems)


@pytest.mark.parametrize("count", [0, 6])
def test_stage_count_is_one_to_five(count: int) -> None:
    stages = [{"name": "S1"}] + [{"name": f"S{i}", "when": "True"} for i in range(2, count + 1)]
    assert "evolution.stages" in paths_of(minimal(evolution={"stages": stages[:count]}))


def test_later_stages_need_a_when_and_the_first_takes_none() -> None:
    found = paths_of(minimal(evolution={"stages": [{"name": "A", "when": "True"}, {"name": "B"}]}))
    assert {"evolution.stages[0].when", "evolution.stages[1].when"} <= found


@pytest.mark.parametrize("cap", ["daily_cap", "weekly_cap", "total_limit"])
def test_caps_are_positive(cap: str) -> None:
    doc = minimal(coin_rules=[{"event": "lesson_completed", "amount": 1, cap: 0}])
    assert f"coin_rules[0].{cap}" in paths_of(doc)


def test_expression_errors_carry_path_and_column() -> None:
    doc = minimal(
        coin_rules=[
            {"event": "lesson_completed", "amount": 1},
            {"event": "lesson_completed", "amount": 1},
            {
                "event": "lesson_completed",
                "amount": 1,
                "when": "props.score >= 0.9 and tokens.gemz > 1",
            },
        ]
    )
    problems = problems_of(doc)
    [p] = [p for p in problems if p["path"] == "coin_rules[2].when"]
    assert "gemz" in p["message"]
    assert (
        p["column"] == "props.score >= 0.9 and tokens.gemz > 1".index("tokens") + 1
        or p["column"] == "props.score >= 0.9 and tokens.gemz > 1".index("gemz") + 1
    )


def test_amount_expression_problems_are_reported() -> None:
    doc = minimal(coin_rules=[{"event": "lesson_completed", "amount": "props.score * "}])
    assert "coin_rules[0].amount" in paths_of(doc)


def test_negative_literal_amount_is_an_error() -> None:
    assert "coin_rules[0].amount" in paths_of(
        minimal(coin_rules=[{"event": "lesson_completed", "amount": -5}])
    )


def test_unknown_timezone() -> None:
    assert "timezone" in paths_of(minimal(timezone="Mars/Olympus_Mons"))


def test_duplicate_keys() -> None:
    doc = minimal(badges=[{"key": "a", "when": "True"}, {"key": "a", "when": "False"}])
    assert "badges[1].key" in paths_of(doc)


def test_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ResourceNotFound):
        br.load_rulebook(tmp_path / "missing.yaml")
    bad = tmp_path / "rb.txt"
    bad.write_text("name: x")
    with pytest.raises(RulebookError, match="extension"):
        br.load_rulebook(bad)
    broken = tmp_path / "rb.yaml"
    broken.write_text("name: [unclosed\n")
    with pytest.raises(RulebookError) as info:
        br.load_rulebook(broken)
    assert info.value.problems[0]["line"] is not None
    not_mapping = tmp_path / "list.json"
    not_mapping.write_text("[1, 2]")
    with pytest.raises(RulebookError, match="mapping"):
        br.load_rulebook(not_mapping)


def test_rulebook_is_immutable_and_picklable() -> None:
    import pickle

    rb = br.load_rulebook(minimal())
    with pytest.raises(AttributeError):
        rb.version = "x"  # type: ignore[misc]
    again = pickle.loads(pickle.dumps(rb))
    assert again.version == rb.version
    assert again.to_dict() == rb.to_dict()


def test_json_schema_describes_the_format() -> None:
    schema = br.rulebook_json_schema()
    assert schema["type"] == "object"
    props = schema["properties"]
    for section in ("audiences", "event_types", "coin_rules", "badges", "evolution", "paths"):
        assert section in props
    assert schema.get("additionalProperties") is False
    json.dumps(schema)


def test_lint_findings() -> None:
    rb = br.load_rulebook(
        minimal(
            coin_rules=[{"event": "lesson_completed", "amount": 10, "daily_cap": 5}],
            badges=[{"key": "orphan"}],
        )
    )
    findings = br.lint_rulebook(rb)
    messages = " | ".join(str(f) for f in findings)
    assert "below one reward" in messages
    assert "only an admin" in messages
    assert all(f.severity == "warning" for f in findings)


def _to_toml(data: Any) -> str:
    """A tiny TOML writer for the test (inline tables and arrays only)."""

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int | float):
            return repr(v)
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{" + ", ".join(f"{json.dumps(k)} = {value(x)}" for k, x in v.items()) + "}"
        raise TypeError(type(v))

    return "\n".join(f"{k} = {value(v)}" for k, v in data.items()) + "\n"


def test_shape_and_expression_problems_are_reported_together() -> None:
    doc = minimal(
        coin_rules=[
            {"event": "lesson_completed", "amount": 1, "daily_cap": 0},
            {"event": "lesson_completed", "amount": 1, "when": "tokens.gemz > 1"},
        ],
        paths=[
            {
                "key": "p",
                "steps": [{"key": "s", "unlock_condition": "has_badge('ghost')", "colour": 1}],
            }
        ],
    )
    found = {p["path"]: p for p in problems_of(doc)}
    assert "coin_rules[0].daily_cap" in found  # a shape problem
    assert "paths[0].steps[0].colour" in found  # another one
    assert "gemz" in found["coin_rules[1].when"]["message"]  # and the expressions too
    assert found["coin_rules[1].when"]["column"] is not None
    assert "ghost" in found["paths[0].steps[0].unlock_condition"]["message"]


def test_rule_keys_are_unique_across_rule_sections() -> None:
    doc = minimal(
        coin_rules=[{"key": "bonus", "event": "lesson_completed", "amount": 1, "daily_cap": 5}],
        token_rules=[{"key": "bonus", "event": "lesson_completed", "token": "gems", "amount": 1}],
    )
    problems = problems_of(doc)
    [p] = [p for p in problems if p["path"] == "token_rules[0].key"]
    assert "coin_rules" in p["message"]
