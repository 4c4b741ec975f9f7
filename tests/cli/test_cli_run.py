"""`buddyrules run`: an event log through a rulebook into a store, as a user drives it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import buddyrules
from buddyrules.state import BuddyState

from .helpers import (
    EXAMPLES,
    LANGUAGE,
    LANGUAGE_EVENTS,
    event,
    invoke,
    json_lines,
    minimal_rulebook,
    two_audiences,
    write_events,
    write_rulebook,
)

EXAMPLE_DIRS = sorted(p.parent for p in EXAMPLES.glob("*/events.jsonl"))


def test_there_are_examples_to_run() -> None:
    assert (EXAMPLES / "language_learning" / "events.jsonl") in [
        d / "events.jsonl" for d in EXAMPLE_DIRS
    ]


@pytest.mark.parametrize("example", EXAMPLE_DIRS, ids=lambda p: p.name)
def test_every_example_runs_without_a_rejected_line(example: Path, tmp_path: Path) -> None:
    db = tmp_path / "buddies.db"
    result = invoke(
        ["run", str(example / "rulebook.yaml"), str(example / "events.jsonl"), "--db", str(db)]
    )
    assert result.exit_code == 0, result.stderr
    assert "0 rejected" in result.stdout
    assert "buddies (" in result.stdout
    assert db.exists()
    # Every line of the log is an applied event, and the JSON rendering agrees.
    result = invoke(
        ["run", str(example / "rulebook.yaml"), str(example / "events.jsonl"), "--format", "json"]
    )
    assert result.exit_code == 0, result.stderr
    records = json_lines(result.stdout)
    kinds = {r["kind"] for r in records}
    assert kinds == {"effects", "buddy"}
    lines = sum(1 for line in (example / "events.jsonl").read_text().splitlines() if line.strip())
    assert sum(1 for r in records if r["kind"] == "effects") == lines


def test_quickstart_table_shows_effects_and_final_buddies(tmp_path: Path) -> None:
    db = tmp_path / "buddies.db"
    result = invoke(["run", str(LANGUAGE), str(LANGUAGE_EVENTS), "--db", str(db)])
    assert result.exit_code == 0, result.stderr
    out = result.stdout.splitlines()
    assert out[0].split() == [
        "line",
        "user",
        "type",
        "coins",
        "badges",
        "tokens",
        "milestones",
        "notes",
    ]
    assert any("first_lesson" in line for line in out)
    buddies_at = next(i for i, line in enumerate(out) if line.startswith("buddies ("))
    assert out[buddies_at + 1].split() == [
        "user",
        "stage",
        "coins",
        "tokens",
        "badges",
        "streaks",
    ]
    assert "events applied, 0 replayed, 0 rejected" in result.stdout


def test_running_the_same_log_twice_replays_it(tmp_path: Path) -> None:
    db = str(tmp_path / "buddies.db")
    first = invoke(["run", str(LANGUAGE), str(LANGUAGE_EVENTS), "--db", db, "--format", "json"])
    second = invoke(["run", str(LANGUAGE), str(LANGUAGE_EVENTS), "--db", db, "--format", "json"])
    assert first.exit_code == second.exit_code == 0
    a, b = json_lines(first.stdout), json_lines(second.stdout)
    assert all(r["effects"]["replayed"] for r in b if r["kind"] == "effects")
    buddies_a = [r for r in a if r["kind"] == "buddy"]
    buddies_b = [r for r in b if r["kind"] == "buddy"]
    assert buddies_a == buddies_b
    assert "0 events applied" in second.stderr  # the summary goes to stderr with json


def test_json_format_is_one_object_per_line(tmp_path: Path) -> None:
    rules = write_rulebook(tmp_path / "rb.yaml", minimal_rulebook())
    events = write_events(
        tmp_path / "ev.jsonl",
        [
            event("u1", "lesson_completed", event_id="e1", properties={"score": 0.95}),
            event("u1", "quiz_passed", event_id="e2"),
        ],
    )
    result = invoke(["run", str(rules), str(events), "--format", "json"])
    assert result.exit_code == 0, result.stderr
    records = json_lines(result.stdout)
    assert [r["kind"] for r in records] == ["effects", "effects", "buddy"]
    first = records[0]
    assert first["line"] == 1
    assert first["event_id"] == "e1"
    assert first["user_id"] == "u1"
    assert first["audience"] == "student"
    assert first["effects"]["coins"] == 15
    assert first["effects"]["badges_awarded"] == ["first"]
    assert set(first["effects"]) >= {
        "coins",
        "badges_awarded",
        "badges_ready",
        "tokens",
        "evolution_ready",
        "streak_milestones",
        "debug_reason",
    }
    assert records[1]["effects"]["tokens"] == ["xp:7"]
    buddy = records[2]
    assert buddy["user_id"] == "u1"
    assert buddy["coins"] == 15
    assert buddy["stage_name"] == "Egg"


def test_run_hatches_buddies_when_the_rulebook_does_not_auto_hatch(tmp_path: Path) -> None:
    rules = write_rulebook(tmp_path / "rb.yaml", minimal_rulebook(auto_hatch=False))
    events = write_events(tmp_path / "ev.jsonl", [event("u1", "lesson_completed")])
    result = invoke(["run", str(rules), str(events), "--format", "json"])
    assert result.exit_code == 0, result.stderr
    effects = json_lines(result.stdout)[0]["effects"]
    assert effects["debug_reason"] is None
    assert effects["coins"] == 10


def test_hatch_time_is_the_first_event_time(tmp_path: Path) -> None:
    db = tmp_path / "b.db"
    rules = write_rulebook(tmp_path / "rb.yaml", minimal_rulebook())
    events = write_events(
        tmp_path / "ev.jsonl",
        [event("u1", "quiz_passed", at="2025-01-05T08:00:00Z")],
    )
    assert invoke(["run", str(rules), str(events), "--db", str(db)]).exit_code == 0
    shown = invoke(["buddy", "--db", str(db), "u1", "--format", "json"])
    state = BuddyState.model_validate_json(shown.stdout)
    assert state.hatched_at is not None
    assert state.hatched_at.isoformat() == "2025-01-05T08:00:00+00:00"


def test_events_without_occurred_at_get_now(tmp_path: Path) -> None:
    db = tmp_path / "b.db"
    rules = write_rulebook(tmp_path / "rb.yaml", minimal_rulebook())
    events = write_events(tmp_path / "ev.jsonl", [event("u1", "lesson_completed", at=None)])
    result = invoke(
        ["run", str(rules), str(events), "--db", str(db), "--now", "2025-06-01T12:00:00Z"]
    )
    assert result.exit_code == 0, result.stderr
    state = BuddyState.model_validate_json(
        invoke(["buddy", "--db", str(db), "u1", "--format", "json"]).stdout
    )
    assert state.last_event_at is not None
    assert state.last_event_at.isoformat() == "2025-06-01T12:00:00+00:00"


def test_bad_now_is_a_usage_error(tmp_path: Path) -> None:
    rules = write_rulebook(tmp_path / "rb.yaml", minimal_rulebook())
    events = write_events(tmp_path / "ev.jsonl", [event("u1", "lesson_completed")])
    result = invoke(["run", str(rules), str(events), "--now", "2025-06-01T12:00:00"])
    assert result.exit_code == 2
    assert "--now" in result.stderr
    assert "Traceback" not in result.output


def test_camel_case_events_and_blank_lines_are_fine(tmp_path: Path) -> None:
    rules = write_rulebook(tmp_path / "rb.yaml", minimal_rulebook())
    camel = json.dumps(
        {"userId": "u1", "type": "lesson_completed", "occurredAt": "2025-03-03T10:00:00Z"}
    )
    events = write_events(tmp_path / "ev.jsonl", ["", camel, "   "])
    result = invoke(["run", str(rules), str(events), "--format", "json"])
    assert result.exit_code == 0, result.stderr
    records = json_lines(result.stdout)
    assert records[0]["line"] == 2
    assert records[0]["user_id"] == "u1"


def test_events_from_stdin(tmp_path: Path) -> None:
    rules = write_rulebook(tmp_path / "rb.yaml", minimal_rulebook())
    text = event("u1", "lesson_completed") + "\n" + event("u2", "quiz_passed") + "\n"
    result = invoke(["run", str(rules), "-", "--format", "json"], input=text)
    assert result.exit_code == 0, result.stderr
    users = [r["user_id"] for r in json_lines(result.stdout) if r["kind"] == "buddy"]
    assert users == ["u1", "u2"]
    assert "<stdin>" in result.stderr


def _bad_log(tmp_path: Path) -> Path:
    return write_events(
        tmp_path / "ev.jsonl",
        [
            event("u1", "lesson_completed"),  # 1 ok
            '{"user_id": "u1", "type": ',  # 2 bad JSON
            event("u1", "no_such_type"),  # 3 not registered
            "[1, 2]",  # 4 not an object
            event("u1", "lesson_completed", at="2025-03-03T10:00:00"),  # 5 naive time
            event("u2", "quiz_passed"),  # 6 ok
        ],
    )


def test_first_bad_line_stops_the_run_with_its_number_and_code(tmp_path: Path) -> None:
    rules = write_rulebook(tmp_path / "rb.yaml", minimal_rulebook())
    events = _bad_log(tmp_path)
    result = invoke(["run", str(rules), str(events)])
    assert result.exit_code == 1
    assert f"{events}:2: error[validation_failed]: not valid JSON" in result.stderr
    assert "stopped at" in result.stderr
    assert "line 2" in result.stderr
    assert "--keep-going" in result.stderr
    assert "no_such_type" not in result.output  # nothing after line 2 was read
    assert "Traceback" not in result.output
    # What was sent before the bad line is shown (and kept).
    assert "1 event applied" in result.stdout


def test_keep_going_reports_every_bad_line_and_a_count(tmp_path: Path) -> None:
    rules = write_rulebook(tmp_path / "rb.yaml", minimal_rulebook())
    events = _bad_log(tmp_path)
    result = invoke(["run", str(rules), str(events), "--keep-going"])
    assert result.exit_code == 1
    err = result.stderr
    assert f"{events}:2: error[validation_failed]: not valid JSON" in err
    assert f"{events}:3: error[event_type_not_registered]:" in err
    assert f"{events}:4: error[validation_failed]: an event must be a JSON object" in err
    assert f"{events}:5: error[validation_failed]:" in err
    assert "naive" in err
    assert "error: 4 invalid lines in" in err
    assert "2 events applied, 0 replayed, 4 rejected; 2 buddies" in result.stdout
    rows = [line.split()[0] for line in result.stdout.splitlines() if line[:5].strip().isdigit()]
    assert rows == ["1", "6"]


def test_keep_going_with_json_writes_error_records(tmp_path: Path) -> None:
    rules = write_rulebook(tmp_path / "rb.yaml", minimal_rulebook())
    events = _bad_log(tmp_path)
    result = invoke(["run", str(rules), str(events), "--keep-going", "--format", "json"])
    assert result.exit_code == 1
    records = json_lines(result.stdout)
    errors = [r for r in records if r["kind"] == "error"]
    assert [(r["line"], r["error"]["code"]) for r in errors] == [
        (2, "validation_failed"),
        (3, "event_type_not_registered"),
        (4, "validation_failed"),
        (5, "validation_failed"),
    ]
    assert [r["line"] for r in records if r["kind"] == "effects"] == [1, 6]


def test_missing_audience_with_two_audiences_names_the_line(tmp_path: Path) -> None:
    rules = write_rulebook(tmp_path / "rb.yaml", two_audiences())
    events = write_events(
        tmp_path / "ev.jsonl",
        [
            event("t1", "class_taught", audience="teacher"),
            event("s1", "lesson_completed"),
        ],
    )
    result = invoke(["run", str(rules), str(events)])
    assert result.exit_code == 1
    assert f"{events}:2: error[missing_audience]:" in result.stderr
    # Several audiences: the tables show the audience column.
    assert result.stdout.splitlines()[0].split()[:3] == ["line", "user", "audience"]


def test_invalid_rulebook(tmp_path: Path) -> None:
    doc = minimal_rulebook()
    doc["coin_rules"][1]["when"] = "props.score >= 0.9 and tokens.gemz > 1"
    rules = write_rulebook(tmp_path / "rb.yaml", doc)
    events = write_events(tmp_path / "ev.jsonl", [event("u1", "lesson_completed")])
    result = invoke(["run", str(rules), str(events)])
    assert result.exit_code == 1
    assert result.stderr.startswith(f"error[rulebook_invalid]: {rules}: rulebook is invalid")
    assert "coin_rules[1].when (column 31): unknown token 'gemz'" in result.stderr
    assert "Traceback" not in result.output


def test_missing_files(tmp_path: Path) -> None:
    rules = write_rulebook(tmp_path / "rb.yaml", minimal_rulebook())
    result = invoke(["run", str(tmp_path / "nope.yaml"), str(tmp_path / "ev.jsonl")])
    assert result.exit_code == 1
    assert result.stderr.startswith("error[resource_not_found]: rulebook file not found")
    result = invoke(["run", str(rules), str(tmp_path / "nope.jsonl")])
    assert result.exit_code == 1
    assert result.stderr.startswith("error[resource_not_found]: events file not found")
    result = invoke(["run", str(rules), str(tmp_path)])
    assert result.exit_code == 1
    assert "directory" in result.stderr


def test_not_utf8_line_is_reported_not_raised(tmp_path: Path) -> None:
    rules = write_rulebook(tmp_path / "rb.yaml", minimal_rulebook())
    events = tmp_path / "ev.jsonl"
    events.write_bytes(event("u1", "lesson_completed").encode() + b"\n\xff\xfe{}\n")
    result = invoke(["run", str(rules), str(events), "--keep-going"])
    assert result.exit_code == 1
    assert f"{events}:2: error[validation_failed]: line is not valid UTF-8" in result.stderr


def test_a_different_current_rulebook_in_the_database_is_refused(tmp_path: Path) -> None:
    db = str(tmp_path / "b.db")
    a = write_rulebook(tmp_path / "a.yaml", minimal_rulebook())
    b = write_rulebook(tmp_path / "b.yaml", minimal_rulebook(name="other"))
    events = write_events(tmp_path / "ev.jsonl", [event("u1", "lesson_completed")])
    assert invoke(["run", str(a), str(events), "--db", db]).exit_code == 0
    assert invoke(["run", str(b), str(events), "--db", db]).exit_code == 0
    result = invoke(["run", str(a), str(events), "--db", db])
    assert result.exit_code == 1
    assert result.stderr.startswith("error[conflict]:")
    assert "fresh --db" in result.stderr


def test_buddies_pinned_to_an_older_rulebook_are_noted(tmp_path: Path) -> None:
    db = str(tmp_path / "b.db")
    a = write_rulebook(tmp_path / "a.yaml", minimal_rulebook())
    b = write_rulebook(tmp_path / "b.yaml", minimal_rulebook(name="other"))
    first = write_events(tmp_path / "1.jsonl", [event("u1", "lesson_completed")])
    second = write_events(tmp_path / "2.jsonl", [event("u1", "quiz_passed")])
    assert invoke(["run", str(a), str(first), "--db", db]).exit_code == 0
    result = invoke(["run", str(b), str(second), "--db", db])
    assert result.exit_code == 0
    assert "note: 1 buddy pinned to an earlier rulebook version" in result.stderr


def test_tenants_are_kept_apart(tmp_path: Path) -> None:
    db = str(tmp_path / "b.db")
    rules = write_rulebook(tmp_path / "rb.yaml", minimal_rulebook())
    events = write_events(tmp_path / "ev.jsonl", [event("u1", "lesson_completed")])
    assert invoke(["run", str(rules), str(events), "--db", db, "--tenant", "acme"]).exit_code == 0
    assert invoke(["buddy", "--db", db, "u1", "--tenant", "acme"]).exit_code == 0
    other = invoke(["buddy", "--db", db, "u1"])
    assert other.exit_code == 1
    assert other.stderr.startswith("error[")


def test_forced_progress_bar_goes_to_stderr(tmp_path: Path) -> None:
    rules = write_rulebook(tmp_path / "rb.yaml", minimal_rulebook())
    events = write_events(tmp_path / "ev.jsonl", [event("u1", "lesson_completed")] * 3)
    result = invoke(["run", str(rules), str(events), "--progress", "--format", "json"])
    assert result.exit_code == 0, result.stderr
    assert "sending events" in result.stderr
    assert "sending events" not in result.stdout
    assert len(json_lines(result.stdout)) == 4


def test_no_progress_bar_when_not_a_terminal(tmp_path: Path) -> None:
    result = invoke(["run", str(LANGUAGE), str(LANGUAGE_EVENTS), "--format", "json"])
    assert result.exit_code == 0
    assert "sending events" not in result.stderr


def test_unexpected_failures_are_one_line_not_a_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from buddyrules import service

    def boom(self: object, *args: object, **kwargs: object) -> None:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(service.Engine, "send", boom)
    monkeypatch.delenv("BUDDYRULES_DEBUG", raising=False)
    rules = write_rulebook(tmp_path / "rb.yaml", minimal_rulebook())
    events = write_events(tmp_path / "ev.jsonl", [event("u1", "lesson_completed")])
    result = invoke(["run", str(rules), str(events)])
    assert result.exit_code == 1
    assert result.stderr.strip() == (
        "error[internal_error]: unexpected RuntimeError: disk on fire "
        "(set BUDDYRULES_DEBUG=1 to see the traceback)"
    )


def test_version_option() -> None:
    result = invoke(["--version"])
    assert result.exit_code == 0
    assert buddyrules.__version__ in result.stdout
