"""`buddyrules validate` and `buddyrules schema`."""

from __future__ import annotations

import json
from pathlib import Path

import buddyrules as br

from .helpers import EXAMPLES, invoke, minimal_rulebook, write_rulebook


def test_examples_are_valid() -> None:
    paths = sorted(str(p) for p in EXAMPLES.glob("*/rulebook.yaml"))
    result = invoke(["validate", *paths])
    assert result.exit_code == 0, result.output
    for path in paths:
        assert f"{path}: ok:" in result.stdout
    assert f"{len(paths)} rulebooks: {len(paths)} valid, 0 invalid" in result.stdout


def test_every_problem_with_path_line_and_column(tmp_path: Path) -> None:
    doc = minimal_rulebook()
    doc["coin_rules"][1]["when"] = "props.score >= 0.9 and tokens.gemz > 1"
    doc["badges"].append({"key": "second", "when": 'has_badge("nope")'})
    rules = write_rulebook(tmp_path / "rb.yaml", doc)
    text = rules.read_text().splitlines()
    when_line = 1 + next(i for i, line in enumerate(text) if "tokens.gemz" in line)
    result = invoke(["validate", str(rules)])
    assert result.exit_code == 1
    out = result.stdout
    assert (
        f"{rules}:{when_line}: error: coin_rules[1].when (column 31): unknown token 'gemz'" in out
    )
    assert "badges[1].when (column 11): unknown badge 'nope'" in out
    # A caret under the column.
    lines = out.splitlines()
    at = next(i for i, line in enumerate(lines) if "unknown token 'gemz'" in line)
    assert lines[at + 1].strip() == "props.score >= 0.9 and tokens.gemz > 1"
    assert lines[at + 2].index("^") == lines[at + 1].index("gemz")
    assert f"{rules}: invalid (2 errors)" in out


def test_unknown_key_is_an_error_with_its_path(tmp_path: Path) -> None:
    doc = minimal_rulebook()
    doc["coin_rules"][0]["dialy_cap"] = 5
    rules = write_rulebook(tmp_path / "rb.json", doc)
    result = invoke(["validate", str(rules)])
    assert result.exit_code == 1
    assert "coin_rules[0].dialy_cap: unknown key (check for a typo)" in result.stdout


def test_expression_column_in_a_json_rulebook(tmp_path: Path) -> None:
    doc = minimal_rulebook()
    doc["coin_rules"][1]["when"] = "props.score >= scroe"
    rules = write_rulebook(tmp_path / "rb.json", doc)
    result = invoke(["validate", str(rules)])
    assert result.exit_code == 1
    assert f"{rules}: error: coin_rules[1].when (column 16):" in result.stdout


def test_yaml_syntax_error_names_line_and_column(tmp_path: Path) -> None:
    rules = tmp_path / "rb.yaml"
    rules.write_text("name: x\n  audiences: [\n", encoding="utf-8")
    result = invoke(["validate", str(rules)])
    assert result.exit_code == 1
    assert f"{rules}:2: error: column" in result.stdout
    assert "YAML syntax error" in result.stdout


def test_warnings_do_not_fail(tmp_path: Path) -> None:
    doc = minimal_rulebook()
    doc["coin_rules"][0]["daily_cap"] = 5  # below one reward of 10
    rules = write_rulebook(tmp_path / "rb.yaml", doc)
    result = invoke(["validate", str(rules)])
    assert result.exit_code == 0, result.output
    assert "warning: coin_rules[0].daily_cap: daily_cap 5 is below one reward of 10" in (
        result.stdout
    )
    assert "(0 errors, 1 warning)" in result.stdout


def test_lint_errors_fail(tmp_path: Path) -> None:
    doc = minimal_rulebook(
        audiences=["student", "teacher"],
        event_types={"student": ["lesson_completed", "quiz_passed"], "teacher": ["quiz_passed"]},
    )
    doc["badges"] = [
        {"key": "first", "audience": "student", "when": "coins > 1"},
        {"key": "mentor", "audience": "teacher", "when": "coins > 1", "requires": ["first"]},
    ]
    findings = br.lint_rulebook(br.load_rulebook(doc))
    assert any(f.severity == "error" for f in findings)
    rules = write_rulebook(tmp_path / "rb.yaml", doc)
    result = invoke(["validate", str(rules)])
    assert result.exit_code == 1
    assert "error: badges[1].requires:" in result.stdout
    assert f"{rules}: invalid:" in result.stdout


def test_missing_file_and_mixed_results(tmp_path: Path) -> None:
    good = write_rulebook(tmp_path / "rb.yaml", minimal_rulebook())
    result = invoke(["validate", str(good), str(tmp_path / "nope.yaml")])
    assert result.exit_code == 1
    assert "nope.yaml: error[resource_not_found]: rulebook file not found" in result.stderr
    assert "2 rulebooks: 1 valid, 1 invalid" in result.stdout


def test_unknown_extension(tmp_path: Path) -> None:
    rules = tmp_path / "rb.txt"
    rules.write_text("name: x\n", encoding="utf-8")
    result = invoke(["validate", str(rules)])
    assert result.exit_code == 1
    assert "unknown rulebook extension" in result.stdout


def test_validate_needs_a_file() -> None:
    result = invoke(["validate"])
    assert result.exit_code == 2


def test_schema_is_the_json_schema_of_the_format() -> None:
    result = invoke(["schema"])
    assert result.exit_code == 0
    schema = json.loads(result.stdout)
    assert schema == br.rulebook_json_schema()
    assert schema["$schema"].startswith("https://json-schema.org/")
    assert {"name", "audiences", "event_types", "coin_rules", "badges"} <= set(schema["properties"])
