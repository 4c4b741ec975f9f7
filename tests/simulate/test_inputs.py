"""Event log formats, line numbers and bad lines."""

from __future__ import annotations

import csv
import gzip
import json
import sys
from pathlib import Path
from typing import Any

import pytest

import buddyrules as br
from buddyrules.simulate import BadEventLine, MissingDependency, SimulationInputError, simulate

from .helpers import language, make_events

COLUMNS = ["event_id", "user_id", "type", "audience", "occurred_at", "properties"]


@pytest.fixture(scope="module")
def events() -> list[dict[str, Any]]:
    return make_events(users=12, per_user=15, seed=3)


@pytest.fixture(scope="module")
def expected(events: list[dict[str, Any]]) -> dict[str, Any]:
    return simulate(events, baseline=language(), workers=1).to_dict(include_buddies=True)


def _write_jsonl(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _csv_rows(events: list[dict[str, Any]]) -> list[list[str]]:
    return [
        [
            e.get("event_id", ""),
            e["user_id"],
            e["type"],
            e.get("audience", ""),
            e["occurred_at"],
            json.dumps(e["properties"]),
        ]
        for e in events
    ]


def test_jsonl_json_csv_and_gzip_give_the_same_report(
    tmp_path: Path, events: list[dict[str, Any]], expected: dict[str, Any]
) -> None:
    jsonl = _write_jsonl(tmp_path / "ev.jsonl", [json.dumps(e) for e in events])
    array = tmp_path / "ev.json"
    array.write_text(json.dumps(events, indent=1), encoding="utf-8")
    table = tmp_path / "ev.csv"
    with table.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(COLUMNS)
        writer.writerows(_csv_rows(events))
    packed = tmp_path / "ev.jsonl.gz"
    packed.write_bytes(gzip.compress(jsonl.read_bytes()))
    for path in (jsonl, array, table, packed):
        for workers in (1, 2):
            report = simulate(path, baseline=language(), workers=workers)
            assert report.to_dict(include_buddies=True) == expected, (path, workers)
            assert report.run["source"] == str(path)


def test_events_objects_and_camel_case_dicts(
    events: list[dict[str, Any]], expected: dict[str, Any]
) -> None:
    objects = [br.Event.from_dict(e) for e in events]
    assert (
        simulate(objects, baseline=language(), workers=2).to_dict(include_buddies=True) == expected
    )
    camel = [
        {"eventId": e["event_id"], "userId": e["user_id"], "type": e["type"],
         "properties": e["properties"], "occurredAt": e["occurred_at"]}
        for e in events
    ]  # fmt: skip
    assert simulate(camel, baseline=language(), workers=1).to_dict(include_buddies=True) == expected


def test_parquet_gives_the_same_report(
    tmp_path: Path, events: list[dict[str, Any]], expected: dict[str, Any]
) -> None:
    pa = pytest.importorskip("pyarrow", reason="pyarrow is not installed (extra: parquet)")
    import pyarrow.parquet as pq

    columns = list(zip(*_csv_rows(events), strict=True))
    table = pa.table({name: list(col) for name, col in zip(COLUMNS, columns, strict=True)})
    path = tmp_path / "ev.parquet"
    pq.write_table(table, path)
    report = simulate(path, baseline=language(), workers=2)
    assert report.to_dict(include_buddies=True) == expected


def test_parquet_without_pyarrow_is_a_clear_typed_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "ev.parquet"
    path.write_bytes(b"PAR1")
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(MissingDependency, match="pyarrow") as info:
        simulate(path, baseline=language(), workers=1)
    assert isinstance(info.value, br.ValidationFailed)
    assert info.value.details["package"] == "pyarrow"


def _bad_log(tmp_path: Path, events: list[dict[str, Any]]) -> tuple[Path, list[tuple[int, str]]]:
    good = [json.dumps(e) for e in events[:8]]
    no_time = {k: v for k, v in events[8].items() if k != "occurred_at"}
    lines = [
        good[0],
        good[1],
        '{"user_id": "u", "type": ',  # 3: not JSON
        good[2],
        json.dumps(no_time),  # 5: no occurred_at
        "",  # 6: blank lines are not bad
        json.dumps(dict(events[9], type="teleported")),  # 7: not registered
        good[3],
        json.dumps(dict(events[10], type="Bad-Type")),  # 9: invalid event
        "[1, 2]",  # 10: not an object
        json.dumps(dict(events[11], occurred_at="2024-03-01T10:00:00")),  # 11: naive time
        *good[4:],
    ]
    expected = [
        (3, "invalid_json"),
        (5, "validation_failed"),
        (7, "event_type_not_registered"),
        (9, "validation_failed"),
        (10, "validation_failed"),
        (11, "validation_failed"),
    ]
    return _write_jsonl(tmp_path / "bad.jsonl", lines), expected


@pytest.mark.parametrize("workers", [1, 2])
def test_bad_lines_are_skipped_and_counted_with_line_numbers(
    tmp_path: Path, events: list[dict[str, Any]], workers: int
) -> None:
    path, expected = _bad_log(tmp_path, events)
    report = simulate(path, baseline=language(), on_bad_line="skip", workers=workers)
    assert [(b.line, b.code) for b in report.bad_lines] == expected
    data = report.to_dict()["input"]
    assert data["bad_lines"]["count"] == len(expected)
    assert [b["line"] for b in data["bad_lines"]["lines"]] == [n for n, _ in expected]
    assert data["events"] == 8
    assert report.baseline.summary["events"]["applied"] == 8
    assert "Bad lines (6" in report.summary_table()


@pytest.mark.parametrize("workers", [1, 2])
def test_stop_names_the_first_bad_line(
    tmp_path: Path, events: list[dict[str, Any]], workers: int
) -> None:
    path, _ = _bad_log(tmp_path, events)
    with pytest.raises(BadEventLine, match=r"bad\.jsonl: line 3: invalid_json") as info:
        simulate(path, baseline=language(), workers=workers)
    assert info.value.details["line"] == 3
    assert info.value.details["bad_lines"] == 6
    # The first bad line found only by validation (in a worker) is still the one named.
    lines = path.read_text(encoding="utf-8").splitlines()
    del lines[2]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(BadEventLine, match="line 4: validation_failed: occurred_at") as info:
        simulate(path, baseline=language(), workers=workers)
    assert info.value.code == "validation_failed"


def test_in_memory_bad_items_are_numbered(events: list[dict[str, Any]]) -> None:
    items: list[Any] = [events[0], "not an event", {"user_id": "x", "type": "lesson_completed"}]
    with pytest.raises(BadEventLine, match="item 2"):
        simulate(items, baseline=language(), workers=1)
    report = simulate(items, baseline=language(), workers=1, on_bad_line="skip")
    assert [(b.line, b.code) for b in report.bad_lines] == [
        (2, "validation_failed"),
        (3, "validation_failed"),
    ]


def test_json_array_items_are_numbered_by_their_line(
    tmp_path: Path, events: list[dict[str, Any]]
) -> None:
    path = tmp_path / "ev.json"
    items = [json.dumps(events[0]), "42", json.dumps(dict(events[1], type="nope"))]
    path.write_text("[\n" + ",\n".join(items) + "\n]\n", encoding="utf-8")
    report = simulate(path, baseline=language(), workers=1, on_bad_line="skip")
    assert [(b.line, b.code) for b in report.bad_lines] == [
        (3, "validation_failed"),
        (4, "event_type_not_registered"),
    ]
    path.write_text('[{"user_id": "a"},\n  {"user_id": ]', encoding="utf-8")
    with pytest.raises(SimulationInputError, match="line 2"):
        simulate(path, baseline=language(), workers=1, on_bad_line="skip")


def test_csv_rows_header_and_properties(tmp_path: Path, events: list[dict[str, Any]]) -> None:
    path = tmp_path / "ev.csv"
    rows = _csv_rows(events[:3])
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(COLUMNS)
        writer.writerow(rows[0])
        writer.writerow(rows[1][:4])  # 3: too few columns
        writer.writerow([*rows[2][:5], "{not json"])  # 4: properties not JSON
        writer.writerow(["", "u9", "lesson_completed", "", "2024-03-02T10:00:00Z", ""])  # 5: ok
    report = simulate(path, baseline=language(), workers=1, on_bad_line="skip")
    assert [(b.line, b.code) for b in report.bad_lines] == [
        (3, "validation_failed"),
        (4, "invalid_json"),
    ]
    assert report.baseline.summary["events"]["applied"] == 2
    path.write_text("user_id,type,when\nu1,lesson_completed,x\n", encoding="utf-8")
    with pytest.raises(SimulationInputError, match="bad header"):
        simulate(path, baseline=language(), workers=1)


def test_unreadable_sources(tmp_path: Path) -> None:
    with pytest.raises(SimulationInputError, match="unknown event log extension"):
        simulate(tmp_path / "events.txt", baseline=language(), workers=1)
    with pytest.raises(br.ResourceNotFound):
        simulate(tmp_path / "missing.jsonl", baseline=language(), workers=1)
    with pytest.raises(SimulationInputError, match="iterable"):
        simulate({"user_id": "u"}, baseline=language(), workers=1)  # type: ignore[dict-item]


def test_json_validity_does_not_depend_on_orjson(tmp_path: Path) -> None:
    # orjson refuses NaN and big integers; the standard library has the last word.
    lines = [
        '{"user_id": "u", "type": "quiz_passed", "occurred_at": "2024-03-01T10:00:00Z", '
        '"properties": {"score": NaN}}',
        '{"user_id": "u", "type": "quiz_passed", "occurred_at": "2024-03-01T11:00:00Z", '
        '"properties": {"score": 0.5, "id": 123456789012345678901234567890}}',
    ]
    path = _write_jsonl(tmp_path / "ev.jsonl", lines)
    report = simulate(path, baseline=language(), workers=1, on_bad_line="skip")
    assert [(b.line, b.code) for b in report.bad_lines] == [(1, "validation_failed")]
    assert report.baseline.summary["events"]["applied"] == 1
