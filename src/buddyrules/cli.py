"""The ``buddyrules`` command.

Commands: ``run`` (send an event log through a rulebook into a store), ``validate``,
``explain`` (the trace of one event), ``schema``, ``buddy``, ``migrate``, and the glue
commands ``simulate`` and ``check``, whose work lives in :mod:`buddyrules.simulate` and
:mod:`buddyrules.testing.check`.

Every failure prints one ``error[code]: message`` line (``code`` is the stable error code of
SPEC §8 when there is one) and exits non-zero; nothing ends in a traceback unless
``BUDDYRULES_DEBUG=1`` is set. Exit codes: 0 success, 1 a failure (bad input, rejected
events, invalid rulebook), 2 a usage error or a command not available in this build.
"""

from __future__ import annotations

import contextlib
import errno
import importlib
import json
import logging
import os
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import click
import yaml
from pydantic import ValidationError

from buddyrules import __version__
from buddyrules.effects import CORE_KEYS, Effects
from buddyrules.engine import evaluate, new_buddy
from buddyrules.errors import (
    BuddyRulesError,
    ConflictError,
    MissingAudience,
    ResourceNotFound,
    RulebookError,
    UnknownAudience,
    ValidationFailed,
)
from buddyrules.events import Event, parse_timestamp
from buddyrules.rulebook import Rulebook, lint_rulebook, load_rulebook, rulebook_json_schema
from buddyrules.rulebook.load import parse_rulebook_file
from buddyrules.state import BuddyState
from buddyrules.storage.protocols import BuddyKey, Store

if TYPE_CHECKING:
    from buddyrules.service import Engine

__all__ = ["CliError", "cli", "main"]

#: Below this many lines an input is quick enough that a progress bar would only flicker.
PROGRESS_MIN_LINES = 2000

_FORMATS = click.Choice(["table", "json"])
_TEXT_FORMATS = click.Choice(["text", "json"])


# -- errors -----------------------------------------------------------------------------------


class CliError(click.ClickException):
    """A failure shown as ``error[code]: message`` (plus optional detail lines) on stderr."""

    def __init__(
        self,
        message: str,
        code: str | None = None,
        *,
        lines: Sequence[str] = (),
        exit_code: int = 1,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.lines = list(lines)
        # click 8.5 declares ``exit_code`` a ClassVar (8.4 did not); click still reads it from
        # the instance, so set it there without tripping the type checker on either version.
        object.__setattr__(self, "exit_code", exit_code)

    @classmethod
    def from_error(cls, exc: BuddyRulesError, context: str | None = None) -> CliError:
        """Turn a typed error into a CLI error, with ``context`` (e.g. a file) in front."""
        prefix = f"{context}: " if context else ""
        if isinstance(exc, RulebookError):
            problems = exc.problems
            noun = "problem" if len(problems) == 1 else "problems"
            return cls(
                f"{prefix}rulebook is invalid ({len(problems)} {noun})",
                exc.code,
                lines=[f"  {_format_problem(p)}" for p in problems],
            )
        return cls(prefix + exc.message, exc.code)

    def format_message(self) -> str:
        """The first line, as printed."""
        head = f"error[{self.code}]" if self.code else "error"
        return f"{head}: {self.message}"

    def show(self, file: IO[Any] | None = None) -> None:
        """Print the message and detail lines to stderr (never a traceback)."""
        out = file if file is not None else sys.stderr
        click.echo(self.format_message(), file=out)
        for line in self.lines:
            click.echo(line, file=out)


def _format_problem(problem: dict[str, Any], *, with_line: bool = True) -> str:
    """``path (line L, column C): message`` for one :class:`RulebookError` problem."""
    where = str(problem.get("path") or "")
    position = []
    if with_line and problem.get("line") is not None:
        position.append(f"line {problem['line']}")
    if problem.get("column") is not None:
        position.append(f"column {problem['column']}")
    if position:
        where = f"{where} ({', '.join(position)})" if where else ", ".join(position)
    message = str(problem.get("message", ""))
    return f"{where}: {message}" if where else message


def _os_error_message(exc: OSError) -> str:
    name = exc.filename if exc.filename is not None else ""
    reason = exc.strerror or str(exc)
    return f"{name}: {reason}" if name else reason


class _Group(click.Group):
    """A click group that turns every exception into a one-line ``error[code]`` message."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except BuddyRulesError as exc:
            raise CliError.from_error(exc) from None
        except OSError as exc:
            if exc.errno == errno.EPIPE:
                raise  # click quietly handles a closed pipe (e.g. `| head`)
            raise CliError(_os_error_message(exc)) from None
        except Exception as exc:
            if os.environ.get("BUDDYRULES_DEBUG"):
                raise
            raise CliError(
                f"unexpected {type(exc).__name__}: {exc} "
                "(set BUDDYRULES_DEBUG=1 to see the traceback)",
                "internal_error",
            ) from None


def _timestamp_option(
    ctx: click.Context, param: click.Parameter, value: str | None
) -> datetime | None:
    """Parse an ISO-8601 timestamp with an offset (``Z`` allowed) given on the command line."""
    if value is None:
        return None
    try:
        return parse_timestamp(value)
    except ValueError as exc:
        raise click.BadParameter(f"{value!r}: {exc}", ctx, param) from None


# -- the group --------------------------------------------------------------------------------


@click.group(
    cls=_Group,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(__version__, prog_name="buddyrules")
def cli() -> None:
    """buddyrules: an in-process gamification rule engine.

    Events in, effects out. Start with `buddyrules run RULES EVENTS.jsonl --db buddies.db`.
    """


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``buddyrules`` script (and ``python -m buddyrules``)."""
    cli.main(args=list(argv) if argv is not None else None, prog_name="buddyrules")


# -- helpers: files, stores, rendering ---------------------------------------------------------


def _load(path: str) -> Rulebook:
    try:
        return load_rulebook(path)
    except ResourceNotFound as exc:
        raise CliError.from_error(exc) from None  # the message names the file
    except BuddyRulesError as exc:
        raise CliError.from_error(exc, path) from None


def _plural(n: int, noun: str) -> str:
    if n == 1:
        return f"1 {noun}"
    return f"{n} {noun[:-1]}ies" if noun.endswith("y") and noun[-2:] != "ey" else f"{n} {noun}s"


def _sqlite_store(path: str) -> Store:
    try:
        from buddyrules.storage.sqlite import SQLiteStore
    except ImportError as exc:
        raise CliError(
            f"the SQLite store is not available in this build ({exc})", exit_code=2
        ) from None
    return SQLiteStore(path)


def _engine(store: Store | None, tenant: str, clock: Callable[[], datetime] | None) -> Engine:
    try:
        from buddyrules.service import Engine
    except ImportError as exc:
        raise CliError(f"the Engine is not available in this build ({exc})", exit_code=2) from None
    return Engine(store, tenant=tenant, clock=clock)


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, set | frozenset):
        return sorted(value, key=str)
    if isinstance(value, tuple):
        return list(value)
    return str(value)


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=_jsonable)


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], numeric: set[int]) -> list[str]:
    """Left-aligned text columns (right-aligned where ``numeric``), two spaces apart."""
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))

    def fmt(cells: Sequence[str]) -> str:
        parts = [
            c.rjust(widths[i]) if i in numeric else c.ljust(widths[i]) for i, c in enumerate(cells)
        ]
        return "  ".join(parts).rstrip()

    out = [fmt(headers), fmt(["-" * w for w in widths])]
    out.extend(fmt(r) for r in rows)
    return out


def _join(items: Sequence[str]) -> str:
    return " ".join(items) if items else "-"


def _stage_label(engine: Engine, state: BuddyState) -> str:
    try:
        stages = engine.rulebook(state.rulebook_version).stages
    except BuddyRulesError:
        return str(state.stage)
    if 1 <= state.stage <= len(stages):
        return f"{state.stage} {stages[state.stage - 1].name}"
    return str(state.stage)


def _tokens_text(tokens: dict[str, int]) -> str:
    return _join([f"{k}:{v}" for k, v in sorted(tokens.items())])


def _streaks_text(state: BuddyState) -> str:
    return _join(
        [f"{k}:{s.count} (best {s.best})" for k, s in sorted(state.streaks.items()) if s.best]
    )


def _badges_text(state: BuddyState) -> str:
    items = list(state.badges) + [f"{b} (ready)" for b in state.badges_ready]
    return ", ".join(items) if items else "-"


# -- run ---------------------------------------------------------------------------------------


class _RunClock:
    """The engine's clock during ``run``: an event log is replayed at the times it records.

    While an event is applied the clock reads that event's ``occurred_at`` (so hatch times,
    ledger times and the quota month follow the log); events without ``occurred_at`` get
    ``--now`` if given, else the current time.
    """

    def __init__(self, fixed: datetime | None) -> None:
        self.fixed = fixed
        self.at: datetime | None = None

    def __call__(self) -> datetime:
        if self.at is not None:
            return self.at
        if self.fixed is not None:
            return self.fixed
        return datetime.now(UTC)


@dataclass
class _RunReport:
    """What ``run`` did, for the summary."""

    applied: int = 0
    replayed: int = 0
    rows: list[list[str]] = field(default_factory=list)
    bad: list[tuple[int, BuddyRulesError]] = field(default_factory=list)
    buddies: dict[BuddyKey, None] = field(default_factory=dict)  # ordered set


def _open_events(path: str) -> tuple[IO[bytes], str]:
    if path == "-":
        return sys.stdin.buffer, "<stdin>"
    try:
        return open(path, "rb"), path
    except FileNotFoundError:
        raise CliError(f"events file not found: {path}", ResourceNotFound.code) from None
    except IsADirectoryError:
        raise CliError(f"events file is a directory: {path}", ValidationFailed.code) from None


def _count_lines(path: str) -> int:
    count = 0
    last = b"\n"
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            count += chunk.count(b"\n")
            last = chunk[-1:]
    return count + (0 if last == b"\n" else 1)


def _parse_line(raw: bytes, lineno: int) -> dict[str, Any]:
    """One JSON-lines record as an event mapping (``validation_failed`` when it is not one)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValidationFailed(
            f"line is not valid UTF-8 ({exc.reason} at byte {exc.start})",
            {"fields": {"": "not UTF-8"}},
        ) from None
    if lineno == 1:
        text = text.lstrip("\ufeff")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValidationFailed(
            f"not valid JSON: {exc.msg} (column {exc.colno})", {"fields": {"": "not JSON"}}
        ) from None
    if not isinstance(data, dict):
        raise ValidationFailed(
            f"an event must be a JSON object, got {type(data).__name__}",
            {"fields": {"": "expected an object"}},
        )
    return data


def _effects_row(lineno: int, event: Event, audience: str | None, effects: Effects) -> list[str]:
    badges = list(effects.badges_awarded) + [f"{b} (ready)" for b in effects.badges_ready]
    notes: list[str] = []
    if effects.replayed:
        notes.append("replayed")
    if effects.debug_reason:
        notes.append(effects.debug_reason)
    if effects.evolved_to is not None:
        notes.append(f"evolved to stage {effects.evolved_to}")
    elif effects.evolution_ready:
        notes.append("evolution ready")
    if effects.problems:
        n = len(effects.problems)
        notes.append(_plural(n, "evaluation problem"))
    row = [str(lineno), event.user_id]
    if audience is not None:
        row.append(audience)
    row += [
        event.type,
        str(effects.coins),
        ", ".join(badges) if badges else "-",
        _join(list(effects.tokens)),
        _join([f"{m['streak']}:{m['count']}" for m in effects.streak_milestones]),
        "; ".join(notes),
    ]
    return row


@cli.command(short_help="Send an event log through a rulebook; show effects and buddies.")
@click.argument("rules", metavar="RULES")
@click.argument("events", metavar="EVENTS.jsonl")
@click.option(
    "--db",
    "db",
    metavar="PATH",
    help="SQLite file to keep buddies in (created if missing). "
    "Default: an in-memory store, nothing is saved.",
)
@click.option("--tenant", default="default", show_default=True, help="Tenant to run as.")
@click.option(
    "--format",
    "fmt",
    type=_FORMATS,
    default="table",
    show_default=True,
    help="table: one line per event, then the buddies; json: one JSON object per line.",
)
@click.option(
    "--keep-going",
    is_flag=True,
    help="Skip invalid lines (reported at the end, exit 1) instead of stopping at the first.",
)
@click.option(
    "--now",
    metavar="TIMESTAMP",
    callback=_timestamp_option,
    help="Time given to events without occurred_at (default: the current time).",
)
@click.option(
    "--progress/--no-progress",
    default=None,
    help=f"Progress bar on stderr (default: when stderr is a terminal and the input has "
    f"{PROGRESS_MIN_LINES}+ lines).",
)
def run(
    rules: str,
    events: str,
    db: str | None,
    tenant: str,
    fmt: str,
    keep_going: bool,
    now: datetime | None,
    progress: bool | None,
) -> None:
    """Send every event of EVENTS.jsonl through RULES and show the effects and the buddies.

    RULES is a rulebook file (.yaml, .json or .toml); EVENTS.jsonl has one event (a JSON
    object, SPEC §1) per line, or is `-` for stdin. The rulebook is published to the store
    (publishing the same version again changes nothing). A buddy is hatched for each new
    user before its first event, unless the rulebook sets auto_hatch (then the engine does
    it). While an event is applied the engine's clock reads its occurred_at; events without
    one get --now, else the current time.

    Re-running the same log on the same --db is safe: events with an event_id are replayed
    from their receipts, not applied twice.
    """
    rulebook = _load(rules)
    stream, name = _open_events(events)
    with stream:
        store: Store | None = _sqlite_store(db) if db is not None else None
        try:
            _run(
                rulebook,
                rules,
                stream,
                name,
                events,
                store,
                db,
                tenant=tenant,
                fmt=fmt,
                keep_going=keep_going,
                now=now,
                progress=progress,
            )
        finally:
            if store is not None:
                store.close()


def _run(
    rulebook: Rulebook,
    rules: str,
    stream: IO[bytes],
    name: str,
    events: str,
    store: Store | None,
    db: str | None,
    *,
    tenant: str,
    fmt: str,
    keep_going: bool,
    now: datetime | None,
    progress: bool | None,
) -> None:
    clock = _RunClock(now)
    engine = _engine(store, tenant, clock)
    engine.publish(rulebook)
    current = engine.current_rulebook()
    if current.version != rulebook.version:
        raise CliError(
            f"{rules} (version {rulebook.version}) was published to {db} before, but the "
            f"current rulebook there is {current.name!r} version {current.version}; "
            "use a fresh --db",
            ConflictError.code,
        )
    show_bar = progress
    if show_bar is None:
        # A bar would interleave with JSON records printed to the same terminal.
        show_bar = sys.stderr.isatty() and not (fmt == "json" and sys.stdout.isatty())
    total = _count_lines(events) if show_bar and events != "-" else None
    if progress is None and total is not None and total < PROGRESS_MIN_LINES:
        total = None
    report = _RunReport()
    if total is not None:
        with click.progressbar(length=total, label="sending events", file=sys.stderr) as bar:
            _run_lines(engine, rulebook, stream, fmt, keep_going, clock, report, bar)
    else:
        _run_lines(engine, rulebook, stream, fmt, keep_going, clock, report, None)
    _run_summary(engine, rulebook, name, fmt, keep_going, report)


def _run_lines(
    engine: Engine,
    rulebook: Rulebook,
    stream: IO[bytes],
    fmt: str,
    keep_going: bool,
    clock: _RunClock,
    report: _RunReport,
    bar: Any,
) -> None:
    multi = len(rulebook.audiences) > 1
    known: set[BuddyKey] = set()
    for lineno, raw in enumerate(stream, start=1):
        if bar is not None:
            bar.update(1)
        if not raw.strip():
            continue
        try:
            data = _parse_line(raw, lineno)
            event = Event.from_dict(data)
            audience = event.audience if event.audience is not None else rulebook.default_audience
            clock.at = event.occurred_at
            if (
                not rulebook.auto_hatch
                and audience is not None
                and rulebook.is_registered(audience, event.type)
            ):
                key = BuddyKey(event.user_id, audience)
                if key not in known and engine.store.get_buddy(engine.tenant, key) is None:
                    # ConflictError: hatched meanwhile by another writer of the same store.
                    with contextlib.suppress(ConflictError):
                        engine.hatch(event.user_id, audience)
                known.add(key)
            effects = engine.send(data)
        except BuddyRulesError as exc:
            report.bad.append((lineno, exc))
            if fmt == "json":
                click.echo(_dumps({"kind": "error", "line": lineno, **exc.to_wire()}))
            if not keep_going:
                return
            continue
        finally:
            clock.at = None
        # The engine resolved the audience; an omitted one is the rulebook's only audience.
        resolved = audience if audience is not None else ""
        report.buddies[BuddyKey(event.user_id, resolved)] = None
        if effects.replayed:
            report.replayed += 1
        else:
            report.applied += 1
        if fmt == "json":
            record = {
                "kind": "effects",
                "line": lineno,
                "event_id": event.event_id,
                "user_id": event.user_id,
                "audience": resolved,
                "type": event.type,
                "effects": effects.to_wire(),
            }
            click.echo(_dumps(record))
        else:
            report.rows.append(_effects_row(lineno, event, resolved if multi else None, effects))


def _run_summary(
    engine: Engine,
    rulebook: Rulebook,
    name: str,
    fmt: str,
    keep_going: bool,
    report: _RunReport,
) -> None:
    multi = len(rulebook.audiences) > 1
    states = [engine.buddy(k.user_id, k.audience) for k in sorted(report.buddies, key=_key_order)]
    if fmt == "json":
        for state in states:
            record = {"kind": "buddy", **state.summary()}
            record["stage_name"] = _stage_label(engine, state).partition(" ")[2] or None
            record["rulebook_version"] = state.rulebook_version
            click.echo(_dumps(record))
    else:
        headers = ["line", "user", *(["audience"] if multi else []), "type", "coins"]
        headers += ["badges", "tokens", "milestones", "notes"]
        coins_col = 4 if multi else 3
        if report.rows:
            for line in _table(headers, report.rows, {0, coins_col}):
                click.echo(line)
            click.echo()
        if states:
            click.echo(f"buddies ({len(states)}):")
            bheaders = ["user", *(["audience"] if multi else []), "stage", "coins"]
            bheaders += ["tokens", "badges", "streaks"]
            rows = []
            for s in states:
                row = [s.user_id, *([s.audience] if multi else []), _stage_label(engine, s)]
                row += [str(s.coins), _tokens_text(s.tokens), _badges_text(s), _streaks_text(s)]
                rows.append(row)
            for line in _table(bheaders, rows, {3 if multi else 2}):
                click.echo(line)
            click.echo()
    stale = sum(1 for s in states if s.rulebook_version != rulebook.version)
    err = sys.stderr
    if stale:
        click.echo(
            f"note: {_plural(stale, 'buddy')} pinned to an earlier rulebook version "
            "(evaluated with it; use a fresh --db, or Engine.migrate)",
            file=err,
        )
    for lineno, exc in report.bad:
        click.echo(f"{name}:{lineno}: error[{exc.code}]: {exc.message}", file=err)
    summary = (
        f"{name}: {_plural(report.applied, 'event')} applied, {report.replayed} replayed, "
        f"{len(report.bad)} rejected; {_plural(len(states), 'buddy')}"
    )
    # The summary goes to stdout in table mode, to stderr with --format json (stdout is data).
    click.echo(summary, file=err if fmt == "json" else None)
    if report.bad and not keep_going:
        lineno = report.bad[0][0]
        done = report.applied + report.replayed
        raise CliError(
            f"stopped at {name} line {lineno} ({_plural(done, 'event')} before it sent; "
            "use --keep-going to skip invalid lines)",
            report.bad[0][1].code,
        )
    if report.bad:
        raise CliError(
            f"{_plural(len(report.bad), 'invalid line')} in {name}",
            None,
        )


def _key_order(key: BuddyKey) -> tuple[str, str]:
    return (key.user_id, key.audience)


# -- validate ----------------------------------------------------------------------------------

_SEGMENT = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def _segments(path: str) -> list[str | int]:
    out: list[str | int] = []
    for m in _SEGMENT.finditer(path):
        out.append(int(m.group(2)) if m.group(2) is not None else m.group(1))
    return out


class _Locator:
    """Finds where a problem path (``coin_rules[2].when``) sits in a rulebook file.

    For YAML it gives the line (from the node tree); for any format, the expression text so
    a column can be shown with a caret.
    """

    def __init__(self, path: str) -> None:
        self.root: yaml.Node | None = None
        self.data: Any = None
        if Path(path).suffix.lower() in (".yaml", ".yml"):
            try:
                self.root = yaml.compose(Path(path).read_text(encoding="utf-8"), yaml.SafeLoader)
            except (OSError, UnicodeDecodeError, yaml.YAMLError):
                self.root = None
        else:
            try:
                self.data = parse_rulebook_file(path)
            except BuddyRulesError:
                self.data = None

    def find(self, problem_path: str) -> tuple[int | None, str | None]:
        """``(line, scalar text)`` of the node at ``problem_path`` (either may be None)."""
        segs = _segments(problem_path)
        if self.root is not None:
            return self._find_yaml(segs)
        node: Any = self.data
        for seg in segs:
            found = (isinstance(seg, str) and isinstance(node, dict) and seg in node) or (
                isinstance(seg, int) and isinstance(node, list) and 0 <= seg < len(node)
            )
            if found:
                node = node[seg]
            else:
                return None, None
        return None, node if isinstance(node, str) else None

    def _find_yaml(self, segs: list[str | int]) -> tuple[int | None, str | None]:
        node = self.root
        line: int | None = None
        for seg in segs:
            if isinstance(node, yaml.MappingNode) and isinstance(seg, str):
                for k, v in node.value:
                    if isinstance(k, yaml.ScalarNode) and k.value == seg:
                        line = k.start_mark.line + 1
                        node = v
                        break
                else:
                    return line, None
            elif (
                isinstance(node, yaml.SequenceNode)
                and isinstance(seg, int)
                and 0 <= seg < len(node.value)
            ):
                node = node.value[seg]
                line = node.start_mark.line + 1
            else:
                return line, None
        text = node.value if isinstance(node, yaml.ScalarNode) else None
        return line, text if isinstance(text, str) else None


def _caret(text: str | None, column: Any) -> list[str]:
    if text is None or not isinstance(column, int) or "\n" in text:
        return []
    if not 1 <= column <= len(text) + 1:
        return []
    return [f"      {text}", f"      {' ' * (column - 1)}^"]


@cli.command(short_help="Check rulebook files: problems with path and column, then lint.")
@click.argument("rules", nargs=-1, required=True, metavar="RULES...")
def validate(rules: tuple[str, ...]) -> None:
    """Check rulebook files: every problem with its path and column, then lint findings.

    Errors (and lint errors) fail with exit 1; lint warnings are shown but do not fail.
    """
    failed = 0
    for path in rules:
        errors, _warnings = _validate_one(path)
        if errors:
            failed += 1
    if len(rules) > 1:
        ok = len(rules) - failed
        click.echo(f"{len(rules)} rulebooks: {ok} valid, {failed} invalid")
    if failed:
        sys.exit(1)


def _validate_one(path: str) -> tuple[int, int]:
    err = sys.stderr
    try:
        rulebook = load_rulebook(path)
    except ResourceNotFound as exc:
        click.echo(f"{path}: error[{exc.code}]: {exc.message}", file=err)
        return 1, 0
    except RulebookError as exc:
        locator = _Locator(path)
        for problem in exc.problems:
            line, text = locator.find(str(problem.get("path") or ""))
            if line is None:
                line = problem.get("line")
            where = f"{path}:{line}" if line is not None else path
            # The loader names the file in syntax errors; it is already at the line's start.
            problem = {**problem, "message": str(problem.get("message", ""))}
            problem["message"] = problem["message"].removeprefix(f"{path}: ")
            click.echo(f"{where}: error: {_format_problem(problem, with_line=False)}")
            for extra in _caret(text, problem.get("column")):
                click.echo(extra)
        n = len(exc.problems)
        click.echo(f"{path}: invalid ({_plural(n, 'error')})")
        return n, 0
    findings = lint_rulebook(rulebook)
    lint_locator = _Locator(path) if findings else None
    errors = warnings = 0
    for finding in findings:
        line = lint_locator.find(finding.path)[0] if lint_locator is not None else None
        where = f"{path}:{line}" if line is not None else path
        click.echo(f"{where}: {finding.severity}: {finding.path}: {finding.message}")
        if finding.severity == "error":
            errors += 1
        else:
            warnings += 1
    status = "invalid" if errors else "ok"
    click.echo(
        f"{path}: {status}: {rulebook.name!r} version {rulebook.version} "
        f"({_plural(errors, 'error')}, {_plural(warnings, 'warning')})"
    )
    return errors, warnings


# -- explain -----------------------------------------------------------------------------------


def _read_event_arg(value: str) -> dict[str, Any]:
    """EVENT: ``-`` (stdin), a file, or inline JSON."""
    if value == "-":
        text = sys.stdin.read()
        source = "stdin"
    elif value.lstrip().startswith("{"):
        text, source = value, "the inline EVENT"
    elif Path(value).is_file():
        try:
            text = Path(value).read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise CliError(f"{value}: not UTF-8 text", ValidationFailed.code) from None
        source = value
    else:
        raise CliError(
            f"EVENT {value!r} is not a file, `-` or a JSON object", ResourceNotFound.code
        )
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CliError(
            f"{source}: not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})",
            ValidationFailed.code,
        ) from None
    if not isinstance(data, dict):
        raise CliError(
            f"{source}: an event must be a JSON object, got {type(data).__name__}",
            ValidationFailed.code,
        )
    return data


def _read_state(path: str) -> BuddyState:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CliError(f"state file not found: {path}", ResourceNotFound.code) from None
    try:
        return BuddyState.model_validate_json(text)
    except ValidationError as exc:
        problems = [
            f"  {'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}"
            for e in exc.errors(include_url=False)
        ]
        raise CliError(
            f"{path}: not a BuddyState JSON document", ValidationFailed.code, lines=problems
        ) from None


def _value_text(value: Any) -> str:
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    return _dumps(value)


def _mapping_text(item: Any) -> str:
    if isinstance(item, str):
        return item
    if isinstance(item, dict):
        return " ".join(f"{k}={_value_text(v)}" for k, v in item.items())
    return _value_text(item)


_TRACE_KNOWN = {
    "kind",
    "rule",
    "fired",
    "reason",
    "reads",
    "amount",
    "credited",
    "multipliers",
    "problem",
    "outcome",
    "count",
}


def _trace_lines(trace: Sequence[Any]) -> list[str]:
    rows: list[tuple[str, str, str, str]] = []
    extras: list[list[str]] = []
    for entry in trace:
        entry = dict(entry)
        details: list[str] = []
        if entry.get("outcome") is not None:
            details.append(str(entry["outcome"]))
        if entry.get("count") is not None:
            details.append(f"count {entry['count']}")
        if "amount" in entry:
            amount, credited = entry.get("amount"), entry.get("credited")
            if credited is not None and credited != amount:
                details.append(f"amount {amount}, credited {credited}")
            else:
                details.append(f"amount {amount}")
        if entry.get("multipliers"):
            details.append("multiplied x" + " x".join(str(f) for f in entry["multipliers"]))
        if entry.get("reason"):
            details.append(str(entry["reason"]))
        rows.append(
            (
                str(entry.get("kind", "")),
                str(entry.get("rule", "")),
                "fired" if entry.get("fired") else "-",
                "; ".join(details),
            )
        )
        more: list[str] = []
        reads = entry.get("reads")
        if isinstance(reads, dict) and reads:
            more.append("reads " + ", ".join(f"{k} = {_value_text(v)}" for k, v in reads.items()))
        if entry.get("problem") and entry.get("problem") != entry.get("reason"):
            more.append(f"problem: {entry['problem']}")
        for key, value in entry.items():
            if key not in _TRACE_KNOWN:
                more.append(f"{key}: {_value_text(value)}")
        extras.append(more)
    widths = [max((len(r[i]) for r in rows), default=0) for i in range(3)]
    out: list[str] = []
    for row, more in zip(rows, extras, strict=True):
        head = "  ".join(row[i].ljust(widths[i]) for i in range(3))
        out.append(f"  {head}  {row[3]}".rstrip())
        indent = " " * (2 + widths[0] + 2 + widths[1] + 2)
        out.extend(f"{indent}{m}" for m in more)
    return out


def _effects_lines(effects: Effects) -> list[str]:
    wire = effects.to_wire(include_trace=False)
    core = CORE_KEYS
    out: list[str] = []
    width = max(len(k) for k in wire)
    for key in core:
        value = wire[key]
        if isinstance(value, list):
            text = ", ".join(_mapping_text(v) for v in value) if value else "-"
        elif value is None:
            text = "-"
        else:
            text = _value_text(value)
        out.append(f"  {key.ljust(width)}  {text}")
    for key, value in wire.items():
        if key in core or key == "rulebook_version" or value in (None, [], False):
            continue
        if isinstance(value, list):
            out.append(f"  {key.ljust(width)}  {_mapping_text(value[0])}")
            out.extend(f"  {''.ljust(width)}  {_mapping_text(v)}" for v in value[1:])
        else:
            out.append(f"  {key.ljust(width)}  {_value_text(value)}")
    return out


@cli.command(short_help="Trace how a rulebook handles one event (nothing is stored).")
@click.argument("rules", metavar="RULES")
@click.argument("event", metavar="EVENT")
@click.option(
    "--state",
    "state_path",
    metavar="STATE_JSON",
    help="A file with the buddy's state as JSON (e.g. from `buddyrules buddy --format json`). "
    "Default: a fresh buddy hatched at the event's time.",
)
@click.option(
    "--now",
    metavar="TIMESTAMP",
    callback=_timestamp_option,
    help="Time for an event without occurred_at (default: the current time).",
)
@click.option("--format", "fmt", type=_TEXT_FORMATS, default="text", show_default=True)
def explain(rules: str, event: str, state_path: str | None, now: datetime | None, fmt: str) -> None:
    """Show how RULES handles one EVENT: each rule fired or not, why, what it read.

    EVENT is a file, `-` for stdin, or inline JSON such as
    '{"user_id": "u1", "type": "lesson_completed", "properties": {"score": 0.95}}'.
    Nothing is stored: this runs the pure core (buddyrules.evaluate with explain=True), so
    registration and quota are not checked (an unregistered type is only counted, and a
    note says so).
    """
    rulebook = _load(rules)
    data = _read_event_arg(event)
    ev = Event.from_dict(data)
    err = sys.stderr
    audience: str | None
    if ev.occurred_at is None:
        ev = ev.replace(occurred_at=now if now is not None else datetime.now(UTC))
    assert ev.occurred_at is not None
    if state_path is not None:
        state = _read_state(state_path)
        if state.rulebook_version != rulebook.version:
            click.echo(
                f"note: the state is pinned to rulebook version {state.rulebook_version}; "
                f"evaluating it under {rules} (version {rulebook.version})",
                file=err,
            )
        audience = ev.audience if ev.audience is not None else state.audience
    else:
        audience = ev.audience if ev.audience is not None else rulebook.default_audience
        if audience is None:
            raise MissingAudience(
                "the event has no audience and the rulebook configures "
                f"{len(rulebook.audiences)} ({', '.join(rulebook.audiences)})"
            )
        if audience not in rulebook.audiences:
            raise UnknownAudience(
                f"unknown audience {audience!r} (configured: {', '.join(rulebook.audiences)})"
            )
        state = new_buddy(rulebook, ev.user_id, audience, hatched_at=ev.occurred_at)
    if audience in rulebook.audiences and not rulebook.is_registered(audience, ev.type):
        click.echo(
            f"note: event type {ev.type!r} is not registered for audience {audience!r}: "
            "the engine would reject it with event_type_not_registered",
            file=err,
        )
    outcome = evaluate(rulebook, state, ev, explain=True)
    trace = list(outcome.trace or ())
    if fmt == "json":
        click.echo(
            json.dumps(
                {
                    "event": ev.to_wire(),
                    "rulebook": {"name": rulebook.name, "version": rulebook.version},
                    "trace": trace,
                    "effects": outcome.effects.to_wire(include_trace=False),
                    "state": outcome.state.model_dump(mode="json"),
                },
                indent=2,
                ensure_ascii=False,
                default=_jsonable,
            )
        )
        return
    click.echo(f"event    {ev.type} for {ev.user_id} ({audience}) at {ev.occurred_at.isoformat()}")
    click.echo(f"rulebook {rulebook.name} (version {rulebook.version})")
    click.echo()
    click.echo("trace (in evaluation order):")
    lines = _trace_lines(trace)
    for line in lines or ["  (no rule is bound to this event type)"]:
        click.echo(line)
    click.echo()
    click.echo("effects:")
    for line in _effects_lines(outcome.effects):
        click.echo(line)
    click.echo()
    after = outcome.state
    click.echo(
        f"buddy after: stage {after.stage}, coins {after.coins}, "
        f"tokens {_tokens_text(after.tokens)}, badges {_badges_text(after)}"
    )


# -- schema ------------------------------------------------------------------------------------


@cli.command(short_help="Print the JSON Schema of the rulebook format.")
def schema() -> None:
    """Print the JSON Schema of the rulebook format (for editors and CI checks)."""
    click.echo(json.dumps(rulebook_json_schema(), indent=2, ensure_ascii=False))


# -- buddy -------------------------------------------------------------------------------------


@cli.command(short_help="Show a user's buddy from a SQLite store.")
@click.option("--db", "db", metavar="PATH", required=True, help="The SQLite file `run` wrote.")
@click.argument("user_id")
@click.option("--audience", help="The buddy's audience (needed when the user has several).")
@click.option("--tenant", default="default", show_default=True)
@click.option(
    "--format",
    "fmt",
    type=_TEXT_FORMATS,
    default="text",
    show_default=True,
    help="json prints the whole state (usable as `explain --state`).",
)
def buddy(db: str, user_id: str, audience: str | None, tenant: str, fmt: str) -> None:
    """Show USER_ID's buddy from a SQLite store."""
    if not Path(db).is_file():
        raise CliError(f"database file not found: {db}", ResourceNotFound.code)
    store = _sqlite_store(db)
    try:
        engine = _engine(store, tenant, None)
        state = engine.buddy(user_id, audience)
        if fmt == "json":
            click.echo(json.dumps(state.model_dump(mode="json"), indent=2, ensure_ascii=False))
            return
        for line in _buddy_lines(engine, state):
            click.echo(line)
    finally:
        store.close()


def _buddy_lines(engine: Engine, state: BuddyState) -> list[str]:
    try:
        rulebook: Rulebook | None = engine.rulebook(state.rulebook_version)
    except BuddyRulesError:
        rulebook = None
    skills = []
    for key, value in sorted(state.skills.items()):
        level = ""
        if rulebook is not None and key in rulebook.skills:
            level = f" (level {rulebook.skills[key].level_of(value)})"
        skills.append(f"{key} {value}{level}")
    paths = []
    for key, p in sorted(state.paths.items()):
        paths.append(
            f"{key}: completed {', '.join(p.completed) or '-'}; "
            f"unlocked {', '.join(p.unlocked) or '-'}"
        )
    rows = [
        ("rulebook", state.rulebook_version + (f" ({rulebook.name})" if rulebook else "")),
        ("stage", _stage_label(engine, state)),
        ("coins", str(state.coins)),
        ("tokens", _tokens_text(state.tokens)),
        ("skills", ", ".join(skills) or "-"),
        ("badges", ", ".join(state.badges) or "-"),
        ("ready", ", ".join(state.badges_ready) or "-"),
        ("streaks", _streaks_text(state)),
        ("paths", "; ".join(paths) or "-"),
        ("gates", ", ".join(state.gates) or "-"),
        ("counters", _join([f"{k}:{v}" for k, v in sorted(state.counters.items())])),
        ("hatched", state.hatched_at.isoformat() if state.hatched_at else "-"),
        ("last event", state.last_event_at.isoformat() if state.last_event_at else "-"),
        ("events", str(state.events_applied)),
    ]
    out = [f"buddy {state.user_id} ({state.audience})"]
    out.extend(f"  {k.ljust(10)}  {v}" for k, v in rows)
    return out


# -- migrate -----------------------------------------------------------------------------------


@cli.command(short_help="Create or upgrade a store's schema (SQLite or PostgreSQL).")
@click.option("--db", "db", metavar="PATH", help="A SQLite file (created if missing).")
@click.option(
    "--postgres",
    "dsn",
    metavar="DSN",
    help="A PostgreSQL connection string, e.g. postgresql://user@host:5432/dbname.",
)
@click.option(
    "--schema",
    "pg_schema",
    default="buddyrules",
    show_default=True,
    help="With --postgres: the PostgreSQL schema that holds the tables.",
)
def migrate(db: str | None, dsn: str | None, pg_schema: str) -> None:
    """Create or upgrade the store's schema (exactly one of --db or --postgres).

    Safe to run again: a schema already at the latest version is left alone. Run it once
    before starting app servers on PostgreSQL (SQLite files migrate themselves when opened).
    """
    if (db is None) == (dsn is None):
        raise click.UsageError("give exactly one of --db PATH or --postgres DSN")
    if dsn is not None:
        try:
            from buddyrules.storage.postgres import PostgresStore
        except ImportError as exc:
            raise CliError(
                f"PostgreSQL support is not part of this build ({exc})", exit_code=2
            ) from None
        # The pool logs every failed connection attempt; the one error at the end says it all.
        logging.getLogger("psycopg.pool").setLevel(logging.CRITICAL)
        try:
            store: Any = PostgresStore(dsn, schema=pg_schema, max_size=1, timeout=10.0)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--schema") from None
        target = f"PostgreSQL schema {pg_schema!r}"
    else:
        assert db is not None
        store = _sqlite_store(db)
        target = db
    try:
        run_migrations = getattr(store, "migrate", None)
        if callable(run_migrations):
            run_migrations()
        version = getattr(store, "schema_version", None)
        suffix = f" (schema version {version()})" if callable(version) else ""
        click.echo(f"{target}: schema is up to date{suffix}")
    finally:
        store.close()


# -- simulate, check: glue to the packages that do the work -----------------------------------


def _glue(module: str, name: str, command: str) -> Callable[..., Any]:
    try:
        mod = importlib.import_module(module)
    except ImportError as exc:
        raise CliError(
            f"`buddyrules {command}` is not available in this build ({exc})", exit_code=2
        ) from None
    func = getattr(mod, name, None)
    if func is None:
        raise CliError(
            f"`buddyrules {command}` is not available in this build ({module}.{name} is missing)",
            exit_code=2,
        )
    return func  # type: ignore[no-any-return]


def _exit_with(result: Any) -> None:
    if isinstance(result, bool) or result is None:
        code = 0 if result in (None, True) else 1
    elif isinstance(result, int):
        code = result
    else:
        code = 0
    if code:
        sys.exit(code)


@cli.command(
    short_help="Replay an event log under two rulebooks and compare.",
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
    add_help_option=False,
)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def simulate(args: tuple[str, ...]) -> None:
    """Replay an event log under two rulebooks and compare (simulate --help for options).

    Usage: buddyrules simulate --baseline A --candidate B EVENTS.jsonl [...]
    """
    command = _glue("buddyrules.simulate", "simulate_command", "simulate")
    if not isinstance(command, click.Command):
        raise CliError(
            "`buddyrules simulate` is not available in this build "
            "(buddyrules.simulate.simulate_command is not a click command)",
            exit_code=2,
        )
    # The simulate package owns its options; its command parses the rest of the line.
    _exit_with(
        command.main(args=list(args), prog_name="buddyrules simulate", standalone_mode=False)
    )


@cli.command(short_help="Property-check rulebooks with generated event histories.")
@click.argument("rules", nargs=-1, required=True, metavar="RULES...")
@click.option("--examples", type=click.IntRange(min=1), help="Histories to generate per rulebook.")
@click.option("--seed", type=int, help="Seed, for a reproducible run.")
@click.option(
    "--fail-on-problems",
    is_flag=True,
    help="Fail when a condition or amount cannot be evaluated on some generated event.",
)
def check(
    rules: tuple[str, ...], examples: int | None, seed: int | None, fail_on_problems: bool
) -> None:
    """Property-check rulebooks: generate event histories and test the invariants."""
    glue = _glue("buddyrules.testing.check", "cli_check", "check")
    kwargs: dict[str, Any] = {"seed": seed}
    if fail_on_problems:
        kwargs["fail_on_problems"] = True
    if examples is not None:
        kwargs["examples"] = examples
    _exit_with(glue(list(rules), **kwargs))


# -- serve ------------------------------------------------------------------------------------


@cli.command(short_help="Serve the events wire format over HTTP (needs uvicorn).")
@click.argument("rules", metavar="RULES")
@click.option("--db", type=click.Path(dir_okay=False), help="SQLite file (default: in memory).")
@click.option("--tenant", default="default", show_default=True, help="Tenant to serve.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535))
def serve(rules: str, db: str | None, tenant: str, host: str, port: int) -> None:
    """Publish RULES and serve POST /events, GET /buddies/{user_id} and GET /healthz.

    The app is :func:`buddyrules.server.create_app`; any ASGI server can run it. This command
    uses uvicorn (``pip install "buddyrules[server]"``).
    """
    try:
        import uvicorn
    except ImportError:
        raise CliError(
            'serving needs uvicorn: pip install "buddyrules[server]" (or run '
            "buddyrules.server.create_app(engine) under any ASGI server)",
            exit_code=2,
        ) from None
    from buddyrules.server import create_app

    rulebook = _load(rules)
    engine = _engine(_sqlite_store(db) if db else None, tenant, None)
    try:
        engine.publish(rulebook)
    except BuddyRulesError as exc:
        raise CliError.from_error(exc, rules) from None
    click.echo(f"serving {rulebook.name} ({rulebook.version}) on http://{host}:{port}", err=True)
    uvicorn.run(create_app(engine), host=host, port=port, log_level="info")
