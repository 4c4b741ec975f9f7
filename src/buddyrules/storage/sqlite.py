"""SQLiteStore: the default store, one SQLite file shared by threads and processes.

Design, in short (the reasons are next to the code):

* **Schema**: created on first open and versioned. ``schema_version`` records every migration
  applied; :data:`MIGRATIONS` is the ordered list of forward migrations, so a later release
  appends to it and an existing file is upgraded in place (once: a file already at the latest
  version runs nothing). A file written by a newer release is refused with a
  :class:`~buddyrules.errors.StoreError`.
* **Locking**: WAL journal mode (readers never block the writer, nor the writer the readers)
  and one ``BEGIN IMMEDIATE`` transaction per unit of work. ``BEGIN IMMEDIATE`` takes
  SQLite's write lock up front, which is what serialises a buddy's writers across threads
  *and* processes. SQLite's lock covers the whole database, so it is stronger than the
  per-buddy lock the store contract asks for: writers of *different* buddies also take turns
  (each holds the lock for well under a millisecond). Use
  :class:`~buddyrules.storage.postgres.PostgresStore` when many processes write at once.
* **Busy database**: each connection waits up to ``busy_timeout`` seconds for the lock
  (SQLite's own busy handler); if SQLite still answers ``SQLITE_BUSY`` / "database is locked"
  (or answers it at once, as it does in some WAL situations), the operation is retried up to
  ``max_retries`` times with jittered exponential backoff, and past that a
  :class:`~buddyrules.errors.StoreError` says the database stayed locked. Only operations that
  have not changed anything yet are retried (the ``BEGIN IMMEDIATE`` of a unit or a batch, and
  single-statement calls such as :meth:`SQLiteStore.reserve_quota`).
* **Threads**: each thread uses its own connection (``threading.local``), so one store object
  may be shared by any number of threads; a connection is closed when its thread ends (or on
  ``close()``). A process that forks gets fresh connections (SQLite connections must not
  cross a ``fork``). ``":memory:"`` is supported for tests and scripts:
  it is a private database file in a temporary directory, removed by ``close()`` (an SQLite
  in-memory database is one per connection, and its shared-cache variant has table locks
  that would make readers wait for writers).
* **Units hold their rows back**: a unit's state, receipt, ledger and outbox rows wait in
  Python and are written when it commits, one statement per table; a failing unit just drops
  them. Every unit runs under SQLite's write lock from its start, so what it read or checked
  (its buddy's row and receipt ids, read together in one statement) still holds then.
* **Units reuse the lookup's rows**: :meth:`SQLiteStore.lookup` outside a transaction
  remembers (per connection, only its last call) the buddy rows and receipt ids it read, with
  the connection's ``PRAGMA data_version`` read in (or before) the first of its statements. A
  unit under the write lock reads ``data_version`` once per transaction; unchanged means no
  other connection (thread, store or process) has committed since, so the unit's
  ``get_receipt`` / ``get_buddy`` answer from those rows without SQL. This connection's own
  commits leave the version as it is, so a row is forgotten as soon as a unit of this
  connection puts it (committed or not); a lookup inside a transaction (whose rows a rollback
  could undo) remembers nothing; a changed version drops everything remembered.
* **Batches**: inside :meth:`SQLiteStore.group` the thread opens one ``BEGIN IMMEDIATE``
  transaction; each unit that completes hands its rows to the group, a failing unit rolls back
  alone (its rows are dropped), and leaving the group writes the rows of every unit that
  succeeded (one ``executemany`` per table, the last state per buddy) and commits, also when
  the group exits with an exception (SPEC §1: events before the failing one stay committed). A
  batch of 100 events is then a handful of statements and one commit, not 100.
* **Packed rows** (schema version 2): a unit's ledger entries for its buddy are one ledger
  row, its messages one outbox row (ids ``id .. id + n - 1``, a message's acknowledgement a
  bit of the row's ``pending`` mask), and a receipt's effects with the Engine's keys are
  stored as their values only. A single send writes 7 pages (quota, buddy, receipt, ledger
  and outbox rows, their two indexes), a batch one row per event and table. Per-event
  statements run on one cursor per connection, and a unit skips reading the quota row when
  its connection committed it last (checked like the lookup's rows).
* **Durability**: ``synchronous=NORMAL`` (the default) with WAL never syncs on commit, only at
  checkpoints. A committed transaction survives a crash of the process (even ``SIGKILL``); a
  power loss or an operating-system crash may lose the last transactions committed before it,
  but never corrupts the file or keeps half of a transaction. ``synchronous="FULL"`` syncs the
  WAL on every commit (durable against power loss) at the cost of one fsync per unit of work,
  or one per batch inside :meth:`SQLiteStore.group`. ``benchmarks/stores.py`` measures both.
* **Uniqueness**: a buddy per ``(tenant, user_id, audience)`` and a receipt per
  ``(tenant, event_id)`` are primary keys; a duplicate receipt becomes
  :class:`~buddyrules.errors.ConflictError`. Quota is reserved by one UPSERT statement that
  also checks the limit, so it is atomic without any lock held in Python.

Requires SQLite 3.35 or newer (``RETURNING``); Python 3.11 ships newer builds.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import sqlite3
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from operator import attrgetter
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar, Final, Literal, TypeVar

from pydantic_core import PydanticSerializationError, to_json

from buddyrules.effects import Effects
from buddyrules.errors import ConflictError, StoreError
from buddyrules.state import BuddyState
from buddyrules.storage.protocols import (
    BuddyKey,
    LedgerRecord,
    OutboxMessage,
    Receipt,
    RulebookRecord,
)

__all__ = ["CHECKPOINT_INTERVAL", "MIGRATIONS", "Migration", "SQLiteStore"]

_T = TypeVar("_T")

Synchronous = Literal["NORMAL", "FULL"]


@dataclass(frozen=True, slots=True)
class Migration:
    """One forward schema migration: the statements that take a database to ``version``.

    Migrations are applied in order, each in the same transaction as the ``schema_version``
    row that records it, so a migration is applied completely or not at all.
    """

    version: int
    description: str
    statements: tuple[str, ...]


MIGRATIONS: Final[tuple[Migration, ...]] = (
    Migration(
        1,
        "initial schema: buddies, receipts, quota, rulebooks, ledger, outbox",
        (
            # WITHOUT ROWID: these tables are always read by their primary key.
            """CREATE TABLE buddies (
                tenant TEXT NOT NULL,
                user_id TEXT NOT NULL,
                audience TEXT NOT NULL,
                state TEXT NOT NULL,
                PRIMARY KEY (tenant, user_id, audience)
            ) WITHOUT ROWID""",
            """CREATE TABLE receipts (
                tenant TEXT NOT NULL,
                event_id TEXT NOT NULL,
                fingerprint TEXT NOT NULL,
                user_id TEXT NOT NULL,
                audience TEXT NOT NULL,
                effects TEXT NOT NULL,
                PRIMARY KEY (tenant, event_id)
            ) WITHOUT ROWID""",
            """CREATE TABLE quota (
                tenant TEXT NOT NULL,
                month TEXT NOT NULL,
                used INTEGER NOT NULL CHECK (used >= 0),
                PRIMARY KEY (tenant, month)
            ) WITHOUT ROWID""",
            # The rowid orders records by first insertion (list_rulebooks: oldest first);
            # an UPSERT keeps it.
            """CREATE TABLE rulebooks (
                seq INTEGER PRIMARY KEY,
                tenant TEXT NOT NULL,
                version TEXT NOT NULL,
                name TEXT NOT NULL,
                status TEXT NOT NULL CHECK (status IN ('draft', 'published', 'archived')),
                document TEXT NOT NULL,
                sequence INTEGER NOT NULL DEFAULT 0,
                published_at TEXT,
                extra TEXT NOT NULL DEFAULT '{}',
                UNIQUE (tenant, version)
            )""",
            # Ids are references handed to the host app (ledger audits, outbox acknowledgements)
            # and must never be reused. Rows of these two tables are never deleted (acknowledged
            # messages are marked, not removed), so the rowid (max + 1) never repeats; this
            # saves AUTOINCREMENT's extra page write per transaction.
            """CREATE TABLE ledger (
                id INTEGER PRIMARY KEY,
                tenant TEXT NOT NULL,
                user_id TEXT NOT NULL,
                audience TEXT NOT NULL,
                currency TEXT NOT NULL,
                amount INTEGER NOT NULL,
                balance_after INTEGER NOT NULL,
                reason TEXT NOT NULL,
                reference TEXT,
                at TEXT NOT NULL
            )""",
            "CREATE INDEX ledger_by_buddy ON ledger (tenant, user_id, audience, id)",
            "CREATE INDEX ledger_by_tenant ON ledger (tenant, id)",
            """CREATE TABLE outbox (
                id INTEGER PRIMARY KEY,
                tenant TEXT NOT NULL,
                type TEXT NOT NULL,
                user_id TEXT NOT NULL,
                audience TEXT NOT NULL,
                payload TEXT NOT NULL,
                at TEXT NOT NULL,
                acked_at TEXT
            )""",
            "CREATE INDEX outbox_pending ON outbox (tenant, id) WHERE acked_at IS NULL",
        ),
    ),
    Migration(
        2,
        "packed ledger and outbox rows (a unit's entries or messages for one buddy in one row); "
        "no ledger_by_tenant index",
        (
            # One row per run of entries (a unit's entries for one buddy, with one reference
            # and time): one table row and one index entry per event instead of one of each
            # per entry, and one less index to keep. ``entries`` is one flat JSON array,
            # [currency, amount, balance_after, reason, currency, ...] (cheaper to build than
            # nested ones). Entry ids are id .. id + n - 1; a new row's id is the last row's
            # id + n (rows are never deleted, so ids never repeat). ledger(tenant) reads the
            # tenant's rows and sorts them by id.
            """CREATE TABLE ledger_v2 (
                id INTEGER PRIMARY KEY,
                tenant TEXT NOT NULL,
                user_id TEXT NOT NULL,
                audience TEXT NOT NULL,
                reference TEXT,
                at TEXT NOT NULL,
                n INTEGER NOT NULL CHECK (n >= 1),
                entries TEXT NOT NULL
            )""",
            "INSERT INTO ledger_v2 (id, tenant, user_id, audience, reference, at, n, entries) "
            "SELECT id, tenant, user_id, audience, reference, at, 1, "
            "json_array(currency, amount, balance_after, reason) FROM ledger",
            "DROP TABLE ledger",
            "ALTER TABLE ledger_v2 RENAME TO ledger",
            "CREATE INDEX ledger_by_buddy ON ledger (tenant, user_id, audience, id)",
            # The same for messages, ``messages`` = [type, payload, type, payload, ...]: ids
            # id .. id + n - 1, and ``pending`` has bit k set while message id + k is not
            # acknowledged (so n <= 62). The partial index holds the rows with a pending
            # message.
            """CREATE TABLE outbox_v2 (
                id INTEGER PRIMARY KEY,
                tenant TEXT NOT NULL,
                user_id TEXT NOT NULL,
                audience TEXT NOT NULL,
                at TEXT NOT NULL,
                n INTEGER NOT NULL CHECK (n BETWEEN 1 AND 62),
                pending INTEGER NOT NULL,
                messages TEXT NOT NULL
            )""",
            "INSERT INTO outbox_v2 (id, tenant, user_id, audience, at, n, pending, messages) "
            "SELECT id, tenant, user_id, audience, at, 1, acked_at IS NULL, "
            "json_array(type, json(payload)) FROM outbox",
            "DROP TABLE outbox",
            "ALTER TABLE outbox_v2 RENAME TO outbox",
            "CREATE INDEX outbox_pending ON outbox (tenant, id) WHERE pending != 0",
        ),
    ),
)

_MIN_SQLITE: Final = (3, 35, 0)
_BUSY_CODES: Final = frozenset({5, 6})  # SQLITE_BUSY, SQLITE_LOCKED (primary result codes)
_BUSY_WORDS: Final = ("database is locked", "database is busy", "database table is locked")
_BACKOFF_BASE: Final = 0.01
_BACKOFF_CAP: Final = 0.5
_PAGE: Final = 500
_STATE_CACHE_SIZE: Final = 4096
# _Connection.memo_state (see _Connection.recall).
_MEMO_UNUSABLE: Final = 0
_MEMO_UNCHECKED: Final = 1
_MEMO_VALID: Final = 2
# A missing entry in the remembered rows (None means "remembered as absent").
_UNKNOWN: Final[Any] = object()
# Checkpoints (copying the WAL back into the database file, with two fsyncs) run on a
# background thread every CHECKPOINT_INTERVAL seconds. Left to SQLite, the commit that crosses
# the auto-checkpoint threshold does it and waits for the fsyncs: measured, the median commit
# took 30 us and the mean 124 us, three quarters of it in those 1% of commits. Writers keep
# an auto-checkpoint threshold as a safety net (16000 pages, 64 MiB) in case the background
# thread falls behind or is disabled; then it is 4000 pages, where hot pages (a buddy's row,
# the ledger's tail) are copied once per checkpoint instead of four times (SQLite's default is
# 1000). After a checkpoint the WAL file is truncated back to 64 MiB if a burst made it larger.
CHECKPOINT_INTERVAL: Final = 0.1
_WAL_AUTOCHECKPOINT: Final = 4000
_WAL_AUTOCHECKPOINT_WITH_THREAD: Final = 16000
_JOURNAL_SIZE_LIMIT: Final = 64 * 1024 * 1024
_log = logging.getLogger(__name__)

# Bumped in a child process after a fork. Connections remember the generation they were opened
# in, so finding this thread's connection needs no getpid() system call (which is not cached
# by the C library and costs about 0.3 us, three times per event).
_fork_generation = 0
# SQLite's own mutexes do not survive a fork: a child forked while another thread was inside
# SQLite inherits them locked and hangs in its first sqlite3.connect (seen about once in 200
# forks with the checkpoint thread running). The checkpoint threads, which the application does
# not know about, hold this lock while they call SQLite, and a fork waits for it.
_CHECKPOINT_CALLS = threading.Lock()


def _before_fork() -> None:
    _CHECKPOINT_CALLS.acquire()


def _after_fork_in_parent() -> None:
    _CHECKPOINT_CALLS.release()


def _after_fork_in_child() -> None:
    global _fork_generation
    _fork_generation += 1
    _CHECKPOINT_CALLS.release()


os.register_at_fork(
    before=_before_fork,
    after_in_parent=_after_fork_in_parent,
    after_in_child=_after_fork_in_child,
)

_SQL_SCHEMA_TABLE: Final = """CREATE TABLE IF NOT EXISTS schema_version (
    version INTEGER PRIMARY KEY,
    description TEXT NOT NULL,
    applied_at TEXT NOT NULL
)"""
_SQL_GET_BUDDY: Final = (
    "SELECT state FROM buddies WHERE tenant = ? AND user_id = ? AND audience = ?"
)
_SQL_PUT_BUDDY: Final = (
    "INSERT INTO buddies (tenant, user_id, audience, state) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (tenant, user_id, audience) DO UPDATE SET state = excluded.state"
)
_SQL_GET_RECEIPT: Final = (
    "SELECT event_id, fingerprint, user_id, audience, effects FROM receipts "
    "WHERE tenant = ? AND event_id = ?"
)
_SQL_HAS_RECEIPT: Final = "SELECT 1 FROM receipts WHERE tenant = ? AND event_id = ?"
# A unit's receipt (usually absent) and its buddy's row in one statement: exactly one row,
# with NULL receipt columns when there is no receipt and a NULL state when no buddy.
_SQL_GET_RECEIPT_AND_BUDDY: Final = (
    "SELECT r.event_id, r.fingerprint, r.user_id, r.audience, r.effects, "
    "(SELECT state FROM buddies WHERE tenant = ?1 AND user_id = ?3 AND audience = ?4) "
    "FROM (SELECT 1) LEFT JOIN receipts AS r ON r.tenant = ?1 AND r.event_id = ?2"
)
# The same for a single send's lookup, with this connection's ``PRAGMA data_version`` read in
# the same statement, hence in the same read transaction (snapshot) as the rows: what a later
# unit compares to know that the rows are still current (see _Connection.recall).
_SQL_LOOKUP_ONE: Final = (
    "SELECT r.event_id, r.fingerprint, r.user_id, r.audience, r.effects, "
    "(SELECT state FROM buddies WHERE tenant = ?1 AND user_id = ?3 AND audience = ?4), "
    "(SELECT data_version FROM pragma_data_version) "
    "FROM (SELECT 1) LEFT JOIN receipts AS r ON r.tenant = ?1 AND r.event_id = ?2"
)
_SQL_DATA_VERSION: Final = "PRAGMA data_version"
# Several buddies or receipts by key (SQLiteStore.lookup): the keys are a VALUES list joined
# to the table, each key one primary-key search. A row-value ``IN (VALUES ...)`` would be
# simpler, but SQLite's planner then scans the tenant's whole key range (measured: 3.6 ms for
# 100 keys, against 0.2 ms for the join). CROSS JOIN pins the key list as the outer loop.
# The list length is rounded up to a power of two up to 8 and to a multiple of 8 above
# (padded with NULLs, which match nothing), so 19 statement texts per table serve every
# batch size from the statement cache. (Each NULL costs about 3k instructions to bind:
# sqlite3 looks for an adapter for None. Powers of two padded a batch of 100 with 52.)
_LOOKUP_CHUNK: Final = 128  # keys per statement: 2 * 128 + 1 variables, well below 999


def _sql_lookup_buddies(size: int) -> str:
    keys = ", ".join(["(?, ?)"] * size)
    return (
        f"SELECT b.user_id, b.audience, b.state FROM (VALUES {keys}) AS k "
        "CROSS JOIN buddies AS b "
        "ON b.tenant = ? AND b.user_id = k.column1 AND b.audience = k.column2"
    )


def _sql_lookup_receipts(size: int) -> str:
    ids = ", ".join(["(?)"] * size)
    return (
        f"SELECT r.event_id, r.fingerprint, r.user_id, r.audience, r.effects "
        f"FROM (VALUES {ids}) AS k CROSS JOIN receipts AS r "
        "ON r.tenant = ? AND r.event_id = k.column1"
    )


_LOOKUP_SIZES: Final = (1, 2, 4, *range(8, _LOOKUP_CHUNK + 1, 8))
_SQL_LOOKUP_BUDDIES: Final = {size: _sql_lookup_buddies(size) for size in _LOOKUP_SIZES}
_SQL_LOOKUP_RECEIPTS: Final = {size: _sql_lookup_receipts(size) for size in _LOOKUP_SIZES}


def _lookup_size(count: int) -> int:
    """The statement size for ``count`` keys (1 <= count <= _LOOKUP_CHUNK), in _LOOKUP_SIZES."""
    return 1 << (count - 1).bit_length() if count <= 8 else (count + 7) & ~7


_SQL_PUT_RECEIPT: Final = (
    "INSERT INTO receipts (tenant, event_id, fingerprint, user_id, audience, effects) "
    "VALUES (?, ?, ?, ?, ?, ?)"
)
# A row's id follows the last row's entries (see MIGRATIONS[1]); found under the write lock
# that every unit holds, so two writers cannot pick the same one.
_SQL_PUT_LEDGER: Final = (
    "INSERT INTO ledger (id, tenant, user_id, audience, reference, at, n, entries) VALUES "
    "(coalesce((SELECT id + n FROM ledger ORDER BY id DESC LIMIT 1), 1), ?, ?, ?, ?, ?, ?, ?)"
)
_SQL_PUT_OUTBOX: Final = (
    "INSERT INTO outbox (id, tenant, user_id, audience, at, n, pending, messages) VALUES "
    "(coalesce((SELECT id + n FROM outbox ORDER BY id DESC LIMIT 1), 1), ?, ?, ?, ?, ?, ?, ?)"
)
# The keys of the effects the Engine stores in a receipt (``Effects.to_wire`` without a
# trace), in their order. Since schema version 2, effects with exactly these keys are stored
# as a JSON array of the values (257 -> 75 bytes for a typical event, about half of a
# receipt row); any other dict as a JSON object. This is a stored format: never change it
# (a later release with other keys stores objects, or adds a second shape).
_EFFECTS_KEYS: Final = (
    "coins",
    "badges_awarded",
    "badges_ready",
    "tokens",
    "evolution_ready",
    "streak_milestones",
    "debug_reason",
    "skills",
    "streaks",
    "evolved_to",
    "paths",
    "problems",
    "replayed",
    "rulebook_version",
)
# The same values read off an Effects, while its wire dict has exactly these keys (its fields
# have their names); a release whose Effects has other keys stores the wire dict instead.
_effect_values: Final = attrgetter(*_EFFECTS_KEYS)
_EFFECTS_AS_VALUES: Final = tuple(Effects().to_wire(include_trace=False)) == _EFFECTS_KEYS
# Most messages a packed outbox row holds (one bit each in ``pending``).
_OUTBOX_RUN: Final = 62
# Acknowledges message ?1 of tenant ?2: the row that holds it is the tenant's last row with a
# pending message at or before it (through the partial index); a row comes back only when
# the message was pending.
_SQL_ACK_OUTBOX: Final = (
    "UPDATE outbox SET pending = pending & ~(1 << (?1 - id)) "
    "WHERE id = (SELECT id FROM outbox WHERE tenant = ?2 AND pending != 0 AND id <= ?1 "
    "ORDER BY id DESC LIMIT 1) AND ?1 < id + n AND (pending >> (?1 - id)) & 1 "
    "RETURNING id"
)
# The limit check is part of the UPSERT: a first reservation above the limit inserts nothing
# (the SELECT yields no row) and a later one updates nothing (the DO UPDATE ... WHERE fails),
# so either way no row comes back and nothing is reserved.
_SQL_RESERVE_QUOTA: Final = (
    "INSERT INTO quota (tenant, month, used) "
    "SELECT ?1, ?2, ?3 WHERE ?4 IS NULL OR ?3 <= ?4 "
    "ON CONFLICT (tenant, month) DO UPDATE SET used = used + excluded.used "
    "WHERE ?4 IS NULL OR used + excluded.used <= ?4 "
    "RETURNING used"
)
# A unit holds the write lock, so it reads the usage and writes the new value in two plain
# statements (RETURNING costs more than the read: measured 18 us for the UPSERT with named
# parameters, 13 us positional, 9 us for these two).
_SQL_GET_QUOTA: Final = "SELECT used FROM quota WHERE tenant = ? AND month = ?"
_SQL_SET_QUOTA: Final = "UPDATE quota SET used = ? WHERE tenant = ? AND month = ?"
_SQL_NEW_QUOTA: Final = "INSERT INTO quota (tenant, month, used) VALUES (?, ?, ?)"
_SQL_RELEASE_QUOTA: Final = (
    "UPDATE quota SET used = max(used - ?, 0) WHERE tenant = ? AND month = ?"
)
_SQL_LEDGER_COLUMNS: Final = "SELECT id, user_id, audience, reference, at, entries FROM ledger "
_SQL_RULEBOOK_COLUMNS: Final = (
    "SELECT version, name, status, document, sequence, published_at, extra FROM rulebooks "
)


def _dumps(value: Any) -> str:
    """Compact JSON text (pydantic-core's encoder: about 4x faster than ``json.dumps``)."""
    return to_json(value).decode()


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


def _is_busy(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    if isinstance(code, int):
        return (code & 0xFF) in _BUSY_CODES
    text = str(exc).lower()
    return any(word in text for word in _BUSY_WORDS)


def _backoff(attempt: int) -> float:
    # Full jitter: processes that collided once should not collide again in lockstep.
    return random.uniform(0.0, min(_BACKOFF_CAP, _BACKOFF_BASE * (2**attempt)))


def _chunks(values: list[Any], size: int) -> Iterator[list[Any]]:
    """A flat JSON array of records (see MIGRATIONS[1]) as one list per record."""
    return (values[i : i + size] for i in range(0, len(values), size))


def _ledger_records(rows: Sequence[tuple[Any, ...]]) -> list[LedgerRecord]:
    """The entries of packed ledger rows ``(id, user_id, audience, reference, at, entries)``."""
    out: list[LedgerRecord] = []
    for first, user_id, audience, reference, at, entries in rows:
        when = datetime.fromisoformat(at)
        out += [
            LedgerRecord(
                id=first + k,
                user_id=user_id,
                audience=audience,
                currency=currency,
                amount=amount,
                balance_after=balance_after,
                reason=reason,
                reference=reference,
                at=when,
            )
            for k, (currency, amount, balance_after, reason) in enumerate(
                _chunks(json.loads(entries), 4)
            )
        ]
    return out


def _rulebook_record(row: tuple[Any, ...]) -> RulebookRecord:
    return RulebookRecord(
        version=row[0],
        name=row[1],
        status=row[2],
        document=json.loads(row[3]),
        sequence=row[4],
        published_at=None if row[5] is None else datetime.fromisoformat(row[5]),
        extra=json.loads(row[6]),
    )


class _StateCache:
    """Parsed states by key, with the JSON text they were parsed from (or written as).

    A read reuses the parsed state only when the stored text is identical, so the cache can
    never be stale, whoever (thread or process) wrote the row; BuddyState is immutable, so
    sharing one instance is safe. It saves a JSON parse (tens of microseconds) per read.
    Bounded: cleared when full. Safe to share between threads (single dict operations).
    """

    __slots__ = ("_states",)

    def __init__(self) -> None:
        self._states: dict[tuple[str, str, str], tuple[str, BuddyState]] = {}

    def parsed(self, ident: tuple[str, str, str], text: str) -> BuddyState:
        """The state stored as ``text`` for ``ident`` (parsed once, then reused)."""
        cached = self._states.get(ident)
        if cached is not None and cached[0] == text:
            return cached[1]
        state = BuddyState.model_validate_json(text)
        self.remember(ident, text, state)
        return state

    def remember(self, ident: tuple[str, str, str], text: str, state: BuddyState) -> None:
        """Cache ``state`` as the parse of ``text``."""
        states = self._states
        if len(states) >= _STATE_CACHE_SIZE:
            states.clear()
        states[ident] = (text, state)


class _Pending:
    """Rows written by units of work and not yet sent to SQLite (see :class:`_SQLiteUnit`).

    ``buddies`` keeps only the last state put per key (only that one is ever stored), rows of
    the ledger and the outbox keep their order (their ids follow it), ``receipts`` holds the
    full receipt rows by ``(tenant, event_id)``. A ledger row is ``(tenant, user_id,
    audience, reference, at, n, entries)`` and an outbox row ``(tenant, user_id, audience,
    at, n, pending, messages)``, packed as stored (see MIGRATIONS[1]).
    """

    __slots__ = ("buddies", "ledger", "outbox", "receipts")

    def __init__(self) -> None:
        self.buddies: dict[tuple[str, str, str], BuddyState] = {}
        self.ledger: list[tuple[Any, ...]] = []
        self.outbox: list[tuple[Any, ...]] = []
        self.receipts: dict[tuple[str, str], tuple[Any, ...]] = {}

    def __bool__(self) -> bool:
        return bool(self.buddies or self.ledger or self.outbox or self.receipts)

    def add_messages(
        self, tenant: str, user_id: str, audience: str, at: str, n: int, messages: str
    ) -> None:
        """Add one outbox row of ``n`` (at most _OUTBOX_RUN) messages, flat JSON ``[type,
        payload, ...]``; joined to the previous row when that one is of the same buddy and
        time and has room (a hatch message and its event's notifications)."""
        rows = self.outbox
        if rows:
            last = rows[-1]
            total = last[4] + n
            if (
                total <= _OUTBOX_RUN
                and last[3] == at
                and last[1] == user_id
                and last[2] == audience
                and last[0] == tenant
            ):
                rows[-1] = (
                    tenant,
                    user_id,
                    audience,
                    at,
                    total,
                    (1 << total) - 1,
                    f"{last[6][:-1]},{messages[1:]}",
                )
                return
        rows.append((tenant, user_id, audience, at, n, (1 << n) - 1, messages))

    def absorb(self, other: _Pending) -> None:
        """Take over the rows of a unit that completed inside this one (or inside a group)."""
        if other.buddies:
            self.buddies.update(other.buddies)
        if other.ledger:
            self.ledger += other.ledger
        if other.outbox:
            self.outbox += other.outbox
        if other.receipts:
            self.receipts.update(other.receipts)

    def clear(self) -> None:
        """Forget every row."""
        self.buddies.clear()
        self.ledger.clear()
        self.outbox.clear()
        self.receipts.clear()


class _Connection:
    """A connection, the transaction bookkeeping of the thread that uses it, and its cache."""

    __slots__ = (
        "absent",
        "at_memo",
        "cur",
        "db",
        "fork_generation",
        "group_depth",
        "group_lost",
        "group_pending",
        "memo_buddies",
        "memo_quota",
        "memo_receipts",
        "memo_state",
        "memo_version",
        "pid",
        "states",
        "units",
    )

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db
        # One cursor for the per-event statements: Connection.execute makes a cursor per
        # call (measured: 1.3k of the 12-14k instructions of a one-row SELECT). Every
        # statement run on it is read to its end (or is not a query) before the next one.
        self.cur = db.cursor()
        self.pid = os.getpid()
        self.fork_generation = _fork_generation
        self.group_depth = 0
        # Set when SQLite rolled back a batch transaction on its own (disk full, I/O error):
        # the units committed "so far" in the group are gone and leaving the group says so.
        self.group_lost = False
        # The rows of the units a group has completed so far, written when the group ends
        # (None outside a group that owns its transaction).
        self.group_pending: _Pending | None = None
        # The pending rows of the open units of this thread, innermost last.
        self.units: list[_Pending] = []
        # Receipt ids (tenant, event_id) read as absent in the current write transaction.
        # While the transaction holds SQLite's write lock, nobody else can add them, so
        # put_receipt needs no second look (see _SQLiteUnit.put_receipt).
        self.absent: set[tuple[str, str]] = set()
        # The last datetime written and its ISO text: an event's ledger and outbox rows share
        # one ``at`` object, so it is formatted once.
        self.at_memo: tuple[datetime | None, str] = (None, "")
        self.states = _StateCache()
        # What the last lookup outside a transaction read (see _Connection.recall): each
        # buddy's stored text and each receipt's row by key (None: absent), and the
        # ``PRAGMA data_version`` read no later than those rows (None: nothing remembered).
        self.memo_version: int | None = None
        self.memo_buddies: dict[tuple[str, str, str], str | None] = {}
        self.memo_receipts: dict[tuple[str, str], tuple[Any, ...] | None] = {}
        # Quota usage by (tenant, month) as this connection's own units committed it, while
        # no other connection has committed since ``memo_version`` (see reserve_quota).
        self.memo_quota: dict[tuple[str, str], int] = {}
        # _MEMO_UNUSABLE outside a write transaction this store began; _MEMO_UNCHECKED in one
        # whose data_version is not compared yet; _MEMO_VALID once it matched.
        self.memo_state = _MEMO_UNUSABLE

    def iso(self, moment: datetime) -> str:
        """``moment.isoformat()``, reused while the same object comes back."""
        memo = self.at_memo
        if memo[0] is moment:
            return memo[1]
        text = moment.isoformat()
        self.at_memo = (moment, text)
        return text

    def end_transaction(self) -> None:
        """Forget what was known inside the write transaction that just ended."""
        self.absent.clear()
        self.memo_state = _MEMO_UNUSABLE

    def began_transaction(self) -> None:
        """This store's ``BEGIN IMMEDIATE`` just took the write lock on this connection."""
        self.absent.clear()
        self.memo_state = _MEMO_UNCHECKED

    def remember(
        self,
        version: int,
        buddies: dict[tuple[str, str, str], str | None],
        receipts: dict[tuple[str, str], tuple[Any, ...] | None],
    ) -> None:
        """Keep what a lookup outside any transaction read (replacing the previous lookup's).

        ``version`` is the ``data_version`` read in the lookup's first statement or before it.
        The quota usage this connection committed stays only if nobody else has committed
        since the version it was checked against (the same version).
        """
        if version != self.memo_version:
            self.memo_quota = {}
        self.memo_version = version
        self.memo_buddies = buddies
        self.memo_receipts = receipts

    def forget(self) -> None:
        """Drop every remembered row."""
        self.memo_version = None
        self.memo_buddies = {}
        self.memo_receipts = {}
        self.memo_quota = {}

    def recall(self) -> bool:
        """True when the remembered rows are what the database holds now (bar own writes).

        Only inside a write transaction this store began (``BEGIN IMMEDIATE``: the snapshot
        is the latest and nobody else can commit until it ends). ``PRAGMA data_version``
        changes, for this connection, exactly when another connection has committed since
        it last read; this connection's own commits leave it as it is, which is why every
        row this connection writes (or holds back to write) is forgotten when it is put (see
        _SQLiteUnit.put_buddy and put_receipt). So an unchanged version means the rows
        remembered, read no earlier than that version, are still the stored ones. Compared
        once per transaction; on a change, everything remembered is dropped. Raises
        sqlite3.Error.
        """
        state = self.memo_state
        if state == _MEMO_VALID:
            return self.db.in_transaction
        if state == _MEMO_UNUSABLE or self.memo_version is None or not self.db.in_transaction:
            return False
        version = self.cur.execute(_SQL_DATA_VERSION).fetchone()[0]
        if version == self.memo_version:
            self.memo_state = _MEMO_VALID
            return True
        self.forget()
        self.memo_state = _MEMO_UNUSABLE
        return False


class _Checkpointer:
    """A daemon thread running ``PRAGMA wal_checkpoint(PASSIVE)`` every ``interval`` seconds.

    PASSIVE checkpoints never wait for, nor block, readers and writers; when another process's
    checkpointer is at work, this one just tries again next time. The thread holds no
    reference to the store, only the file's path.
    """

    __slots__ = ("_stop", "_thread", "pid")

    def __init__(self, path: str, synchronous: str, interval: float) -> None:
        self.pid = os.getpid()
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=_checkpoint_loop,
            args=(path, synchronous, interval, self._stop),
            name="buddyrules-sqlite-checkpoint",
            daemon=True,
        )
        self._thread.start()

    def stop(self, wait: bool = True) -> None:
        """Stop the thread (after its current checkpoint, if one is running)."""
        self._stop.set()
        if wait and self._thread is not threading.current_thread():
            self._thread.join(timeout=10)


def _checkpoint_loop(path: str, synchronous: str, interval: float, stop: threading.Event) -> None:
    try:
        with _CHECKPOINT_CALLS:
            db = sqlite3.connect(path, timeout=0, isolation_level=None, check_same_thread=False)
            # The checkpoint syncs the WAL and the database file as the store's mode says.
            db.execute(f"PRAGMA synchronous = {synchronous}")
    except sqlite3.Error as exc:
        _log.warning("no background checkpoints for %s (writers will checkpoint): %s", path, exc)
        return
    try:
        while not stop.wait(interval):
            try:
                with _CHECKPOINT_CALLS:
                    db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            except sqlite3.Error as exc:
                # Busy (another process is checkpointing) or a passing I/O error: the next
                # round tries again, and writers still checkpoint past their threshold.
                _log.debug("background checkpoint of %s skipped: %s", path, exc)
    finally:
        with _CHECKPOINT_CALLS:
            db.close()


class _Slot:
    """This thread's connection, held only by the thread's local storage."""

    __slots__ = ("__weakref__", "conn")

    def __init__(self, conn: _Connection) -> None:
        self.conn = conn


def _retire(connections: list[_Connection], lock: threading.Lock, conn: _Connection) -> None:
    """Close the connection of a thread that ended (unless the store closed it already)."""
    with lock:
        if conn not in connections:
            return
        connections.remove(conn)
    if conn.pid == os.getpid():
        conn.db.close()


class SQLiteStore:
    """A :class:`~buddyrules.storage.protocols.Store` in one SQLite file (stdlib ``sqlite3``).

    ``SQLiteStore("buddies.db")`` creates the file and its schema if needed, or opens and (if
    it was written by an older release) upgrades an existing one. Several threads may share one
    store and several processes may open the same file: writes are serialised by SQLite's
    database lock, reads never wait for writes (WAL mode).

    Args:
        path: the database file, or ``":memory:"`` for a private in-memory database.
        busy_timeout: seconds a connection waits for SQLite's write lock before SQLite reports
            the database busy.
        max_retries: how many more times a busy operation is tried (with jittered exponential
            backoff) before :class:`~buddyrules.errors.StoreError` is raised.
        synchronous: ``"NORMAL"`` (default; durable against a process crash, not against a
            power loss) or ``"FULL"`` (an fsync per commit; durable against a power loss).
        checkpoint_interval: seconds between background WAL checkpoints (a daemon thread per
            store and process); ``None`` leaves checkpoints to the committing writers.
    """

    #: The forward migrations this class applies on open (a subclass may extend them).
    migrations: tuple[Migration, ...] = MIGRATIONS
    #: Units reserve a single send's quota in their own transaction (``QuotaUnitOfWork``):
    #: every write already holds the database's write lock, so nothing waits longer.
    quota_in_unit: ClassVar[bool] = True

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        busy_timeout: float = 5.0,
        max_retries: int = 5,
        synchronous: Synchronous = "NORMAL",
        checkpoint_interval: float | None = CHECKPOINT_INTERVAL,
    ) -> None:
        if sqlite3.sqlite_version_info < _MIN_SQLITE:
            raise StoreError(
                f"SQLiteStore needs SQLite >= 3.35 (for RETURNING); this Python has "
                f"{sqlite3.sqlite_version}",
                {"sqlite_version": sqlite3.sqlite_version},
            )
        if synchronous not in ("NORMAL", "FULL"):
            raise ValueError(f"synchronous must be 'NORMAL' or 'FULL', not {synchronous!r}")
        if busy_timeout < 0 or max_retries < 0:
            raise ValueError("busy_timeout and max_retries must not be negative")
        if checkpoint_interval is not None and checkpoint_interval <= 0:
            raise ValueError("checkpoint_interval must be positive (or None)")
        self._tempdir: str | None = None
        if str(path) == ":memory:":
            self._tempdir = tempfile.mkdtemp(prefix="buddyrules-")
            path = Path(self._tempdir) / "buddies.db"
        self._path = str(Path(path))
        self._busy_timeout = float(busy_timeout)
        self._max_retries = int(max_retries)
        self._synchronous: Synchronous = synchronous
        self._closed = False
        self._pid = os.getpid()
        self._local = threading.local()
        self._registry_lock = threading.Lock()
        self._connections: list[_Connection] = []
        self._checkpoint_interval = checkpoint_interval
        self._checkpointer: _Checkpointer | None = None
        conn = self._connection()
        try:
            self._migrate(conn)
        except BaseException:
            self.close()
            raise
        self._start_checkpointer()

    def _start_checkpointer(self) -> None:
        """Start this process's background checkpoint thread (if enabled and not running)."""
        interval = self._checkpoint_interval
        current = self._checkpointer
        if interval is None or (current is not None and current.pid == os.getpid()):
            return
        checkpointer = _Checkpointer(self._path, self._synchronous, interval)
        self._checkpointer = checkpointer
        # A store dropped without close() must not leave its thread behind.
        weakref.finalize(self, checkpointer.stop, False)

    # -- connections ---------------------------------------------------------------------

    @property
    def path(self) -> str:
        """The database file (a temporary one for ``":memory:"``)."""
        return self._path

    def __repr__(self) -> str:
        return f"SQLiteStore({self._path!r}, synchronous={self._synchronous!r})"

    def _open(self) -> _Connection:
        try:
            db = sqlite3.connect(
                self._path,
                timeout=self._busy_timeout,
                isolation_level=None,  # autocommit: transactions are explicit BEGIN/COMMIT
                check_same_thread=False,  # close() may run on another thread
                # The per-event statements and the lookup sizes (2 x 19) stay prepared.
                cached_statements=128,
            )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open SQLite database {self._path!r}: {exc}") from exc
        try:
            db.execute(f"PRAGMA synchronous = {self._synchronous}")
            db.execute("PRAGMA foreign_keys = OFF")
            db.execute("PRAGMA temp_store = MEMORY")
            threshold = (
                _WAL_AUTOCHECKPOINT
                if self._checkpoint_interval is None
                else _WAL_AUTOCHECKPOINT_WITH_THREAD
            )
            db.execute(f"PRAGMA wal_autocheckpoint = {threshold}")
            db.execute(f"PRAGMA journal_size_limit = {_JOURNAL_SIZE_LIMIT}")
        except sqlite3.Error as exc:
            db.close()
            raise StoreError(f"cannot configure SQLite database {self._path!r}: {exc}") from exc
        conn = _Connection(db)
        with self._registry_lock:
            if self._closed:
                db.close()
                raise StoreError(f"{self!r} is closed")
            self._connections.append(conn)
        return conn

    def _connection(self) -> _Connection:
        """This thread's connection (opened on first use; reopened after a fork)."""
        if self._closed:
            raise StoreError(f"{self!r} is closed")
        slot: _Slot | None = getattr(self._local, "slot", None)
        if slot is not None and slot.conn.fork_generation == _fork_generation:
            return slot.conn
        # First use on this thread, or after a fork (the inherited connection belongs to the
        # parent: leave it alone; a forked child also needs its own checkpoint thread).
        if self._checkpointer is not None and self._checkpointer.pid != os.getpid():
            self._start_checkpointer()
        conn = self._open()
        slot = _Slot(conn)
        # The slot lives only in this thread's local storage, so it is freed when the thread
        # ends: then its connection is closed and forgotten.
        weakref.finalize(slot, _retire, self._connections, self._registry_lock, conn)
        self._local.slot = slot
        return conn

    def close(self) -> None:
        """Close every connection of every thread; the store cannot be used afterwards."""
        with self._registry_lock:
            self._closed = True
            connections, self._connections = self._connections, []
        checkpointer = self._checkpointer
        if checkpointer is not None and checkpointer.pid == os.getpid():
            checkpointer.stop()
        for conn in connections:
            if conn.pid == os.getpid():
                conn.db.close()
        if self._tempdir is not None and os.getpid() == self._pid:
            shutil.rmtree(self._tempdir, ignore_errors=True)

    def __enter__(self) -> SQLiteStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- retries and errors --------------------------------------------------------------

    def _error(self, exc: sqlite3.Error, doing: str) -> StoreError:
        return StoreError(
            f"SQLite error while {doing} ({self._path}): {exc}",
            {"path": self._path, "sqlite_error": str(exc)},
        )

    def _retrying(self, operation: Callable[[], _T], doing: str) -> _T:
        """Run an operation that has not changed anything yet, retrying while SQLite is busy."""
        attempt = 0
        while True:
            try:
                return operation()
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc):
                    raise self._error(exc, doing) from exc
                if attempt >= self._max_retries:
                    raise StoreError(
                        f"SQLite database {self._path} stayed locked while {doing}: gave up "
                        f"after {attempt + 1} attempts (busy_timeout={self._busy_timeout}s "
                        f"each); another process or thread holds a long write transaction",
                        {
                            "path": self._path,
                            "attempts": attempt + 1,
                            "busy_timeout": self._busy_timeout,
                            "sqlite_error": str(exc),
                        },
                    ) from exc
                time.sleep(_backoff(attempt))
                attempt += 1
            except sqlite3.Error as exc:
                raise self._error(exc, doing) from exc

    def _begin(self, conn: _Connection, doing: str) -> None:
        self._retrying(lambda: conn.cur.execute("BEGIN IMMEDIATE"), doing)

    def _write(self, sql: str, params: Sequence[Any] | dict[str, Any], doing: str) -> Any:
        """One statement on this thread's connection; its own transaction unless in a group."""
        conn = self._synced()
        return self._retrying(lambda: conn.db.execute(sql, params).fetchall(), doing)

    def _synced(self) -> _Connection:
        """This thread's connection, with the rows its group holds back written to SQLite.

        Inside a group the units' rows wait in Python until the group ends; a plain read or
        write on the same thread meanwhile must see (and come after) them, as it would if
        every unit had written its rows at once.
        """
        conn = self._connection()
        pending = conn.group_pending
        if pending:
            assert pending is not None
            db = conn.db
            try:
                if not db.in_transaction:
                    raise sqlite3.OperationalError("the batch transaction was rolled back")
                self._flush(conn, pending)
            except sqlite3.Error as exc:
                # The units of the group so far cannot be kept whole: give them up together,
                # and leaving the group reports it.
                if db.in_transaction:
                    db.execute("ROLLBACK")
                conn.end_transaction()
                conn.group_lost = True
                raise self._error(exc, "writing a batch") from exc
            finally:
                pending.clear()
        return conn

    def _flush(self, conn: _Connection, pending: _Pending) -> None:
        """Send the pending rows to SQLite, one statement per table (raises sqlite3.Error).

        Runs inside the write transaction that the rows belong to.
        """
        cur = conn.cur
        if pending.buddies:
            remember = conn.states.remember
            rows: list[tuple[str, ...]] = []
            for ident, state in pending.buddies.items():
                # model_dump_json() without its Python wrapper (same text; measured: 36k ->
                # 29k instructions for the benchmark's state).
                text = state.__pydantic_serializer__.to_json(state).decode()
                # A parse cache (keyed by the exact text): right whether or not this commits.
                remember(ident, text, state)
                rows.append((*ident, text))
            _execute(cur, _SQL_PUT_BUDDY, rows)
        if pending.ledger:
            _execute(cur, _SQL_PUT_LEDGER, pending.ledger)
        if pending.outbox:
            _execute(cur, _SQL_PUT_OUTBOX, pending.outbox)
        if pending.receipts:
            _execute(cur, _SQL_PUT_RECEIPT, list(pending.receipts.values()))

    def _read_one(
        self, conn: _Connection, sql: str, params: Sequence[Any], doing: str
    ) -> tuple[Any, ...] | None:
        """The first row of a read on ``conn`` (a per-event call: first try without a closure)."""
        try:
            row: tuple[Any, ...] | None = conn.cur.execute(sql, params).fetchone()
        except sqlite3.Error:
            # Busy (or failing): the retrying path runs it again and reports as usual.
            return self._retrying(lambda: conn.cur.execute(sql, params).fetchone(), doing)  # type: ignore[no-any-return]
        return row

    def _read_all(
        self, conn: _Connection, sql: str, params: Sequence[Any], doing: str
    ) -> list[tuple[Any, ...]]:
        """Every row of a read on ``conn`` (first tried without a closure, like _read_one)."""
        try:
            rows: list[tuple[Any, ...]] = conn.cur.execute(sql, params).fetchall()
        except sqlite3.Error:
            return self._retrying(lambda: conn.cur.execute(sql, params).fetchall(), doing)
        return rows

    def _read(self, sql: str, params: Sequence[Any], doing: str) -> list[Any]:
        return self._write(sql, params, doing)  # type: ignore[no-any-return]

    # -- schema ------------------------------------------------------------------------

    def schema_version(self) -> int:
        """The schema version of the database file (0 before the first migration)."""
        rows = self._read("SELECT coalesce(max(version), 0) FROM schema_version", (), "reading")
        return int(rows[0][0])

    def _current_version(self, db: sqlite3.Connection) -> int | None:
        """The applied schema version, or None when the version table does not exist yet."""
        exists = db.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'"
        ).fetchone()
        if exists is None:
            return None
        return int(db.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchone()[0])

    def _check_version(self, current: int) -> bool:
        """True when nothing is left to apply; raises for a file from a newer release."""
        latest = self.migrations[-1].version if self.migrations else 0
        if current > latest:
            raise StoreError(
                f"SQLite database {self._path} has schema version {current}, newer than this "
                f"release of buddyrules knows ({latest}); upgrade buddyrules to open it",
                {"path": self._path, "schema_version": current, "supported": latest},
            )
        return current == latest

    def _migrate(self, conn: _Connection) -> None:
        db = conn.db
        # WAL is a property of the file: set once, it stays for every later connection.
        mode = self._retrying(
            lambda: db.execute("PRAGMA journal_mode = WAL").fetchone()[0], "enabling WAL"
        )
        if str(mode).lower() != "wal":
            raise StoreError(
                f"SQLite database {self._path} cannot use WAL mode (journal_mode={mode}); "
                "is it on a network file system?",
                {"path": self._path, "journal_mode": mode},
            )
        # The common case, a file already up to date, needs no write lock at all.
        current = self._retrying(lambda: self._current_version(db), "reading the schema")
        if current is not None and self._check_version(current):
            return
        self._begin(conn, "migrating the schema")
        try:
            db.execute(_SQL_SCHEMA_TABLE)
            # Read again under the write lock: another process may have migrated meanwhile.
            current = self._current_version(db) or 0
            if not self._check_version(current):
                for migration in self.migrations:
                    if migration.version <= current:
                        continue
                    for statement in migration.statements:
                        db.execute(statement)
                    db.execute(
                        "INSERT INTO schema_version (version, description, applied_at) "
                        "VALUES (?, ?, ?)",
                        (
                            migration.version,
                            migration.description,
                            datetime.now(UTC).isoformat(),
                        ),
                    )
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            db.execute("ROLLBACK")
            raise self._error(exc, "migrating the schema") from exc
        except BaseException:
            db.execute("ROLLBACK")
            raise

    # -- units of work and batches -----------------------------------------------------

    def unit_of_work(self, tenant: str, key: BuddyKey) -> AbstractContextManager[_SQLiteUnit]:
        """Lock the database for writing (so also ``key``) and open a transaction.

        Commits on a clean exit and rolls back on an exception. Inside :meth:`group` the unit
        is a savepoint of the group's transaction instead.
        """
        return _SQLiteUnit(self, tenant, key)

    def group(self, tenant: str) -> AbstractContextManager[None]:
        """Run the units of a batch in one transaction, one savepoint per unit.

        A failing unit rolls back to its savepoint alone; leaving the group commits every unit
        that completed, also when the group exits with an exception. Groups nest (the
        outermost one commits). The group holds SQLite's write lock from start to end, so other
        writers wait for the whole batch, which stays short (at most 100 events).
        """
        return _SQLiteGroup(self)

    # -- plain reads and writes ------------------------------------------------------------

    def get_buddy(self, tenant: str, key: BuddyKey) -> BuddyState | None:
        """Read a buddy without locking it."""
        ident = (tenant, key.user_id, key.audience)
        conn = self._synced()
        row = self._read_one(conn, _SQL_GET_BUDDY, ident, "reading a buddy")
        return conn.states.parsed(ident, row[0]) if row is not None else None

    def list_buddies(self, tenant: str, user_id: str | None = None) -> Iterator[BuddyState]:
        """Every buddy of the tenant (or of one user), ordered by user_id then audience.

        Read in pages of 500 by key, so no statement stays open between items (the caller may
        open units of work while iterating); a buddy hatched meanwhile may or may not appear.
        Use :meth:`export_states` for one consistent snapshot.
        """
        where = "tenant = ?" if user_id is None else "tenant = ? AND user_id = ?"
        base: tuple[str, ...] = (tenant,) if user_id is None else (tenant, user_id)
        first = f"SELECT user_id, audience, state FROM buddies WHERE {where} "
        order = f"ORDER BY user_id, audience LIMIT {_PAGE}"
        rows = self._read(first + order, base, "listing buddies")
        while rows:
            for row in rows:
                yield BuddyState.model_validate_json(row[2])
            if len(rows) < _PAGE:
                return
            last = rows[-1]
            rows = self._read(
                first + "AND (user_id, audience) > (?, ?) " + order,
                (*base, last[0], last[1]),
                "listing buddies",
            )

    def export_states(self, tenant: str) -> list[BuddyState]:
        """A snapshot of every buddy of the tenant, ordered by user_id then audience."""
        rows = self._read(
            "SELECT state FROM buddies WHERE tenant = ? ORDER BY user_id, audience",
            (tenant,),
            "exporting buddies",
        )
        return [BuddyState.model_validate_json(row[0]) for row in rows]

    def get_receipt(self, tenant: str, event_id: str) -> Receipt | None:
        """Read a receipt without locking."""
        key = (tenant, event_id)
        row = self._read_one(self._synced(), _SQL_GET_RECEIPT, key, "reading a receipt")
        return _receipt(row) if row is not None else None

    def lookup(
        self, tenant: str, keys: Sequence[BuddyKey], event_ids: Sequence[str]
    ) -> tuple[dict[BuddyKey, BuddyState], dict[str, Receipt]]:
        """Read several buddies and receipts at once, without locking.

        The same results as :meth:`get_buddy` per key and :meth:`get_receipt` per id (absent
        ones are missing), read on the same connection, so a group's held-back rows are seen
        as those see them. One buddy and one receipt (a single send) are one statement;
        otherwise one statement per table and per 128 distinct keys, none for an empty input.
        """
        buddies: dict[BuddyKey, BuddyState] = {}
        receipts: dict[str, Receipt] = {}
        # Outside a transaction, what is read is committed: it is remembered for the units
        # that follow on this connection (see _Connection.recall). Inside one (a lookup in a
        # group or a unit) it may include this transaction's own writes, which a rollback
        # would undo, so nothing is remembered then. Only str keys are remembered: SQLite's
        # text comparison would match other types too (1 = '1'), and the rows are keyed
        # by what was asked.
        if len(keys) == 1 and len(event_ids) == 1:
            # A single send: the receipt and the buddy in one cached statement.
            conn = self._synced()
            key = keys[0]
            event_id = event_ids[0]
            user_id, audience = key.user_id, key.audience
            ident = (tenant, user_id, audience)
            remember = (
                type(event_id) is str
                and type(user_id) is str
                and type(audience) is str
                and not conn.db.in_transaction
            )
            both = self._read_one(
                conn,
                _SQL_LOOKUP_ONE if remember else _SQL_GET_RECEIPT_AND_BUDDY,
                (tenant, event_id, user_id, audience),
                "reading a buddy and a receipt",
            )
            assert both is not None  # the statement always yields exactly one row
            row = both[:5] if both[0] is not None else None
            if both[5] is not None:
                buddies[key] = conn.states.parsed(ident, both[5])
            if row is not None:
                receipts[event_id] = _receipt(row)
            if remember:
                conn.remember(both[6], {ident: both[5]}, {(tenant, event_id): row})
            return buddies, receipts
        # Duplicates are read once. Keys are told apart as (user_id, audience) pairs: a
        # BuddyKey hashes and compares in Python (measured: 3.9k instructions per key of a
        # batch of 100), a tuple of two strings in C. Each pair maps to a key given.
        wanted = {(k.user_id, k.audience): k for k in keys}
        wanted_ids = list(dict.fromkeys(event_ids))
        if not wanted and not wanted_ids:
            return buddies, receipts
        conn = self._synced()
        parsed = conn.states.parsed
        remember = not conn.db.in_transaction and all(
            type(u) is str and type(a) is str for u, a in wanted
        )
        remember = remember and all(type(i) is str for i in wanted_ids)
        memo_buddies: dict[tuple[str, str, str], str | None] = {}
        memo_receipts: dict[tuple[str, str], tuple[Any, ...] | None] = {}
        version = 0
        if remember:
            # Read before the rows (each statement below is a read transaction of its own):
            # a commit by another connection after this read changes what a unit reads then.
            version = self._read_one(conn, _SQL_DATA_VERSION, (), "reading the data version")[0]  # type: ignore[index]
            memo_buddies = dict.fromkeys([(tenant, u, a) for u, a in wanted])
            memo_receipts = dict.fromkeys([(tenant, i) for i in wanted_ids])
        pairs = list(wanted)
        for start in range(0, len(pairs), _LOOKUP_CHUNK):
            chunk = pairs[start : start + _LOOKUP_CHUNK]
            size = _lookup_size(len(chunk))
            params: list[Any] = []
            for pair in chunk:
                params += pair
            params += [None] * (2 * (size - len(chunk)))
            params.append(tenant)
            rows = self._read_all(conn, _SQL_LOOKUP_BUDDIES[size], params, "reading buddies")
            for user_id, audience, text in rows:
                ident = (tenant, user_id, audience)
                # SQLite's text comparison found the row: the pair is as asked (unless a key
                # held something other than text, then the stored strings name it).
                key = wanted.get((user_id, audience)) or BuddyKey(user_id, audience)
                buddies[key] = parsed(ident, text)
                if remember:
                    memo_buddies[ident] = text
        for start in range(0, len(wanted_ids), _LOOKUP_CHUNK):
            ids = wanted_ids[start : start + _LOOKUP_CHUNK]
            size = _lookup_size(len(ids))
            params = [*ids, *([None] * (size - len(ids))), tenant]
            rows = self._read_all(conn, _SQL_LOOKUP_RECEIPTS[size], params, "reading receipts")
            for row in rows:
                receipts[row[0]] = _receipt(row)
                if remember:
                    memo_receipts[(tenant, row[0])] = row
        if remember:
            conn.remember(version, memo_buddies, memo_receipts)
        return buddies, receipts

    def reserve_quota(self, tenant: str, month: str, count: int, limit: int | None) -> int | None:
        """Atomically add ``count`` to the month's usage if it stays within ``limit``.

        One UPSERT statement checks the limit and adds (see ``_SQL_RESERVE_QUOTA``).
        """
        if count < 0:
            raise ValueError("count must not be negative")
        # This connection's own write does not change its data_version: forget the row.
        self._connection().memo_quota.pop((tenant, month), None)
        rows = self._write(_SQL_RESERVE_QUOTA, (tenant, month, count, limit), "reserving quota")
        return int(rows[0][0]) if rows else None

    def release_quota(self, tenant: str, month: str, count: int) -> None:
        """Give back reserved quota (never below zero)."""
        self._connection().memo_quota.pop((tenant, month), None)
        self._write(_SQL_RELEASE_QUOTA, (count, tenant, month), "releasing quota")

    def quota_used(self, tenant: str, month: str) -> int:
        """The month's usage."""
        rows = self._read(
            "SELECT used FROM quota WHERE tenant = ? AND month = ?",
            (tenant, month),
            "reading quota",
        )
        return int(rows[0][0]) if rows else 0

    def put_rulebook(self, tenant: str, record: RulebookRecord) -> None:
        """Insert or replace a rulebook record (by version; a replaced record keeps its place)."""
        self._write(
            "INSERT INTO rulebooks (tenant, version, name, status, document, sequence, "
            "published_at, extra) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (tenant, version) DO UPDATE SET name = excluded.name, "
            "status = excluded.status, document = excluded.document, "
            "sequence = excluded.sequence, published_at = excluded.published_at, "
            "extra = excluded.extra",
            (
                tenant,
                record.version,
                record.name,
                record.status,
                _dumps(record.document),
                record.sequence,
                _iso(record.published_at),
                _dumps(record.extra),
            ),
            "storing a rulebook",
        )

    def get_rulebook(self, tenant: str, version: str) -> RulebookRecord | None:
        """One rulebook record."""
        rows = self._read(
            _SQL_RULEBOOK_COLUMNS + "WHERE tenant = ? AND version = ?",
            (tenant, version),
            "reading a rulebook",
        )
        return _rulebook_record(rows[0]) if rows else None

    def list_rulebooks(self, tenant: str) -> list[RulebookRecord]:
        """Every rulebook record of the tenant, oldest first."""
        rows = self._read(
            _SQL_RULEBOOK_COLUMNS + "WHERE tenant = ? ORDER BY seq", (tenant,), "listing rulebooks"
        )
        return [_rulebook_record(row) for row in rows]

    def ledger(self, tenant: str, key: BuddyKey | None = None) -> list[LedgerRecord]:
        """Ledger entries (of one buddy, or all), in the order they were written."""
        if key is None:
            rows = self._read(
                _SQL_LEDGER_COLUMNS + "WHERE tenant = ? ORDER BY id", (tenant,), "reading ledger"
            )
        else:
            rows = self._read(
                _SQL_LEDGER_COLUMNS + "WHERE tenant = ? AND user_id = ? AND audience = ? "
                "ORDER BY id",
                (tenant, key.user_id, key.audience),
                "reading ledger",
            )
        return _ledger_records(rows)

    def outbox_pending(self, tenant: str, limit: int = 100) -> list[OutboxMessage]:
        """Committed, unacknowledged messages, oldest first."""
        # Every row read holds at least one pending message, so ``limit`` rows are enough.
        rows = self._read(
            "SELECT id, user_id, audience, at, pending, messages FROM outbox "
            "WHERE tenant = ? AND pending != 0 ORDER BY id LIMIT ?",
            (tenant, limit),
            "reading the outbox",
        )
        out: list[OutboxMessage] = []
        for first, user_id, audience, at, pending, messages in rows:
            when = datetime.fromisoformat(at)
            out += [
                OutboxMessage(
                    id=first + k,
                    type=kind,
                    user_id=user_id,
                    audience=audience,
                    payload=payload,
                    at=when,
                )
                for k, (kind, payload) in enumerate(_chunks(json.loads(messages), 2))
                if pending >> k & 1
            ]
        # A negative limit means no limit (as SQLite's LIMIT).
        return out if limit < 0 else out[:limit]

    def outbox_ack(self, tenant: str, ids: Sequence[int]) -> int:
        """Acknowledge messages; returns how many were pending.

        Acknowledged messages are kept (their bit in ``pending`` cleared) so that ids are never
        reused. One statement per id, all in one write transaction.
        """
        wanted = sorted({int(i) for i in ids})
        if not wanted:
            return 0
        conn = self._synced()
        db = conn.db
        if db.in_transaction:
            # Inside this thread's group (or a transaction of the caller): part of it.
            try:
                return sum(len(db.execute(_SQL_ACK_OUTBOX, (i, tenant)).fetchall()) for i in wanted)
            except sqlite3.Error as exc:
                raise self._error(exc, "acknowledging outbox messages") from exc
        self._begin(conn, "acknowledging outbox messages")
        try:
            acked = sum(len(db.execute(_SQL_ACK_OUTBOX, (i, tenant)).fetchall()) for i in wanted)
            db.execute("COMMIT")
        except BaseException as exc:
            if db.in_transaction:
                db.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error):
                raise self._error(exc, "acknowledging outbox messages") from exc
            raise
        return acked


def _execute(cur: sqlite3.Cursor, sql: str, rows: Sequence[Sequence[Any]]) -> None:
    # One row is the common case; executemany costs more than execute for it.
    if len(rows) == 1:
        cur.execute(sql, rows[0])
    else:
        cur.executemany(sql, rows)


def _closed() -> StoreError:
    return StoreError("this unit of work is closed (use it inside its `with` block)")


def _receipt(row: tuple[Any, ...]) -> Receipt:
    effects = json.loads(row[4])
    return Receipt(
        event_id=row[0],
        fingerprint=row[1],
        user_id=row[2],
        audience=row[3],
        effects=dict(zip(_EFFECTS_KEYS, effects, strict=True))
        if type(effects) is list
        else effects,
    )


class _SQLiteUnit:
    """One unit of work: a ``BEGIN IMMEDIATE`` transaction, or a part of a group's.

    The rows a unit writes (state, receipt, ledger, outbox) wait in a :class:`_Pending` and
    reach SQLite when it commits: on its own, one statement per table then ``COMMIT``; inside
    a group, they join the group's rows, which are written (one statement per table for the
    whole batch) when the group ends. A failing unit drops its rows, so it rolls back alone
    with no savepoint. This is sound because a unit runs under SQLite's write lock from its
    first statement (its own ``BEGIN IMMEDIATE`` or its group's): nobody else writes
    meanwhile, so what the unit read or checked (receipt ids, its buddy's row) still holds
    when its rows are written.
    """

    __slots__ = (
        "_buddy_known",
        "_buddy_text",
        "_conn",
        "_db",
        "_ident",
        "_nested",
        "_open",
        "_pending",
        "_quota",
        "_reserved",
        "_store",
        "_tenant",
        "key",
    )

    _conn: _Connection
    _db: sqlite3.Connection
    _pending: _Pending

    def __init__(self, store: SQLiteStore, tenant: str, key: BuddyKey) -> None:
        self._store = store
        self._tenant = tenant
        self.key = key
        self._ident = (tenant, key.user_id, key.audience)
        self._open = False

    # -- the transaction -----------------------------------------------------------------

    def __enter__(self) -> _SQLiteUnit:
        if self._open:
            raise StoreError("this unit of work is already open")
        store = self._store
        conn = store._connection()
        self._conn = conn
        self._db = db = conn.db
        if db.in_transaction:
            # Inside a group (or another unit of this thread): its rows join the enclosing
            # transaction's when this unit completes.
            self._nested = True
        else:
            if conn.group_depth:
                # The group's transaction is gone (SQLite rolled it back on its own): the
                # rows its units left pending can no longer be committed with it.
                conn.group_lost = True
                if conn.group_pending is not None:
                    conn.group_pending.clear()
            self._nested = False
            store._begin(conn, "starting a unit of work")
            conn.began_transaction()
        self._pending = _Pending()
        conn.units.append(self._pending)
        # The buddy's stored row, when already read with the receipt (see get_receipt).
        self._buddy_known = False
        self._buddy_text: str | None = None
        # What a nested unit reserved (given back if it fails), made on first use.
        self._reserved: list[tuple[str, int]] | None = None
        # The quota row this (outermost) unit wrote and its new usage.
        self._quota: tuple[tuple[str, str], int] | None = None
        self._open = True
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self._open:
            return
        self._open = False
        units = self._conn.units
        if units and units[-1] is self._pending:
            units.pop()
        else:  # units left out of order: still forget this one
            units.remove(self._pending)
        if exc_type is None:
            self._finish()
        else:
            self._abort()

    def _finish(self) -> None:
        conn = self._conn
        db = self._db
        store = self._store
        pending = self._pending
        if not self._nested:
            try:
                if pending:
                    store._flush(conn, pending)
                conn.cur.execute("COMMIT")
            except BaseException as exc:
                self._abort()
                if isinstance(exc, sqlite3.IntegrityError):
                    raise self._conflict(pending) from exc
                if isinstance(exc, sqlite3.Error):
                    raise store._error(exc, "committing a unit of work") from exc
                raise
            else:
                quota = self._quota
                if quota is not None and conn.memo_state == _MEMO_VALID:
                    # Committed while no other connection had committed since memo_version.
                    conn.memo_quota[quota[0]] = quota[1]
            finally:
                conn.end_transaction()
            return
        if not db.in_transaction:
            # SQLite rolled back the enclosing transaction on its own (disk full, I/O error).
            conn.group_lost = True
            raise StoreError(
                f"SQLite rolled back the transaction of this unit of work on its own "
                f"({store.path}); nothing of it was kept",
                {"path": store.path},
            )
        parent = conn.units[-1] if conn.units else conn.group_pending
        if parent is not None:
            parent.absorb(pending)
            return
        # A transaction this store did not open (no unit, no group of ours): write the rows
        # now, all or none.
        try:
            db.execute("SAVEPOINT buddyrules_unit")
            try:
                store._flush(conn, pending)
            except BaseException:
                db.execute("ROLLBACK TO buddyrules_unit")
                db.execute("RELEASE buddyrules_unit")
                raise
            db.execute("RELEASE buddyrules_unit")
        except sqlite3.IntegrityError as exc:
            raise self._conflict(pending) from exc
        except sqlite3.Error as exc:
            raise store._error(exc, "committing a unit of work") from exc

    def _abort(self) -> None:
        # The unit's rows were never written: dropping them is its rollback.
        if self._nested:
            if not self._db.in_transaction:
                # SQLite already rolled everything back (e.g. disk full): a group lost its units.
                self._conn.group_lost = True
                return
            # Quota is the one thing a unit writes at once (its count is needed now): inside
            # an enclosing transaction, a failing unit gives back what it reserved.
            for month, count in self._reserved or ():
                self._conn.memo_quota.pop((self._tenant, month), None)
                try:
                    self._db.execute(_SQL_RELEASE_QUOTA, (count, self._tenant, month))
                except sqlite3.Error:
                    self._conn.group_lost = True
            return
        db = self._db
        self._conn.end_transaction()
        if not db.in_transaction:
            return
        try:
            db.execute("ROLLBACK")
        except sqlite3.Error:
            # The rollback failed: try once more so the connection is clean; the error that
            # brought us here is the one to report.
            if db.in_transaction:
                db.execute("ROLLBACK")

    def _conflict(self, pending: _Pending) -> ConflictError:
        ids = [event_id for _, event_id in pending.receipts]
        return ConflictError(
            f"a receipt for event id {', '.join(map(repr, ids))} already exists",
            {"event_id": ids[0] if len(ids) == 1 else ids},
        )

    def reserve_quota(self, month: str, count: int, limit: int | None) -> int | None:
        """Reserve quota inside this unit's transaction (see :class:`QuotaUnitOfWork`).

        The usage row is updated at once, under the write lock the unit holds from its
        start, and committed or rolled back with the unit: one write transaction per event
        instead of two. Under that lock the row cannot change between reading it and writing
        the new value. (In a transaction the caller opened without the lock, a commit by
        someone else in between makes the write fail: SQLite refuses to write from a stale
        snapshot, so nothing is lost.) The read is skipped when this connection's last unit
        committed the row and nobody else has committed since (``_Connection.memo_quota``,
        checked like the lookup's rows): a single send is then one statement less.
        """
        self._check_open()
        if count < 0:
            raise ValueError("count must not be negative")
        conn = self._conn
        cur = conn.cur
        key = (self._tenant, month)
        try:
            if self._nested:
                # The enclosing transaction may still roll back: not remembered.
                known = conn.memo_quota.pop(key, None)
            else:
                known = conn.memo_quota.get(key)
                if known is not None and not conn.recall():
                    known = None
            if known is None:
                row = cur.execute(_SQL_GET_QUOTA, key).fetchone()
                exists = row is not None
                used = count if row is None else row[0] + count
            else:
                exists = True
                used = known + count
            if limit is not None and used > limit:
                return None
            if exists:
                cur.execute(_SQL_SET_QUOTA, (used, *key))
            else:
                cur.execute(_SQL_NEW_QUOTA, (*key, used))
        except sqlite3.Error as exc:
            raise self._store._error(exc, "reserving quota") from exc
        if self._nested:
            if self._reserved is None:
                self._reserved = []
            self._reserved.append((month, count))
        else:
            self._quota = (key, used)
        return int(used)

    def _check_open(self) -> sqlite3.Connection:
        if not self._open:
            raise _closed()
        return self._db

    def _pending_state(self) -> BuddyState | None:
        """The state this unit, an enclosing one or the group put last; None when none did."""
        state: BuddyState | None = self._pending_get("buddies", self._ident)
        return state

    def _pending_receipt(self, key: tuple[str, str]) -> tuple[Any, ...] | None:
        row: tuple[Any, ...] | None = self._pending_get("receipts", key)
        return row

    def _pending_get(self, part: str, key: tuple[str, ...]) -> Any:
        """``key`` in one part of the rows held back (``buddies`` or ``receipts``): this
        unit's first, then the enclosing units' (innermost first), then the group's."""
        found = getattr(self._pending, part).get(key)
        if found is not None:
            return found
        conn = self._conn
        units = conn.units
        if len(units) > 1:  # enclosing units (this one is the last)
            for pending in reversed(units):
                found = getattr(pending, part).get(key)
                if found is not None:
                    return found
        group = conn.group_pending
        return None if group is None else getattr(group, part).get(key)

    # -- UnitOfWork ------------------------------------------------------------------------

    def get_buddy(self) -> BuddyState | None:
        """The buddy's state (as written so far in this unit), or None if it has not hatched."""
        if not self._open:
            raise _closed()
        state = self._pending_state()
        if state is not None:
            return state
        conn = self._conn
        if self._buddy_known:
            text = self._buddy_text
        else:
            try:
                text = conn.memo_buddies.get(self._ident, _UNKNOWN)
                if text is _UNKNOWN or not conn.recall():
                    found = conn.cur.execute(_SQL_GET_BUDDY, self._ident).fetchone()
                    text = None if found is None else found[0]
            except sqlite3.Error as exc:
                raise self._store._error(exc, "reading a buddy") from exc
        return None if text is None else conn.states.parsed(self._ident, text)

    def put_buddy(self, state: BuddyState) -> None:
        """Insert or replace the buddy's state."""
        if not self._open:
            raise _closed()
        key = self.key
        if state.user_id != key.user_id or state.audience != key.audience:
            raise ConflictError(
                f"state of ({state.user_id!r}, {state.audience!r}) written in the unit of "
                f"({key.user_id!r}, {key.audience!r})",
                {"user_id": state.user_id, "audience": state.audience},
            )
        # From now on the stored row may be this state (once this commits): forget the row
        # the last lookup read (a rollback then just costs a read).
        self._conn.memo_buddies.pop(self._ident, None)
        self._pending.buddies[self._ident] = state

    def get_receipt(self, event_id: str) -> Receipt | None:
        """The receipt for an event id of this tenant (any buddy), or None."""
        if not self._open:
            raise _closed()
        key = (self._tenant, event_id)
        row = self._pending_receipt(key)
        if row is not None:
            return _receipt(row[1:])
        conn = self._conn
        try:
            found = conn.memo_receipts.get(key, _UNKNOWN)
            if found is not _UNKNOWN and conn.recall():
                # As the last lookup read it, and still so (no SQL): with the buddy's row
                # too when that lookup read it (get_buddy will ask next).
                if not self._buddy_known:
                    text = conn.memo_buddies.get(self._ident, _UNKNOWN)
                    if text is not _UNKNOWN:
                        self._buddy_known = True
                        self._buddy_text = text
            elif self._buddy_known or self._pending_state() is not None:
                found = conn.cur.execute(_SQL_GET_RECEIPT, key).fetchone()
            else:
                # The service reads the buddy next: one statement reads both (the row cannot
                # change under this unit's write lock, and its own writes are checked first).
                both = conn.cur.execute(
                    _SQL_GET_RECEIPT_AND_BUDDY, (*key, *self._ident[1:])
                ).fetchone()
                self._buddy_known = True
                self._buddy_text = both[5]
                found = both[:5] if both[0] is not None else None
        except sqlite3.Error as exc:
            raise self._store._error(exc, "reading a receipt") from exc
        if found is None:
            conn.absent.add(key)
            return None
        return _receipt(found)

    def put_receipt(self, receipt: Receipt) -> None:
        """Record a receipt; a duplicate event id raises ConflictError at once."""
        if not self._open:
            raise _closed()
        effects = receipt.effects
        # The values only when the keys are the Engine's (see _EFFECTS_KEYS).
        text = to_json(
            list(effects.values()) if tuple(effects) == _EFFECTS_KEYS else effects
        ).decode()
        self._add_receipt(
            receipt.event_id, receipt.fingerprint, receipt.user_id, receipt.audience, text
        )

    def put_effects_receipt(self, event_id: str, fingerprint: str, effects: Effects) -> None:
        """:meth:`put_receipt` of ``Receipt(event_id, fingerprint, <unit key>,
        effects.to_wire(include_trace=False))``, without building the wire dict.

        The same stored text: the values of the fields named in _EFFECTS_KEYS, in order (a
        fast path the Engine uses when a unit has it, as on MemoryUnitOfWork).
        """
        if not self._open:
            raise _closed()
        text = None
        # Unless a value is one pydantic-core does not take as it is (to_wire copies mappings).
        with suppress(PydanticSerializationError):
            if _EFFECTS_AS_VALUES:
                text = to_json(_effect_values(effects)).decode()
        if text is None:
            # As put_receipt would store the wire dict.
            wire = effects.to_wire(include_trace=False)
            text = to_json(list(wire.values()) if tuple(wire) == _EFFECTS_KEYS else wire).decode()
        _, user_id, audience = self._ident
        self._add_receipt(event_id, fingerprint, user_id, audience, text)

    def _add_receipt(
        self, event_id: str, fingerprint: str, user_id: str, audience: str, effects: str
    ) -> None:
        tenant = self._tenant
        key = (tenant, event_id)
        conn = self._conn
        if key in conn.absent:
            # Read as absent under this transaction's write lock, and not put since (a put
            # takes it out of ``absent``): still absent.
            exists = False
        elif self._pending_receipt(key) is not None:
            exists = True
        else:
            try:
                exists = conn.cur.execute(_SQL_HAS_RECEIPT, key).fetchone() is not None
            except sqlite3.Error as exc:
                raise self._store._error(exc, "checking a receipt") from exc
        if exists:
            raise ConflictError(
                f"a receipt for event id {event_id!r} already exists",
                {"event_id": event_id},
            )
        # Once written (a group may write it before it ends), it is no longer absent; nor
        # is it what the last lookup read.
        conn.absent.discard(key)
        conn.memo_receipts.pop(key, None)
        self._pending.receipts[key] = (tenant, event_id, fingerprint, user_id, audience, effects)

    def append_ledger(self, entries: Sequence[LedgerRecord]) -> None:
        """Append ledger entries (ids follow the order of ``entries``)."""
        self._check_open()
        tenant = self._tenant
        iso = self._conn.iso
        rows = self._pending.ledger
        # One row per run of entries with the same buddy, reference and time.
        # (Times are compared as text: equal instants in two offsets are kept apart.)
        start = 0
        count = len(entries)
        while start < count:
            first = entries[start]
            when = iso(first.at)
            end = start + 1
            while end < count:
                e = entries[end]
                if (
                    e.user_id != first.user_id
                    or e.audience != first.audience
                    or e.reference != first.reference
                    or iso(e.at) != when
                ):
                    break
                end += 1
            rows.append(
                (
                    tenant,
                    first.user_id,
                    first.audience,
                    first.reference,
                    when,
                    end - start,
                    _dumps(
                        [
                            x
                            for e in entries[start:end]
                            for x in (e.currency, e.amount, e.balance_after, e.reason)
                        ]
                    ),
                )
            )
            start = end

    # -- the Engine's fast path -----------------------------------------------------------
    # Not part of the UnitOfWork port (as on MemoryUnitOfWork): the Engine hands over its own
    # ledger entries and notifications, and the rows are built without record objects. They
    # store exactly what append_ledger and append_outbox would for the unit's buddy.

    def append_ledger_entries(
        self, entries: Sequence[tuple[str, int, int, str]], reference: str | None, at: datetime
    ) -> None:
        """:meth:`append_ledger` of ``(currency, amount, balance_after, reason)`` entries of
        the unit's buddy, all with one reference and time."""
        if not self._open:
            raise _closed()
        if not entries:
            return
        tenant, user_id, audience = self._ident
        # One flat list (pydantic-core encodes it several times faster than named tuples).
        flat: list[Any] = []
        for entry in entries:
            flat += entry
        self._pending.ledger.append(
            (
                tenant,
                user_id,
                audience,
                reference,
                self._conn.iso(at),
                len(entries),
                to_json(flat).decode(),
            )
        )

    def append_notifications(
        self, notifications: Sequence[tuple[str, dict[str, Any]]], at: datetime
    ) -> None:
        """:meth:`append_outbox` of ``(type, payload)`` messages of the unit's buddy, all at
        one time."""
        if not self._open:
            raise _closed()
        count = len(notifications)
        if not count:
            return
        tenant, user_id, audience = self._ident
        when = self._conn.iso(at)
        pending = self._pending
        flat: list[Any] = []
        if count <= _OUTBOX_RUN and not pending.outbox:
            # The usual case: the unit's first messages, one row.
            for message in notifications:
                flat += message
            pending.outbox.append(
                (tenant, user_id, audience, when, count, (1 << count) - 1, to_json(flat).decode())
            )
            return
        for start in range(0, count, _OUTBOX_RUN):
            run = notifications[start : start + _OUTBOX_RUN]
            flat = []
            for message in run:
                flat += message
            pending.add_messages(tenant, user_id, audience, when, len(run), to_json(flat).decode())

    def append_outbox(self, messages: Sequence[OutboxMessage]) -> None:
        """Append outbox messages (visible to ``outbox_pending`` once the unit commits)."""
        self._check_open()
        tenant = self._tenant
        iso = self._conn.iso
        pending = self._pending
        # One row per run of messages with the same buddy and time (at most _OUTBOX_RUN).
        start = 0
        count = len(messages)
        while start < count:
            first = messages[start]
            when = iso(first.at)
            end = start + 1
            while end < count and end - start < _OUTBOX_RUN:
                m = messages[end]
                if m.user_id != first.user_id or m.audience != first.audience or iso(m.at) != when:
                    break
                end += 1
            pending.add_messages(
                tenant,
                first.user_id,
                first.audience,
                when,
                end - start,
                _dumps([x for m in messages[start:end] for x in (m.type, m.payload)]),
            )
            start = end


class _SQLiteGroup:
    """A batch: one ``BEGIN IMMEDIATE`` transaction around the units of this thread.

    The units' rows are held back (see :class:`_SQLiteUnit`) and written when the group ends,
    just before its ``COMMIT``: a batch of 100 events is a handful of statements and one
    commit.
    """

    __slots__ = ("_conn", "_owner", "_store")

    def __init__(self, store: SQLiteStore) -> None:
        self._store = store
        self._owner = False

    def __enter__(self) -> None:
        store = self._store
        conn = store._connection()
        self._conn = conn
        self._owner = conn.group_depth == 0 and not conn.db.in_transaction
        if self._owner:
            store._begin(conn, "starting a batch")
            conn.began_transaction()
            conn.group_lost = False
            conn.group_pending = _Pending()
        conn.group_depth += 1

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        store = self._store
        conn = self._conn
        db = conn.db
        conn.group_depth -= 1
        if not self._owner:
            return
        pending = conn.group_pending
        conn.group_pending = None
        # Commit what succeeded even when the group ends with an exception: each failed unit
        # has already dropped its own rows.
        lost = conn.group_lost
        conn.group_lost = False
        try:
            if db.in_transaction:
                try:
                    if pending:
                        assert pending is not None
                        store._flush(conn, pending)
                    conn.cur.execute("COMMIT")
                except BaseException as err:
                    if db.in_transaction:
                        db.execute("ROLLBACK")
                    if exc_type is not None and isinstance(err, Exception):
                        return  # the exception that ended the group is the one to report
                    if isinstance(err, sqlite3.Error):
                        raise store._error(err, "committing a batch") from err
                    raise
            elif pending:
                lost = True
        finally:
            conn.end_transaction()
        if lost and exc_type is None:
            raise StoreError(
                f"SQLite rolled back a batch transaction on its own ({store.path}); the units "
                "applied before the failure in this batch were not kept",
                {"path": store.path},
            )
