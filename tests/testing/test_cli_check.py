"""``cli_check``: what ``buddyrules check RULES...`` prints and returns."""

from __future__ import annotations

from pathlib import Path

import pytest

from buddyrules.testing.check import cli_check

from .rulebooks import BAD_AMOUNTS, REFERENCE, STACKING, write_yaml


def test_a_sound_rulebook_exits_0(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_yaml(tmp_path / "reference.yaml", REFERENCE)
    assert cli_check([path], examples=10, seed=None) == 0
    out = capsys.readouterr().out
    assert f"{path}: rulebook 'reference'" in out
    assert "all invariants hold over 10 histories" in out


def test_a_broken_invariant_exits_1_with_the_counterexample(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # STACKING has no expressions, so nothing in it can fail to evaluate.
    good = write_yaml(tmp_path / "stacking.yaml", STACKING)
    bad = write_yaml(tmp_path / "amounts.yaml", BAD_AMOUNTS)
    # Without the flag an evaluation problem is reported, not failed.
    assert cli_check([bad], examples=20, seed=7) == 0
    capsys.readouterr()
    assert cli_check([good, bad], examples=20, seed=7, fail_on_problems=True) == 1
    out = capsys.readouterr().out
    assert "all invariants hold" in out  # the good one still reports
    assert f"{bad}: FAILED" in out
    assert "breaks invariant `no_evaluation_problems`" in out
    assert "occurred_at" in out and "->" in out
    assert "reproduce with seed=7" in out


def test_a_rulebook_that_does_not_load_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "missing.yaml"
    assert cli_check([missing], examples=5, seed=None) == 1
    assert "cannot load" in capsys.readouterr().out
