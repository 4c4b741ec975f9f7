"""`buddyrules explain` (one event's trace) and `buddyrules buddy` (a stored buddy)."""

from __future__ import annotations

import json
from pathlib import Path

from buddyrules.state import BuddyState

from .helpers import (
    LANGUAGE,
    event,
    invoke,
    minimal_rulebook,
    two_audiences,
    write_events,
    write_rulebook,
)

PERFECT = event("u1", "lesson_completed", properties={"score": 0.95})


def test_explain_inline_json(tmp_path: Path) -> None:
    rules = write_rulebook(tmp_path / "rb.yaml", minimal_rulebook())
    result = invoke(["explain", str(rules), PERFECT])
    assert result.exit_code == 0, result.stderr
    out = result.stdout
    assert "event    lesson_completed for u1 (student) at 2025-03-03T10:00:00+00:00" in out
    lines = out.splitlines()
    lesson = next(line for line in lines if " lesson " in line)
    assert lesson.split()[:4] == ["coin_rule", "lesson", "fired", "amount"]
    perfect_at = next(i for i, line in enumerate(lines) if " perfect " in line)
    assert "fired" in lines[perfect_at]
    assert lines[perfect_at + 1].strip() == "reads props.score = 0.95"
    assert "badge" in out and "first" in out
    assert "effects:" in out
    coins = next(line for line in lines if line.strip().startswith("coins "))
    assert coins.split() == ["coins", "15"]
    assert "buddy after: stage 1, coins 15" in out


def test_explain_says_why_a_rule_did_not_fire(tmp_path: Path) -> None:
    rules = write_rulebook(tmp_path / "rb.yaml", minimal_rulebook())
    low = event("u1", "lesson_completed", properties={"score": 0.2})
    result = invoke(["explain", str(rules), low])
    perfect = next(line for line in result.stdout.splitlines() if " perfect " in line)
    assert "condition false" in perfect
    missing = invoke(["explain", str(rules), event("u1", "lesson_completed")])
    perfect = next(line for line in missing.stdout.splitlines() if " perfect " in line)
    assert "evaluation problem: missing property 'score'" in perfect


def test_explain_shows_clipping(tmp_path: Path) -> None:
    rules = write_rulebook(tmp_path / "rb.yaml", minimal_rulebook())
    db = tmp_path / "b.db"
    events = write_events(tmp_path / "ev.jsonl", [event("u1", "lesson_completed")])
    assert invoke(["run", str(rules), str(events), "--db", str(db)]).exit_code == 0
    state = tmp_path / "state.json"
    state.write_text(invoke(["buddy", "--db", str(db), "u1", "--format", "json"]).stdout)
    again = event("u1", "lesson_completed", at="2025-03-03T11:00:00Z")
    result = invoke(["explain", str(rules), again, "--state", str(state)])
    assert result.exit_code == 0, result.stderr
    lesson = next(line for line in result.stdout.splitlines() if " lesson " in line)
    assert "amount 10, credited 5; daily cap 15 reached (used 10, clipped 5)" in lesson


def test_explain_from_stdin_and_from_a_file(tmp_path: Path) -> None:
    rules = write_rulebook(tmp_path / "rb.yaml", minimal_rulebook())
    from_stdin = invoke(["explain", str(rules), "-"], input=PERFECT)
    assert from_stdin.exit_code == 0, from_stdin.stderr
    path = tmp_path / "event.json"
    path.write_text(PERFECT)
    from_file = invoke(["explain", str(rules), str(path)])
    assert from_file.exit_code == 0
    assert from_stdin.stdout == from_file.stdout


def test_explain_json_format(tmp_path: Path) -> None:
    rules = write_rulebook(tmp_path / "rb.yaml", minimal_rulebook())
    result = invoke(["explain", str(rules), PERFECT, "--format", "json"])
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert data["effects"]["coins"] == 15
    assert data["rulebook"]["name"] == "mini"
    assert {"kind": "coin_rule", "rule": "lesson"}.items() <= data["trace"][0].items()
    assert BuddyState.model_validate(data["state"]).coins == 15


def test_explain_default_buddy_is_hatched_at_the_event_time(tmp_path: Path) -> None:
    rules = write_rulebook(tmp_path / "rb.yaml", minimal_rulebook())
    result = invoke(["explain", str(rules), PERFECT, "--format", "json"])
    state = json.loads(result.stdout)["state"]
    assert state["hatched_at"].startswith("2025-03-03T10:00:00")


def test_explain_without_occurred_at_uses_now(tmp_path: Path) -> None:
    rules = write_rulebook(tmp_path / "rb.yaml", minimal_rulebook())
    bare = event("u1", "quiz_passed", at=None)
    result = invoke(["explain", str(rules), bare, "--now", "2025-07-01T00:00:00Z"])
    assert result.exit_code == 0
    assert "at 2025-07-01T00:00:00+00:00" in result.stdout


def test_explain_with_a_state_file_of_the_language_example(tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    state.write_text(
        json.dumps(
            {
                "user_id": "u1",
                "audience": "student",
                "rulebook_version": "0" * 16,
                "coins": 100,
                "counters": {"lesson_completed": 99},
            }
        )
    )
    result = invoke(["explain", str(LANGUAGE), PERFECT, "--state", str(state)])
    assert result.exit_code == 0, result.stderr
    assert "note: the state is pinned to rulebook version 0000000000000000" in result.stderr
    ready = next(line for line in result.stdout.splitlines() if "badges_ready" in line)
    assert "scholar" in ready


def test_explain_errors(tmp_path: Path) -> None:
    rules = write_rulebook(tmp_path / "rb.yaml", minimal_rulebook())
    cases = [
        (["{not json"], "error[validation_failed]: the inline EVENT: not valid JSON"),
        (["no-such-file.json"], "error[resource_not_found]: EVENT 'no-such-file.json'"),
        (['{"type": "quiz_passed"}'], "error[validation_failed]: invalid event: user_id"),
        ([PERFECT, "--state", "missing.json"], "error[resource_not_found]: state file"),
    ]
    for args, message in cases:
        result = invoke(["explain", str(rules), *args])
        assert result.exit_code == 1, args
        assert result.stderr.startswith(message), result.stderr
        assert "Traceback" not in result.output
    bad_state = tmp_path / "state.json"
    bad_state.write_text('{"coins": "lots"}')
    result = invoke(["explain", str(rules), PERFECT, "--state", str(bad_state)])
    assert result.exit_code == 1
    assert result.stderr.startswith("error[validation_failed]:")
    assert "user_id: Field required" in result.stderr
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"user_id": "zz", "audience": "student", "rulebook_version": "x"}))
    result = invoke(["explain", str(rules), PERFECT, "--state", str(other)])
    assert result.exit_code == 1
    assert "event is for user 'u1', state is user 'zz'" in result.stderr


def test_explain_audiences(tmp_path: Path) -> None:
    rules = write_rulebook(tmp_path / "rb.yaml", two_audiences())
    result = invoke(["explain", str(rules), event("s1", "lesson_completed")])
    assert result.exit_code == 1
    assert result.stderr.startswith("error[missing_audience]:")
    result = invoke(["explain", str(rules), event("s1", "lesson_completed", audience="parent")])
    assert result.exit_code == 1
    assert result.stderr.startswith("error[unknown_audience]:")
    taught = event("t1", "class_taught", audience="teacher")
    result = invoke(["explain", str(rules), taught])
    assert result.exit_code == 0
    assert "taught" in result.stdout


def test_explain_notes_an_unregistered_type(tmp_path: Path) -> None:
    rules = write_rulebook(tmp_path / "rb.yaml", minimal_rulebook())
    result = invoke(["explain", str(rules), event("u1", "signed_up")])
    assert result.exit_code == 0
    assert "not registered for audience 'student'" in result.stderr
    assert "event_type_not_registered" in result.stderr


def test_buddy_text_and_json(tmp_path: Path) -> None:
    rules = write_rulebook(tmp_path / "rb.yaml", minimal_rulebook())
    db = tmp_path / "b.db"
    events = write_events(
        tmp_path / "ev.jsonl",
        [
            event("u1", "lesson_completed", properties={"score": 0.95}),
            event("u1", "quiz_passed"),
        ],
    )
    assert invoke(["run", str(rules), str(events), "--db", str(db)]).exit_code == 0
    text = invoke(["buddy", "--db", str(db), "u1"])
    assert text.exit_code == 0, text.stderr
    rows = {line.split()[0]: line.split()[1:] for line in text.stdout.splitlines()[1:]}
    assert text.stdout.startswith("buddy u1 (student)")
    assert rows["coins"] == ["15"]
    assert rows["stage"] == ["1", "Egg"]
    assert rows["tokens"] == ["xp:7"]
    assert rows["badges"] == ["first"]
    as_json = invoke(["buddy", "--db", str(db), "u1", "--format", "json", "--audience", "student"])
    state = BuddyState.model_validate_json(as_json.stdout)
    assert (state.user_id, state.coins, state.badges) == ("u1", 15, ("first",))
    assert state.counters == {"lesson_completed": 1, "quiz_passed": 1}


def test_buddy_errors(tmp_path: Path) -> None:
    rules = write_rulebook(tmp_path / "rb.yaml", minimal_rulebook())
    db = tmp_path / "b.db"
    events = write_events(tmp_path / "ev.jsonl", [event("u1", "lesson_completed")])
    assert invoke(["run", str(rules), str(events), "--db", str(db)]).exit_code == 0
    result = invoke(["buddy", "--db", str(db), "nobody"])
    assert result.exit_code == 1
    assert result.stderr.startswith("error[resource_not_found]: user 'nobody' has no buddy")
    result = invoke(["buddy", "--db", str(tmp_path / "none.db"), "u1"])
    assert result.exit_code == 1
    assert result.stderr.startswith("error[resource_not_found]: database file not found")
    assert not (tmp_path / "none.db").exists()
    result = invoke(["buddy", "u1"])
    assert result.exit_code == 2
    assert "--db" in result.stderr
