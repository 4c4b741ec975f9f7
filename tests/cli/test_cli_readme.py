"""The README stays true: its two quickstart commands, its code, its tables."""

from __future__ import annotations

import re
import shutil
import textwrap
from pathlib import Path
from typing import Any

import pytest

import buddyrules as br
from buddyrules.cli import cli
from buddyrules.errors import error_for_code

from .helpers import EXAMPLES, ROOT, invoke

README = (ROOT / "README.md").read_text(encoding="utf-8")


def _section(title: str) -> str:
    start = README.index(f"\n## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start : end if end != -1 else None]


def _blocks(text: str, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", text, re.S)


def test_quickstart_is_exactly_two_commands() -> None:
    commands = [b.strip() for b in _blocks(_section("Quickstart"), "sh")]
    assert commands == [
        "python -m pip install -e . && buddyrules run "
        "rules_examples/language_learning/rulebook.yaml "
        "rules_examples/language_learning/events.jsonl --db buddies.db",
        'python -m pip install -e ".[dev]" && python -m pytest',
    ]


def test_ci_runs_the_readme_test_command() -> None:
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert re.search(r'python -m pip install .*-e "\.\[dev\]"', ci)
    assert re.search(r"^python -m pytest\b", ci, re.M)


def test_the_quickstart_run_works(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = _blocks(_section("Quickstart"), "sh")[0].strip()
    run_args = first.split(" && buddyrules ", 1)[1].split()
    monkeypatch.chdir(ROOT)
    db = tmp_path / "buddies.db"
    run_args[run_args.index("--db") + 1] = str(db)
    result = invoke(run_args)
    assert result.exit_code == 0, result.stderr
    assert "0 rejected" in result.stdout
    assert db.exists()


def test_every_command_is_in_the_readme_table() -> None:
    for name in cli.commands:
        assert f"`buddyrules {name}" in README, name


def test_every_error_code_is_in_the_readme_table() -> None:
    table = _section("Tour")
    codes = set(re.findall(r"^\| `([a-z_]+)` \| (\d{3}) \|", table, re.M))
    for code, status in codes:
        assert error_for_code(code).status == int(status), code
    documented = {c for c, _ in codes}
    for cls in br.BuddyRulesError.__subclasses__():
        if cls.code != "internal_error":
            assert cls.code in documented, cls.code


def _in_example_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "rules_examples" / "language_learning"
    shutil.copytree(EXAMPLES / "language_learning", target)
    monkeypatch.chdir(tmp_path)


def test_readme_exports_what_the_examples_use() -> None:
    missing = [
        name
        for name in ("Engine", "SQLiteStore", "MemoryStore", "PostgresStore")
        if not hasattr(br, name)
    ]
    assert not missing, f"the README uses br.{', br.'.join(missing)}: export them from buddyrules"


def test_embedding_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _in_example_dir(tmp_path, monkeypatch)
    code = _blocks(_section("Tour"), "python")[0]
    namespace: dict[str, Any] = {}
    exec(compile(code, "README.md", "exec"), namespace)
    effects = namespace["effects"]
    # The comment next to the call in the README shows these values.
    assert (effects.coins, effects.badges_awarded, effects.tokens) == (
        40,
        ("first_lesson",),
        ("xp:25",),
    )
    assert namespace["engine"].buddy("user_42").coins == 10


def test_flask_example_maps_errors_to_status_and_envelope(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("flask")
    _in_example_dir(tmp_path, monkeypatch)
    code = _blocks(_section("Tour"), "python")[1]
    namespace: dict[str, Any] = {"__name__": "readme_flask_example"}
    exec(compile(code, "README.md", "exec"), namespace)
    client = namespace["app"].test_client()
    ok = client.post(
        "/events",
        json={"user_id": "ana", "type": "lesson_completed", "properties": {"score": 0.95}},
    )
    assert ok.status_code == 200
    assert ok.get_json()["badges_awarded"] == ["first_lesson"]
    bad = client.post("/events", json={"user_id": "ana", "type": "no_such_type"})
    assert bad.status_code == 400
    assert bad.get_json()["error"]["code"] == "event_type_not_registered"
    shape = client.post("/events", json={"user": "ana"})
    assert shape.status_code == 422
    assert set(shape.get_json()["error"]) == {"code", "message", "details"}
    assert client.get("/buddies/nobody").status_code == 404
    assert client.get("/buddies/ana").get_json()["user_id"] == "ana"
    too_many = client.post("/events/batch", json=[{"user_id": "a", "type": "quiz_passed"}] * 101)
    assert too_many.status_code == 400


def test_store_contract_example_compiles() -> None:
    code = textwrap.dedent(_blocks(_section("Tour"), "python")[2])
    compile(code, "README.md", "exec")
    assert "from buddyrules.testing.store_contract import StoreContract" in code
