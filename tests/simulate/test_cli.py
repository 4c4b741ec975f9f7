"""The click command behind ``buddyrules simulate``."""

from __future__ import annotations

import json
from pathlib import Path

import click
import yaml
from click.testing import CliRunner

from buddyrules.simulate import cli_main, simulate_command

from .helpers import LANGUAGE, make_events, with_coin_amount


def _cli() -> click.Group:
    @click.group()
    def root() -> None:
        """A stand-in for the buddyrules CLI group."""

    root.add_command(simulate_command)
    return root


def _files(tmp_path: Path) -> tuple[Path, Path]:
    events = tmp_path / "events.jsonl"
    events.write_text(
        "".join(json.dumps(e) + "\n" for e in make_events(users=6, per_user=10)),
        encoding="utf-8",
    )
    candidate = tmp_path / "candidate.yaml"
    candidate.write_text(yaml.safe_dump(with_coin_amount("module_bonus", 150)), encoding="utf-8")
    return events, candidate


def test_simulate_command_prints_the_table_and_writes_reports(tmp_path: Path) -> None:
    events, candidate = _files(tmp_path)
    html, out = tmp_path / "r.html", tmp_path / "r.json"
    result = CliRunner().invoke(
        _cli(),
        ["simulate", "--baseline", str(LANGUAGE), "--candidate", str(candidate), str(events),
         "--html", str(html), "--json", str(out), "--workers", "2", "--top", "3"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "Top changes" in result.output and "Overview" in result.output
    assert "<svg" in html.read_text(encoding="utf-8")
    assert len(json.loads(out.read_text(encoding="utf-8"))["top_changes"]) == 3


def test_bad_line_exits_1_with_the_line_and_skip_goes_on(tmp_path: Path) -> None:
    events, _ = _files(tmp_path)
    with events.open("a", encoding="utf-8") as fh:
        fh.write("{oops\n")
    bad_line = len(events.read_text(encoding="utf-8").splitlines())
    args = ["simulate", "--baseline", str(LANGUAGE), str(events), "--no-progress"]
    result = CliRunner().invoke(_cli(), args)
    assert result.exit_code == 1
    assert f"line {bad_line}: invalid_json" in result.output
    result = CliRunner().invoke(_cli(), [*args, "--skip-bad-lines"])
    assert result.exit_code == 0, result.output
    assert "1 bad lines skipped" in result.output


def test_cli_main_returns_an_exit_code(tmp_path: Path, capsys: object) -> None:
    events, candidate = _files(tmp_path)
    assert cli_main(LANGUAGE, candidate, events, workers=1, progress=False) == 0
    assert cli_main(LANGUAGE, None, tmp_path / "missing.jsonl", progress=False) == 1
