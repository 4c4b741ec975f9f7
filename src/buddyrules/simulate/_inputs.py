"""Reading event logs in the main process: formats, line numbers and routing to shards.

The main process reads the log once, finds each line's user (to route it to a shard) and
keeps the line as cheap to ship as possible: a JSONL line travels to the worker as its raw
bytes and is parsed and validated there, in parallel. Only what the main process must parse
anyway (a line that is not JSON, an item that is not an object) is reported bad here.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
import zlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, cast

from buddyrules.errors import ResourceNotFound
from buddyrules.events import Event
from buddyrules.simulate._errors import MissingDependency, SimulationInputError

__all__ = [
    "ROW_FIELDS",
    "BadLine",
    "EventSource",
    "Payload",
    "loads",
    "read_events",
    "shard_of",
]

try:  # orjson parses JSON several times faster; it is optional
    import orjson

    def loads(data: bytes | str) -> Any:
        """Parse one JSON document: orjson when installed, with the standard library's say.

        orjson is stricter (NaN, integers beyond 64 bits), so a document it refuses is parsed
        again by :mod:`json`: what counts as valid JSON does not depend on what is installed.
        """
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            return json.loads(data)

except ImportError:  # pragma: no cover - depends on the environment

    def loads(data: bytes | str) -> Any:
        """Parse one JSON document (orjson when installed, else the standard library)."""
        return json.loads(data)


# json.JSONDecodeError and UnicodeDecodeError are both ValueErrors.
_JSON_ERRORS: tuple[type[Exception], ...] = (ValueError,)

#: Columns of a CSV or Parquet event log, in the order rows are shipped to workers.
ROW_FIELDS = ("event_id", "user_id", "type", "audience", "occurred_at", "properties")
_COLUMN_ALIASES = {"eventId": "event_id", "userId": "user_id", "occurredAt": "occurred_at"}
_REQUIRED_COLUMNS = ("user_id", "type", "occurred_at")

# What travels to a worker for one line: the raw JSON bytes of a JSONL line, a dict (JSON
# array items, in-memory dicts), ("row", event_id, user_id, type, audience, occurred_at,
# properties) for CSV/Parquet rows, or ("event", user_id, type, event_id, audience,
# properties, occurred_at) for an in-memory Event.
Payload = bytes | dict[str, Any] | tuple[Any, ...]

#: What :func:`simulate` accepts as events: a path, or any iterable of events.
EventSource = str | os.PathLike[str] | Iterable[Event | Mapping[str, Any]]


@dataclass(frozen=True, slots=True, order=True)
class BadLine:
    """A line (or item) of the event log that could not be replayed."""

    line: int
    code: str
    reason: str

    def to_dict(self) -> dict[str, Any]:
        """As a JSON-compatible mapping."""
        return {"line": self.line, "code": self.code, "reason": self.reason}


def shard_of(user_id: str, shards: int) -> int:
    """The shard of a user: stable across processes and runs (``hash()`` is salted)."""
    return zlib.crc32(user_id.encode("utf-8", "surrogatepass")) % shards


def _user_key(data: Mapping[str, Any]) -> str:
    uid = data.get("user_id")
    if uid is None:
        uid = data.get("userId")
    return uid if isinstance(uid, str) else ""


def read_events(
    events: EventSource, *, keep_raw: bool
) -> Iterator[tuple[int, Payload | BadLine, str]]:
    """Yield ``(line, payload or BadLine, user key)`` for every line or item of ``events``.

    ``keep_raw`` ships JSONL lines as bytes (for worker processes) instead of parsed dicts.
    Raises :class:`SimulationInputError` for a file that cannot be read at all (unknown
    extension, bad CSV header, malformed JSON array) and :class:`ResourceNotFound` for a
    missing file.
    """
    if isinstance(events, str | os.PathLike):
        yield from _read_path(Path(events), keep_raw=keep_raw)
    elif isinstance(events, bytes | bytearray | Mapping):
        raise SimulationInputError(
            f"events must be a path or an iterable of events, not {type(events).__name__}",
            {"fields": {"events": "expected a path or an iterable"}},
        )
    else:
        yield from _read_items(events)


def _read_items(items: Iterable[Any]) -> Iterator[tuple[int, Payload | BadLine, str]]:
    for n, item in enumerate(items, 1):
        if isinstance(item, Event):
            props = dict(item.properties)
            yield (
                n,
                (
                    "event",
                    item.user_id,
                    item.type,
                    item.event_id,
                    item.audience,
                    props,
                    item.occurred_at,
                ),
                item.user_id,
            )
        elif isinstance(item, Mapping):
            data = dict(item)
            yield n, data, _user_key(data)
        else:
            yield (
                n,
                BadLine(
                    n, "validation_failed", f"expected an event object, got {type(item).__name__}"
                ),
                "",
            )


def _format_of(path: Path) -> tuple[str, bool]:
    suffixes = [s.lower() for s in path.suffixes]
    compressed = bool(suffixes) and suffixes[-1] == ".gz"
    if compressed:
        suffixes = suffixes[:-1]
    kind = suffixes[-1] if suffixes else ""
    formats = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv"}
    if kind in formats:
        return formats[kind], compressed
    if kind == ".parquet" and not compressed:
        return "parquet", False
    raise SimulationInputError(
        f"{path}: unknown event log extension {''.join(path.suffixes)!r} "
        "(use .jsonl, .ndjson, .json, .csv, .parquet, or .jsonl.gz/.json.gz/.csv.gz)",
        {"path": str(path)},
    )


def _open(path: Path, compressed: bool) -> IO[bytes]:
    try:
        if compressed:
            return cast(IO[bytes], gzip.open(path, "rb"))
        return path.open("rb")
    except FileNotFoundError:
        raise ResourceNotFound(f"event log not found: {path}", {"path": str(path)}) from None
    except OSError as exc:
        raise SimulationInputError(f"{path}: cannot read: {exc}", {"path": str(path)}) from exc


def _read_path(path: Path, *, keep_raw: bool) -> Iterator[tuple[int, Payload | BadLine, str]]:
    kind, compressed = _format_of(path)
    if kind == "parquet":
        yield from _read_parquet(path)
        return
    with _open(path, compressed) as fh:
        try:
            if kind == "jsonl":
                yield from _read_jsonl(fh, keep_raw=keep_raw)
            elif kind == "json":
                yield from _read_json_array(fh, path)
            else:
                yield from _read_csv(fh, path)
        except (OSError, EOFError, gzip.BadGzipFile) as exc:
            raise SimulationInputError(f"{path}: cannot read: {exc}", {"path": str(path)}) from exc


def _read_jsonl(fh: IO[bytes], *, keep_raw: bool) -> Iterator[tuple[int, Payload | BadLine, str]]:
    for n, raw in enumerate(fh, 1):
        line = raw.strip()
        if not line:
            continue
        try:
            data = loads(line)
        except _JSON_ERRORS as exc:
            yield n, BadLine(n, "invalid_json", f"not valid JSON: {exc}"), ""
            continue
        if not isinstance(data, dict):
            yield (
                n,
                BadLine(
                    n, "validation_failed", f"expected a JSON object, got {type(data).__name__}"
                ),
                "",
            )
            continue
        yield n, (line if keep_raw else data), _user_key(data)


def _read_json_array(fh: IO[bytes], path: Path) -> Iterator[tuple[int, Payload | BadLine, str]]:
    try:
        text = fh.read().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SimulationInputError(f"{path}: not UTF-8: {exc}", {"path": str(path)}) from exc
    decoder = json.JSONDecoder()
    ws = " \t\r\n"
    pos, end = 0, len(text)
    line, counted = 1, 0

    def at(p: int) -> int:
        nonlocal line, counted
        line += text.count("\n", counted, p)
        counted = p
        return line

    def fail(p: int, message: str) -> SimulationInputError:
        row = at(p)
        col = p - text.rfind("\n", 0, p)
        return SimulationInputError(
            f"{path}: line {row} column {col}: {message} (a .json event log is one JSON array)",
            {"path": str(path), "line": row, "column": col},
        )

    while pos < end and text[pos] in ws:
        pos += 1
    if pos >= end or text[pos] != "[":
        raise fail(pos, "expected '['")
    pos += 1
    item = 0
    while True:
        while pos < end and text[pos] in ws:
            pos += 1
        if pos < end and text[pos] == "]" and item == 0:
            pos += 1
            break
        try:
            value, nxt = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            raise fail(exc.pos, exc.msg) from None
        item += 1
        n = at(pos)
        if isinstance(value, dict):
            yield n, value, _user_key(value)
        else:
            yield (
                n,
                BadLine(
                    n, "validation_failed", f"expected a JSON object, got {type(value).__name__}"
                ),
                "",
            )
        pos = nxt
        while pos < end and text[pos] in ws:
            pos += 1
        if pos < end and text[pos] == ",":
            pos += 1
            continue
        if pos < end and text[pos] == "]":
            pos += 1
            break
        raise fail(pos, "expected ',' or ']'")
    while pos < end and text[pos] in ws:
        pos += 1
    if pos < end:
        raise fail(pos, "extra data after the array")


def _columns(header: list[str], path: Path) -> list[str]:
    names = [_COLUMN_ALIASES.get(h.strip(), h.strip()) for h in header]
    unknown = [h for h in names if h not in ROW_FIELDS]
    missing = [c for c in _REQUIRED_COLUMNS if c not in names]
    dupes = sorted({h for h in names if names.count(h) > 1})
    if unknown or missing or dupes:
        problems = []
        if unknown:
            problems.append(f"unknown columns {unknown}")
        if missing:
            problems.append(f"missing columns {missing}")
        if dupes:
            problems.append(f"duplicate columns {dupes}")
        raise SimulationInputError(
            f"{path}: bad header: {'; '.join(problems)} (columns: {', '.join(ROW_FIELDS)})",
            {"path": str(path), "line": 1, "columns": names},
        )
    return names


def _row(values: dict[str, Any]) -> tuple[Any, ...]:
    # An empty cell is a missing value, in CSV and Parquet alike.
    return ("row", *(None if (v := values.get(name)) == "" else v for name in ROW_FIELDS))


def _read_csv(fh: IO[bytes], path: Path) -> Iterator[tuple[int, Payload | BadLine, str]]:
    text = io.TextIOWrapper(fh, encoding="utf-8", newline="")
    try:
        yield from _read_csv_rows(csv.reader(text), path)
    finally:
        text.detach()  # the caller closes the file


def _read_csv_rows(reader: Any, path: Path) -> Iterator[tuple[int, Payload | BadLine, str]]:
    try:
        header = next(reader)
    except StopIteration:
        return
    except (csv.Error, UnicodeDecodeError) as exc:
        raise SimulationInputError(f"{path}: line 1: {exc}", {"path": str(path)}) from exc
    names = _columns(header, path)
    width = len(names)
    last = reader.line_num
    while True:
        start = last + 1
        try:
            cells = next(reader)
        except StopIteration:
            break
        except (csv.Error, UnicodeDecodeError) as exc:
            last = reader.line_num
            yield start, BadLine(start, "validation_failed", f"unreadable CSV row: {exc}"), ""
            continue
        last = reader.line_num
        if not cells or (len(cells) == 1 and not cells[0].strip()):
            continue
        if len(cells) != width:
            yield (
                start,
                BadLine(start, "validation_failed", f"expected {width} columns, got {len(cells)}"),
                "",
            )
            continue
        values = dict(zip(names, cells, strict=True))
        uid = values.get("user_id")
        yield start, _row(values), uid if isinstance(uid, str) else ""


def _read_parquet(path: Path) -> Iterator[tuple[int, Payload | BadLine, str]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise MissingDependency("pyarrow", "reading .parquet event logs", "parquet") from None
    try:
        pfile = pq.ParquetFile(path)
    except FileNotFoundError:
        raise ResourceNotFound(f"event log not found: {path}", {"path": str(path)}) from None
    except Exception as exc:  # pyarrow raises its own error types for corrupt files
        raise SimulationInputError(
            f"{path}: not a Parquet file: {exc}", {"path": str(path)}
        ) from exc
    header = [str(name) for name in pfile.schema_arrow.names]
    names = _columns(header, path)
    n = 0
    for batch in pfile.iter_batches(batch_size=65536):
        columns = batch.to_pydict()
        series = [columns[h] for h in header]
        for cells in zip(*series, strict=True):
            n += 1
            values = dict(zip(names, cells, strict=True))
            props = values.get("properties")
            # A Parquet map column arrives as a list of (key, value) pairs.
            if isinstance(props, list) and all(isinstance(p, tuple) and len(p) == 2 for p in props):
                values["properties"] = dict(props)
            uid = values.get("user_id")
            yield n, _row(values), uid if isinstance(uid, str) else ""
