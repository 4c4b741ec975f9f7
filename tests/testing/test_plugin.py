"""The pytest plugin: the ``buddyrules_check`` fixture and ``--buddyrules`` collection."""

from __future__ import annotations

from pathlib import Path

import pytest

from .rulebooks import (
    BAD_AMOUNTS,
    PLUGIN_MODULE,
    PLUGIN_REGISTERED,
    REFERENCE,
    STACKING,
    write_yaml,
)

# Inner runs load the plugin with -p unless its entry point is installed.
PLUGIN = ("-p", "no:cacheprovider", *(() if PLUGIN_REGISTERED else ("-p", PLUGIN_MODULE)))
FEW = ("--buddyrules-examples", "8")


def _good_rulebook(directory: Path, name: str = "good.yaml") -> Path:
    return write_yaml(directory / name, REFERENCE)


def test_the_fixture_checks_a_rulebook_file(pytester: pytest.Pytester) -> None:
    rules = pytester.mkdir("rules")
    _good_rulebook(rules, "my_app.yaml")
    pytester.makepyfile(
        test_rules="""
        def test_my_rules(buddyrules_check):
            report = buddyrules_check("rules/my_app.yaml")
            assert report.histories >= 1
            assert "caps_respected" in report.invariants
        """
    )
    result = pytester.runpytest(*PLUGIN, *FEW, "-rA")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*all invariants hold over * histories*"])


def test_the_fixture_fails_with_the_shrunk_history(pytester: pytest.Pytester) -> None:
    write_yaml(pytester.path / "stacking.yaml", STACKING)
    pytester.makepyfile(
        test_rules="""
        def at_most_300_coins_a_day(step):
            today = step.local_date()
            earned = sum(s.effects.coins for s in step.buddy_steps if s.day == today)
            assert earned <= 300, f"{earned} coins on {today}"

        def test_daily_budget(buddyrules_check):
            buddyrules_check("stacking.yaml", invariants=[at_most_300_coins_a_day],
                             max_examples=40)
        """
    )
    result = pytester.runpytest(*PLUGIN)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*breaks invariant `at_most_300_coins_a_day`*",
            "*Minimal failing history*",
            "*occurred_at*user*type*properties*effects*",
        ]
    )


def test_the_option_collects_one_item_per_rulebook(pytester: pytest.Pytester) -> None:
    rules = pytester.mkdir("rules")
    write_yaml(rules / "good.yaml", STACKING)  # no expressions: nothing can fail to evaluate
    write_yaml(rules / "amounts.yaml", BAD_AMOUNTS)
    result = pytester.runpytest(
        *PLUGIN,
        *FEW,
        "--buddyrules-fail-on-problems",
        "--buddyrules",
        "rules/good.yaml",
        "rules/amounts.yaml",
    )
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*breaks invariant `no_evaluation_problems`*",
            "*FAILED rules/amounts.yaml::buddyrules_check*",
        ]
    )


def test_the_option_expands_quoted_globs(pytester: pytest.Pytester) -> None:
    rules = pytester.mkdir("rules")
    _good_rulebook(rules, "a.yaml")
    _good_rulebook(rules, "b.yaml")
    result = pytester.runpytest(*PLUGIN, "--collect-only", "-q", "--buddyrules=rules/*.yaml")
    result.stdout.fnmatch_lines(
        ["rules/a.yaml::buddyrules_check", "rules/b.yaml::buddyrules_check", "2 tests collected*"]
    )


def test_rulebooks_are_collected_once_when_their_folder_is_collected_too(
    pytester: pytest.Pytester,
) -> None:
    _good_rulebook(pytester.path)
    result = pytester.runpytest(
        *PLUGIN, "--collect-only", "-q", str(pytester.path), "--buddyrules", "good.yaml"
    )
    result.stdout.fnmatch_lines(["good.yaml::buddyrules_check", "1 test collected*"])


def test_a_missing_rulebook_is_a_usage_error(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest(*PLUGIN, "--buddyrules", "nope.yaml")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*no such rulebook file*nope.yaml*"])


def test_an_invalid_rulebook_fails_its_item_with_the_problems(pytester: pytest.Pytester) -> None:
    (pytester.path / "broken.yaml").write_text(
        "name: broken\naudiences: [a]\nevent_types: {a: [x]}\n"
        "coin_rules: [{key: c, event: x, amount: 'props.n +'}]\n",
        encoding="utf-8",
    )
    result = pytester.runpytest(*PLUGIN, *FEW, "--buddyrules", "broken.yaml")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*cannot load rulebook*", "*coin_rules[[]0[]].amount*"])
