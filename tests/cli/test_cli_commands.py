"""`migrate`, the `simulate`/`check` glue, and the installed entry point."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import types
from importlib import metadata
from pathlib import Path
from typing import Any

import click
import pytest

from .helpers import LANGUAGE, LANGUAGE_EVENTS, ROOT, invoke


def test_migrate_sqlite_creates_the_schema(tmp_path: Path) -> None:
    db = tmp_path / "new.db"
    result = invoke(["migrate", "--db", str(db)])
    assert result.exit_code == 0, result.stderr
    assert "schema is up to date" in result.stdout
    tables = {
        row[0]
        for row in sqlite3.connect(db).execute("SELECT name FROM sqlite_master WHERE type='table'")
    }
    assert "schema_version" in tables
    again = invoke(["migrate", "--db", str(db)])
    assert again.exit_code == 0
    assert again.stdout == result.stdout


def test_migrate_needs_exactly_one_store(tmp_path: Path) -> None:
    assert invoke(["migrate"]).exit_code == 2
    both = invoke(["migrate", "--db", str(tmp_path / "x.db"), "--postgres", "postgresql://x"])
    assert both.exit_code == 2
    assert "exactly one" in both.stderr


@pytest.mark.skipif(
    not os.environ.get("BUDDYRULES_TEST_POSTGRES_DSN"),
    reason="BUDDYRULES_TEST_POSTGRES_DSN is not set",
)
def test_migrate_postgres() -> None:
    dsn = os.environ["BUDDYRULES_TEST_POSTGRES_DSN"]
    result = invoke(["migrate", "--postgres", dsn])
    assert result.exit_code == 0, result.stderr
    assert "PostgreSQL schema 'buddyrules': schema is up to date" in result.stdout
    assert dsn not in result.output  # a DSN may hold a password


def _fake_module(monkeypatch: pytest.MonkeyPatch, name: str, **attrs: Any) -> None:
    module = types.ModuleType(name)
    for key, value in attrs.items():
        setattr(module, key, value)
    monkeypatch.setitem(sys.modules, name, module)


def test_simulate_hands_its_arguments_to_the_simulate_command(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[tuple[str, ...]] = []

    @click.command("simulate")
    @click.argument("rest", nargs=-1, type=click.UNPROCESSED)
    @click.option("--baseline")
    def simulate_command(rest: tuple[str, ...], baseline: str | None) -> None:
        calls.append((str(baseline), *rest))
        raise SystemExit(3)

    _fake_module(monkeypatch, "buddyrules.simulate", simulate_command=simulate_command)
    result = invoke(["simulate", "--baseline", "a.yaml", "events.jsonl"])
    assert calls == [("a.yaml", "events.jsonl")]
    assert result.exit_code == 3


def test_simulate_the_language_example_against_itself() -> None:
    pytest.importorskip("buddyrules.simulate")
    args = ["--baseline", str(LANGUAGE), "--candidate", str(LANGUAGE), str(LANGUAGE_EVENTS)]
    result = invoke(["simulate", *args, "--workers", "1", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "No buddy's outcome changed." in result.stdout
    help_text = invoke(["simulate", "--help"])
    assert help_text.exit_code == 0
    assert "--baseline" in help_text.stdout


def test_check_the_language_example() -> None:
    pytest.importorskip("buddyrules.testing.check")
    result = invoke(["check", str(LANGUAGE), "--examples", "5", "--seed", "1"])
    assert result.exit_code == 0, result.output
    assert "all invariants hold" in result.stdout


def test_check_passes_paths_examples_and_seed(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[list[str], dict[str, Any]]] = []

    def cli_check(paths: list[str], **kwargs: Any) -> int:
        calls.append((paths, kwargs))
        return 0

    _fake_module(monkeypatch, "buddyrules.testing.check", cli_check=cli_check)
    result = invoke(["check", "a.yaml", "b.yaml", "--examples", "50", "--seed", "7"])
    assert result.exit_code == 0, result.stderr
    assert calls == [(["a.yaml", "b.yaml"], {"seed": 7, "examples": 50})]


def test_missing_glue_is_not_available_in_this_build(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_module(monkeypatch, "buddyrules.simulate")  # no simulate_command
    result = invoke(["simulate", "--baseline", "a.yaml"])
    assert result.exit_code == 2
    assert result.stderr.startswith("error: `buddyrules simulate` is not available in this build")
    monkeypatch.setitem(sys.modules, "buddyrules.testing.check", None)  # import fails
    result = invoke(["check", "a.yaml"])
    assert result.exit_code == 2
    assert result.stderr.startswith("error: `buddyrules check` is not available in this build")


def test_entry_point_is_declared() -> None:
    scripts = {ep.name: ep.value for ep in metadata.entry_points(group="console_scripts")}
    if "buddyrules" not in scripts:
        pytest.skip("buddyrules is not installed (running from src/)")
    assert scripts["buddyrules"] == "buddyrules.cli:main"


def test_a_real_process_runs_the_quickstart(tmp_path: Path) -> None:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), *filter(None, [env.get("PYTHONPATH")])])
    env.pop("BUDDYRULES_DEBUG", None)
    db = tmp_path / "buddies.db"
    command = [sys.executable, "-m", "buddyrules", "run", str(LANGUAGE), str(LANGUAGE_EVENTS)]
    proc = subprocess.run(
        [*command, "--db", str(db)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "buddies (" in proc.stdout
    assert "0 rejected" in proc.stdout
    assert db.exists()
    bad = subprocess.run(
        [sys.executable, "-m", "buddyrules", "run", str(LANGUAGE), str(tmp_path / "nope.jsonl")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert bad.returncode == 1
    assert bad.stderr.startswith("error[resource_not_found]: events file not found")
    assert "Traceback" not in bad.stderr
