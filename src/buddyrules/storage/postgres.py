"""PostgresStore: buddies in PostgreSQL, for many processes writing at once.

Needs the optional extra ``postgres`` (``pip install "buddyrules[postgres]"``: psycopg 3 and
psycopg-pool). The driver is imported when a store is created, not when buddyrules is, and a
missing driver is a :class:`~buddyrules.errors.StoreError` that says what to install.

Design, in short (the reasons are next to the code):

* **Schema**: every table lives in one PostgreSQL schema (``schema="buddyrules"``), versioned
  like :class:`~buddyrules.storage.sqlite.SQLiteStore`'s (a ``schema_version`` table and the
  ordered forward migrations in :data:`MIGRATIONS`). It is created or upgraded only by an
  explicit :meth:`PostgresStore.migrate` (or the CLI), never as a side effect of serving
  traffic: a store whose schema is missing or out of date raises a
  :class:`~buddyrules.errors.StoreError` telling you to call ``migrate()``.
* **One writer per buddy**: a unit of work first takes ``pg_advisory_xact_lock`` on a 64-bit
  hash of ``(schema, tenant, user_id, audience)``, then reads the buddy ``SELECT ... FOR
  UPDATE``. The advisory lock covers the buddy's key even before its row exists (``FOR
  UPDATE`` cannot lock a row that is not there, so two first events of a new user would both
  see "no buddy"); the row lock also keeps out writers that bypass this class. Units for
  different buddies run in parallel. Both locks are released by the commit or rollback.
* **No deadlocks**: a unit takes exactly one lock that anyone waits on for long, its own
  buddy's, and takes it first. Everything else it writes is shared only through inserts:
  one receipt (a unique key: a racing insert of the same event id waits for the first to
  finish, then fails), ledger and outbox rows (new rows, ids from identity sequences). So no
  two units ever wait for each other in opposite orders. Quota is reserved in a transaction
  of its own (an autocommit statement, or the one a send's unit commits just before its
  own), so its row lock is held for a single statement only; a unit that reserves inside its
  transaction (one that had already used it, see :meth:`_PostgresUnit.reserve_quota`) takes
  the quota row last, after its buddy's lock, and no one waits for a buddy's lock while
  holding the quota row.
* **Round trips**: a unit costs two (a single send three in all, with its lookup: its quota
  is reserved in its unit's opening round trip, see :meth:`_PostgresUnit.reserve_quota`).
  Its opening sends ``BEGIN``, a call of the ``lock_buddy`` SQL function (lock, then read
  ``FOR UPDATE``) and, when it can guess it, the read of the receipt the unit will ask for
  (see :meth:`PostgresStore._next_probed`) together; its writes are buffered and sent with
  the ``COMMIT`` together at the end (so a duplicate receipt is reported on commit, which
  the store contract allows). Each is one libpq pipeline of statements prepared once per
  connection (``_Sql.prepare``: the server neither parses nor plans them per unit), sent
  without a psycopg cursor (:meth:`PostgresStore._exchange_on`); ledger and outbox rows
  travel as one JSON parameter per table. States are stored as the JSON text written (a
  ``text`` column since schema version 2), so the next read of the buddy finds the parsed
  state in the cache by comparing texts instead of parsing it again.
* **group()** keeps one transaction per unit: holding many buddies' locks in one transaction
  across a batch would make two batches that touch the same buddies in different orders
  deadlock each other. What it saves is the fsyncs: inside a group each unit commits with
  ``synchronous_commit = off`` (its locks are released at once, its commit record is not
  waited for), and leaving the group runs one small synchronous commit (a write to the
  ``flush_marks`` table: PostgreSQL only waits for the flush of a transaction that wrote WAL),
  which flushes the WAL up to it and so makes every earlier unit of the batch durable before
  ``send_batch`` returns. A batch of 100 costs one fsync instead of 100. The window: until
  the group ends, another session can already read a unit that a crash *of the PostgreSQL
  server* (not of the client) would lose; the batch's own caller is only answered after the
  flush. Pass ``group_commit=False`` for a plain no-op group (every unit waits for its own
  flush).
* **Quota** is one ``INSERT ... ON CONFLICT DO UPDATE ... WHERE used + n <= limit RETURNING``
  statement (inside the ``reserve_quota`` SQL function; a batch's is one autocommit
  statement, a single send's a transaction of its own in its unit's opening round trip,
  which the unit gives back if it fails), committed with ``synchronous_commit = off`` by
  default: the quota row is the one row every
  writer of a tenant updates, and waiting for an fsync while holding its lock would serialise
  all writers on the disk. A server crash may forget the last fraction of a second of
  reservations (usage is under-counted by that much, never over-counted). Pass
  ``durable_quota=True`` to wait for the flush instead.
* **Tenants**: every table has a ``tenant`` column that leads every key and index, and every
  query filters on it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import select
import threading
import weakref
from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from types import TracebackType
from typing import TYPE_CHECKING, Any, ClassVar, Final, NoReturn

from buddyrules.errors import ConflictError, StoreError
from buddyrules.state import BuddyState
from buddyrules.storage.protocols import (
    BuddyKey,
    LedgerRecord,
    OutboxMessage,
    Receipt,
    RulebookRecord,
)
from buddyrules.storage.sqlite import Migration, _dumps, _StateCache

if TYPE_CHECKING:
    import psycopg
    import psycopg_pool
    from psycopg.pq.abc import PGresult

__all__ = ["MIGRATIONS", "PostgresStore"]

_IDENT: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
_PAGE: Final = 500
_TUPLES_OK: Final = 2  # libpq's PGRES_TUPLES_OK (psycopg.pq.ExecStatus.TUPLES_OK)
_FATAL_ERROR: Final = 7  # libpq's PGRES_FATAL_ERROR
_MISSING_RELATION: Final = frozenset({"42P01", "3F000"})  # undefined_table, invalid_schema
_PROBED: Final = 256  # receipt look-ups remembered per thread (a batch makes at most 100)
_TENANTS_REMEMBERED: Final = 1024  # tenants whose units' quota month and limit are remembered

# Identifier columns use the "C" collation: ordering (list_buddies) is by code point, as in
# the other stores and in Python, whatever the database's locale, and the primary keys serve
# that ordering directly. ``{s}`` is the quoted schema name.
MIGRATIONS: Final[tuple[Migration, ...]] = (
    Migration(
        1,
        "initial schema: buddies, receipts, quota, rulebooks, ledger, outbox",
        (
            """CREATE TABLE {s}.buddies (
                tenant text COLLATE "C" NOT NULL,
                user_id text COLLATE "C" NOT NULL,
                audience text COLLATE "C" NOT NULL,
                state jsonb NOT NULL,
                updated_at timestamptz NOT NULL DEFAULT now(),
                PRIMARY KEY (tenant, user_id, audience)
            )""",
            # effects is json, not jsonb: json keeps the text (and key order) as written, so a
            # replay returns exactly what the first send returned.
            """CREATE TABLE {s}.receipts (
                tenant text COLLATE "C" NOT NULL,
                event_id text COLLATE "C" NOT NULL,
                fingerprint text NOT NULL,
                user_id text COLLATE "C" NOT NULL,
                audience text COLLATE "C" NOT NULL,
                effects json NOT NULL,
                recorded_at timestamptz NOT NULL DEFAULT now(),
                PRIMARY KEY (tenant, event_id)
            )""",
            """CREATE TABLE {s}.quota (
                tenant text COLLATE "C" NOT NULL,
                month text COLLATE "C" NOT NULL,
                used bigint NOT NULL CHECK (used >= 0),
                PRIMARY KEY (tenant, month)
            )""",
            # document_text is the rulebook exactly as stored (key order matters: a reward's
            # tokens are credited in mapping order); document is its queryable JSONB form.
            """CREATE TABLE {s}.rulebooks (
                seq bigint GENERATED ALWAYS AS IDENTITY,
                tenant text COLLATE "C" NOT NULL,
                version text COLLATE "C" NOT NULL,
                name text NOT NULL,
                status text NOT NULL CHECK (status IN ('draft', 'published', 'archived')),
                document_text text NOT NULL,
                document jsonb GENERATED ALWAYS AS (document_text::jsonb) STORED,
                sequence bigint NOT NULL DEFAULT 0,
                published_at timestamptz,
                extra jsonb NOT NULL DEFAULT '{{}}',
                PRIMARY KEY (tenant, version)
            )""",
            """CREATE TABLE {s}.ledger (
                id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                tenant text COLLATE "C" NOT NULL,
                user_id text COLLATE "C" NOT NULL,
                audience text COLLATE "C" NOT NULL,
                currency text NOT NULL,
                amount bigint NOT NULL,
                balance_after bigint NOT NULL,
                reason text NOT NULL,
                reference text,
                at timestamptz NOT NULL
            )""",
            "CREATE INDEX ledger_by_buddy ON {s}.ledger (tenant, user_id, audience, id)",
            "CREATE INDEX ledger_by_tenant ON {s}.ledger (tenant, id)",
            """CREATE TABLE {s}.outbox (
                id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                tenant text COLLATE "C" NOT NULL,
                type text NOT NULL,
                user_id text COLLATE "C" NOT NULL,
                audience text COLLATE "C" NOT NULL,
                payload jsonb NOT NULL,
                at timestamptz NOT NULL,
                acked_at timestamptz
            )""",
            "CREATE INDEX outbox_pending ON {s}.outbox (tenant, id) WHERE acked_at IS NULL",
            # One row per server backend, rewritten by PostgresStore.group()'s final flush: a
            # commit only waits for the WAL flush if its transaction wrote WAL, so the flush
            # needs a real (if tiny) write; one row per backend keeps flushes from contending.
            """CREATE TABLE {s}.flush_marks (
                backend_pid integer PRIMARY KEY,
                flushed_at timestamptz NOT NULL
            )""",
            # Lock a buddy's key, then read its row FOR UPDATE: one prepared call, in this
            # order (see "One writer per buddy"). ``no_flush_wait`` makes this transaction's
            # commit asynchronous (inside a group: see PostgresStore.group).
            """CREATE FUNCTION {s}.lock_buddy(
                lock_key bigint, p_tenant text, p_user_id text, p_audience text,
                no_flush_wait boolean
            ) RETURNS text LANGUAGE plpgsql AS $$
            DECLARE
                found text;
            BEGIN
                IF no_flush_wait THEN
                    PERFORM set_config('synchronous_commit', 'off', true);
                END IF;
                PERFORM pg_advisory_xact_lock(lock_key);
                SELECT state::text INTO found FROM {s}.buddies
                 WHERE tenant = p_tenant AND user_id = p_user_id AND audience = p_audience
                   FOR UPDATE;
                RETURN found;
            END $$""",
            # The quota check and the addition are one statement: a reservation that would
            # cross the limit inserts or updates nothing and yields NULL. Called as a single
            # autocommit statement; ``no_flush_wait`` (set_config(..., true) lasts until the
            # end of that statement's transaction, commit included) skips the flush wait.
            """CREATE FUNCTION {s}.reserve_quota(
                p_tenant text, p_month text, p_count bigint, p_limit bigint,
                no_flush_wait boolean
            ) RETURNS bigint LANGUAGE plpgsql AS $$
            DECLARE
                now_used bigint;
            BEGIN
                IF no_flush_wait THEN
                    PERFORM set_config('synchronous_commit', 'off', true);
                END IF;
                INSERT INTO {s}.quota AS q (tenant, month, used)
                SELECT p_tenant, p_month, p_count
                 WHERE p_limit IS NULL OR p_count <= p_limit
                ON CONFLICT (tenant, month) DO UPDATE SET used = q.used + EXCLUDED.used
                 WHERE p_limit IS NULL OR q.used + EXCLUDED.used <= p_limit
                RETURNING q.used INTO now_used;
                RETURN now_used;
            END $$""",
            """CREATE FUNCTION {s}.release_quota(
                p_tenant text, p_month text, p_count bigint, no_flush_wait boolean
            ) RETURNS void LANGUAGE plpgsql AS $$
            BEGIN
                IF no_flush_wait THEN
                    PERFORM set_config('synchronous_commit', 'off', true);
                END IF;
                UPDATE {s}.quota SET used = greatest(used - p_count, 0)
                 WHERE tenant = p_tenant AND month = p_month;
            END $$""",
        ),
    ),
    # The server parsed every state into jsonb and printed it back on every read (and the
    # stored form differed from the one sent, so the write returned it for the cache); the
    # state is only ever read whole, by the store. A query that wants to look inside casts
    # (``state::jsonb``). Rewrites the buddies table. The ledger's ids are only ever read
    # per tenant: its primary key becomes (tenant, id), which also serves the tenant's
    # ledger in order, and the separate (tenant, id) index goes (one index less per row).
    Migration(
        2,
        "buddy states as text; ledger keyed by (tenant, id)",
        (
            "ALTER TABLE {s}.buddies ALTER COLUMN state TYPE text USING state::text",
            "CREATE UNIQUE INDEX ledger_tenant_id ON {s}.ledger (tenant, id)",
            "ALTER TABLE {s}.ledger DROP CONSTRAINT ledger_pkey",
            "ALTER TABLE {s}.ledger ADD CONSTRAINT ledger_pkey PRIMARY KEY "
            "USING INDEX ledger_tenant_id",
            "DROP INDEX {s}.ledger_by_tenant",
        ),
    ),
)


def _import_driver() -> tuple[Any, Any]:
    try:
        import psycopg
        import psycopg_pool
    except ImportError as exc:
        raise StoreError(
            'PostgresStore needs psycopg 3 and psycopg-pool: pip install "buddyrules[postgres]"'
            ' (or: pip install "psycopg[binary]" psycopg-pool)',
            {"missing": exc.name or "psycopg"},
        ) from exc
    return psycopg, psycopg_pool


def _lock_id(*parts: str) -> int:
    """A signed 64-bit advisory-lock key for ``parts`` (a collision only serialises more)."""
    digest = hashlib.blake2b("\x1f".join(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


class _Sql:
    """The statements of one schema (built once per store)."""

    def __init__(self, schema: str) -> None:
        s = f'"{schema}"'
        self.migration_lock = "SELECT pg_advisory_xact_lock(%s::bigint)"
        receipt_columns = (
            f"SELECT event_id, fingerprint, user_id, audience, effects FROM {s}.receipts "
        )
        # A unit makes two round trips: its opening and its writes with the COMMIT, each a
        # libpq pipeline of these statements (see PostgresStore._exchange_on). They are
        # prepared on each connection once (``prepare``; a prepared statement belongs to its
        # session), so the server neither parses nor plans them per unit.
        self.prepare = "; ".join(
            (
                "PREPARE buddyrules_lock (bigint, text, text, text, boolean) AS "
                f"SELECT {s}.lock_buddy($1, $2, $3, $4, $5)",
                "PREPARE buddyrules_receipt (text, text) AS "
                + receipt_columns
                + "WHERE tenant = $1 AND event_id = $2",
                "PREPARE buddyrules_put_buddy (text, text, text, text) AS "
                f"INSERT INTO {s}.buddies (tenant, user_id, audience, state) "
                "VALUES ($1, $2, $3, $4) ON CONFLICT (tenant, user_id, audience) "
                "DO UPDATE SET state = EXCLUDED.state, updated_at = now()",
                "PREPARE buddyrules_put_receipt (text, text, text, text, text, json) AS "
                f"INSERT INTO {s}.receipts (tenant, event_id, fingerprint, user_id, audience, "
                "effects) VALUES ($1, $2, $3, $4, $5, $6)",
                # Ledger and outbox rows travel as one JSON array each (one parameter, encoded
                # in C, whatever the count; measured earlier, adapting one array per column
                # cost more client CPU than the round trips it saved). A function scan yields
                # the rows in array order, so their identity ids follow it.
                "PREPARE buddyrules_put_ledger (text, json) AS "
                f"INSERT INTO {s}.ledger (tenant, user_id, audience, currency, amount, "
                "balance_after, reason, reference, at) SELECT $1, r.user_id, r.audience, "
                "r.currency, r.amount, r.balance_after, r.reason, r.reference, r.at "
                "FROM json_to_recordset($2) AS r(user_id text, audience text, currency text, "
                "amount bigint, balance_after bigint, reason text, reference text, "
                "at timestamptz)",
                "PREPARE buddyrules_put_outbox (text, json) AS "
                f"INSERT INTO {s}.outbox (tenant, type, user_id, audience, payload, at) "
                "SELECT $1, r.type, r.user_id, r.audience, r.payload, r.at "
                "FROM json_to_recordset($2) AS r(type text, user_id text, audience text, "
                "payload jsonb, at timestamptz)",
            )
        )
        # The hot autocommit calls are prepared the same way (see _call).
        self.prepare += "; " + "; ".join(
            (
                "PREPARE buddyrules_buddy (text, text, text) AS "
                f"SELECT state FROM {s}.buddies "
                "WHERE tenant = $1 AND user_id = $2 AND audience = $3",
                "PREPARE buddyrules_reserve (text, text, bigint, bigint, boolean) AS "
                f"SELECT {s}.reserve_quota($1, $2, $3, $4, $5)",
                "PREPARE buddyrules_release (text, text, bigint, boolean) AS "
                f"SELECT {s}.release_quota($1, $2, $3, $4)",
                # PostgresStore.lookup: many keys per statement (as arrays; unnest pairs the
                # buddies' two up in order), each one primary-key probe. The LATERAL
                # subqueries with OFFSET 0 cannot be flattened into a join, so the plan stays
                # a nested loop of index probes: with a plain join or ``= ANY``, the generic
                # plan of a prepared statement was seen to scan the tenant's whole key range.
                "PREPARE buddyrules_lookup_buddies (text, text[], text[]) AS "
                "SELECT b.user_id, b.audience, b.state "
                "FROM unnest($2, $3) AS k(user_id, audience) CROSS JOIN LATERAL "
                f"(SELECT user_id, audience, state FROM {s}.buddies WHERE tenant = $1 "
                "AND user_id = k.user_id AND audience = k.audience OFFSET 0) AS b",
                "PREPARE buddyrules_lookup_receipts (text, text[]) AS "
                "SELECT r.event_id, r.fingerprint, r.user_id, r.audience, r.effects "
                "FROM unnest($2) AS k(event_id) CROSS JOIN LATERAL "
                "(SELECT event_id, fingerprint, user_id, audience, effects "
                f"FROM {s}.receipts WHERE tenant = $1 AND event_id = k.event_id OFFSET 0) AS r",
            )
        )
        # The names _exchange_on runs them by (see _Step).
        self.lookup_buddies = b"buddyrules_lookup_buddies"
        self.lookup_receipts = b"buddyrules_lookup_receipts"
        self.get_buddy = b"buddyrules_buddy"
        self.get_receipt = b"buddyrules_receipt"
        self.reserve = b"buddyrules_reserve"
        self.release = b"buddyrules_release"
        self.lock = b"buddyrules_lock"
        self.put_buddy = b"buddyrules_put_buddy"
        self.put_receipt = b"buddyrules_put_receipt"
        self.put_ledger = b"buddyrules_put_ledger"
        self.put_outbox = b"buddyrules_put_outbox"
        self.quota_used = f"SELECT used FROM {s}.quota WHERE tenant = %s AND month = %s"
        self.buddies_page = (
            f"SELECT user_id, audience, state FROM {s}.buddies WHERE tenant = %s "
            "AND (user_id, audience) > (%s, %s) ORDER BY user_id, audience LIMIT %s"
        )
        self.user_buddies = (
            f"SELECT state FROM {s}.buddies WHERE tenant = %s AND user_id = %s ORDER BY audience"
        )
        self.export = f"SELECT state FROM {s}.buddies WHERE tenant = %s ORDER BY user_id, audience"
        self.put_rulebook = (
            f"INSERT INTO {s}.rulebooks (tenant, version, name, status, document_text, "
            "sequence, published_at, extra) VALUES (%s, %s, %s, %s, %s, %s::bigint, %s, "
            "%s::jsonb) ON CONFLICT (tenant, version) DO UPDATE SET name = EXCLUDED.name, "
            "status = EXCLUDED.status, document_text = EXCLUDED.document_text, "
            "sequence = EXCLUDED.sequence, published_at = EXCLUDED.published_at, "
            "extra = EXCLUDED.extra"
        )
        rulebook_columns = (
            "SELECT version, name, status, document_text, sequence, published_at, extra "
            f"FROM {s}.rulebooks "
        )
        self.rulebook = rulebook_columns + "WHERE tenant = %s AND version = %s"
        self.rulebooks = rulebook_columns + "WHERE tenant = %s ORDER BY seq"
        ledger_columns = (
            "SELECT id, user_id, audience, currency, amount, balance_after, reason, reference, "
            f"at FROM {s}.ledger "
        )
        self.ledger = ledger_columns + "WHERE tenant = %s ORDER BY id"
        self.buddy_ledger = (
            ledger_columns + "WHERE tenant = %s AND user_id = %s AND audience = %s ORDER BY id"
        )
        self.outbox_pending = (
            f"SELECT id, type, user_id, audience, payload, at FROM {s}.outbox "
            "WHERE tenant = %s AND acked_at IS NULL ORDER BY id LIMIT %s"
        )
        self.outbox_ack = (
            f"UPDATE {s}.outbox SET acked_at = now() "
            "WHERE tenant = %s AND id = ANY(%s::bigint[]) AND acked_at IS NULL"
        )
        self.version = f"SELECT coalesce(max(version), 0) FROM {s}.schema_version"
        self.flush_mark = (
            f"INSERT INTO {s}.flush_marks (backend_pid, flushed_at) "
            "VALUES (pg_backend_pid(), now()) "
            "ON CONFLICT (backend_pid) DO UPDATE SET flushed_at = EXCLUDED.flushed_at"
        )


def _ledger_record(row: Sequence[Any]) -> LedgerRecord:
    return LedgerRecord(
        id=row[0],
        user_id=row[1],
        audience=row[2],
        currency=row[3],
        amount=row[4],
        balance_after=row[5],
        reason=row[6],
        reference=row[7],
        at=row[8],
    )


def _rulebook_record(row: Sequence[Any]) -> RulebookRecord:
    return RulebookRecord(
        version=row[0],
        name=row[1],
        status=row[2],
        document=json.loads(row[3]),
        sequence=row[4],
        published_at=row[5],
        extra=row[6],
    )


def _receipt_at(result: PGresult, i: int) -> Receipt:
    """The receipt in row ``i`` of a result of the receipt statements (see _Sql)."""
    return Receipt(
        event_id=_text(result, i, 0),
        fingerprint=_text(result, i, 1),
        user_id=_text(result, i, 2),
        audience=_text(result, i, 3),
        effects=json.loads(_text(result, i, 4)),
    )


def _text(result: PGresult, i: int, j: int) -> str:
    """The value in row ``i``, column ``j`` of a NOT NULL text column, as a string."""
    value = result.get_value(i, j)
    if value is None:
        raise StoreError("PostgreSQL returned NULL where a value was expected")
    return value.decode()


def _int_or_none(result: PGresult) -> int | None:
    """The single value of a one-row result of a function returning a bigint (or NULL)."""
    value = result.get_value(0, 0) if result.ntuples else None
    return int(value) if value is not None else None


class _ServerError(Exception):
    """A step of :meth:`PostgresStore._exchange_on` failed on the server."""

    def __init__(self, result: PGresult, fields: Any, step: int, results: list[PGresult]) -> None:
        def field(code: Any) -> str | None:
            value = result.error_field(code)
            return value.decode("utf-8", "replace") if value is not None else None

        message = result.error_message.decode("utf-8", "replace").strip()
        super().__init__(message.removeprefix("ERROR:").strip())
        self.sqlstate = field(fields.SQLSTATE)
        self.table_name = field(fields.TABLE_NAME)
        self.step = step  # the index of the failing step
        self.results = results  # every step's

    def is_duplicate_in(self, table: str) -> bool:
        """A unique violation on ``table``."""
        return self.sqlstate == "23505" and self.table_name == table


#: One step of :meth:`PostgresStore._exchange_on`: a prepared statement's name and its
#: parameters, or a parameterless statement's text and None.
_Step = tuple[bytes, Sequence[Any] | None]
_BEGIN: Final[_Step] = (b"BEGIN", None)
_COMMIT: Final[_Step] = (b"COMMIT", None)
_ROLLBACK: Final[_Step] = (b"ROLLBACK", None)
_PIPELINE_SYNC: Final = 10  # libpq's PGRES_PIPELINE_SYNC


def _encode(value: Any) -> bytes | None:
    """A parameter in PostgreSQL's text format (the prepared statement gives its type).

    Strings, integers, booleans, None and lists of strings (``text[]``) are the kinds the
    statements take. A string holding a NUL character is refused: PostgreSQL text cannot
    hold one, and libpq would silently cut a text-format parameter at it.
    """
    kind = type(value)
    if kind is str:
        # On the str: ``bytes in bytes`` first tries the operand as an integer, and raising
        # and dropping that TypeError cost more than the rest of the parameter (measured).
        if "\x00" in value:
            raise StoreError(
                "PostgreSQL text cannot contain NUL (0x00) characters", {"value": value}
            )
        data: bytes = value.encode()
        return data
    if value is None:
        return None
    if kind is bool:
        return b"t" if value else b"f"
    if kind is int:
        return b"%d" % value
    if kind is list or kind is tuple:
        # An array literal with every element quoted ("NULL" stays a string).
        items = []
        for item in value:
            if type(item) is not str:
                raise TypeError("an array parameter holds strings only")
            text = _encode(item)
            assert text is not None
            items.append(b'"' + text.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"')
        return b"{" + b",".join(items) + b"}"
    raise TypeError(f"cannot send a {kind.__name__} as a parameter")


def _pipeline_results(pgconn: Any) -> list[PGresult]:
    """Flush the pipeline sent on ``pgconn`` and read its results up to the ``Sync``.

    One result per step (a step skipped after a failure gives a ``PIPELINE_ABORTED`` one).
    The connection is in libpq's non-blocking mode (psycopg sets it): flush until all is
    out (reading meanwhile, so neither side can block on a full buffer), then read, waiting
    without the GIL. Raises psycopg's error if the connection fails.
    """
    fd = pgconn.socket
    while pgconn.flush():
        _wait(fd, write=True)
        pgconn.consume_input()
    results: list[PGresult] = []
    while True:
        while pgconn.is_busy():
            _wait(fd, write=False)
            pgconn.consume_input()
        result = pgconn.get_result()
        if result is None:
            continue  # the end of one step's results
        if result.status == _PIPELINE_SYNC:
            return results
        results.append(result)


if hasattr(select, "poll"):

    def _wait(fd: int, *, write: bool) -> None:
        poller = select.poll()
        poller.register(fd, select.POLLIN | select.POLLOUT if write else select.POLLIN)
        poller.poll()

else:  # pragma: no cover - Windows: no poll(), and select() takes any socket there

    def _wait(fd: int, *, write: bool) -> None:
        select.select([fd], [fd] if write else [], [])


class PostgresStore:
    """A :class:`~buddyrules.storage.protocols.Store` in PostgreSQL (psycopg 3 + a pool).

    Create the schema once with :meth:`migrate` (idempotent; safe to run from several
    processes at once), then share one store per process between threads::

        store = PostgresStore("postgresql://app@db/app")
        store.migrate()
        engine = Engine(store=store)

    Args:
        dsn: a libpq connection string or URL.
        schema: the PostgreSQL schema holding the tables (an identifier of letters, digits and
            ``_``); several independent stores can share a database under different schemas.
        min_size: connections the pool keeps open.
        max_size: most connections the pool opens (one per concurrently open unit of work or
            read, so at least the number of writer threads).
        timeout: seconds to wait for a free pooled connection before raising
            :class:`~buddyrules.errors.StoreError`.
        group_commit: inside :meth:`group`, commit units asynchronously and flush once when
            the group ends (see the module docstring); False makes :meth:`group` a no-op.
        durable_quota: wait for the WAL flush of every quota change (off by default: see the
            module docstring).
    """

    #: The forward migrations :meth:`migrate` applies (a subclass may extend them).
    migrations: tuple[Migration, ...] = MIGRATIONS
    #: Units take a single send's quota (``QuotaUnitOfWork``): usually reserved in their
    #: opening round trip, in a transaction of its own (see :meth:`_PostgresUnit.reserve_quota`).
    quota_in_unit: ClassVar[bool] = True

    def __init__(
        self,
        dsn: str,
        *,
        schema: str = "buddyrules",
        min_size: int = 1,
        max_size: int = 10,
        timeout: float = 30.0,
        group_commit: bool = True,
        durable_quota: bool = False,
    ) -> None:
        psycopg_module, pool_module = _import_driver()
        if psycopg_module.pq.version() < 140000:
            raise StoreError(
                "PostgresStore needs libpq 14 or later (for its pipeline mode); psycopg uses "
                f"libpq {psycopg_module.pq.version()}: install psycopg[binary], which ships one",
                {"libpq": psycopg_module.pq.version()},
            )
        if not _IDENT.fullmatch(schema):
            raise ValueError(
                f"schema must be an identifier of letters, digits and _ (<= 63), not {schema!r}"
            )
        self._psycopg = psycopg_module
        self._pool_module = pool_module
        self._dsn = dsn
        self._schema = schema
        self._min_size = min_size
        self._max_size = max_size
        self._timeout = timeout
        self._sql = _Sql(schema)
        self._states = _StateCache()
        self._ready = False
        self._closed = False
        self._group_commit = group_commit
        self._durable_quota = durable_quota
        self._local = _ThreadState()  # this thread's group, guesses and expected unit
        # tenant -> (month, limit) of the last reservation a unit was asked for: what the next
        # single send's unit reserves early (see _PostgresUnit.reserve_quota).
        self._unit_quota: dict[str, tuple[str, int | None]] = {}
        self._pool_lock = threading.Lock()
        self._pool: psycopg_pool.ConnectionPool[psycopg.Connection[Any]] | None = None
        self._pool_pid = 0
        self._pq: Any = psycopg_module.pq
        # Connections on which _Sql.prepare has run (a closed one drops out by itself).
        self._prepared: weakref.WeakSet[psycopg.Connection[Any]] = weakref.WeakSet()
        self._error: tuple[type[Exception], ...] = (psycopg_module.Error, _ServerError)
        self._pool_timeout: type[Exception] = pool_module.PoolTimeout
        self._missing_relation: tuple[type[Exception], ...] = (
            psycopg_module.errors.UndefinedTable,
            psycopg_module.errors.InvalidSchemaName,
        )

    def __repr__(self) -> str:
        return f"PostgresStore(schema={self._schema!r})"

    @property
    def schema(self) -> str:
        """The PostgreSQL schema holding this store's tables."""
        return self._schema

    # -- connections ---------------------------------------------------------------------

    def _get_pool(self) -> psycopg_pool.ConnectionPool[psycopg.Connection[Any]]:
        pool = self._pool
        if pool is not None and self._pool_pid == os.getpid():
            return pool
        with self._pool_lock:
            if self._closed:
                raise StoreError(f"{self!r} is closed")
            if self._pool is None or self._pool_pid != os.getpid():
                # A forked child must not touch its parent's sockets: it gets its own pool
                # (the inherited one is dropped without closing the parent's connections).
                self._pool = self._pool_module.ConnectionPool(
                    self._dsn,
                    min_size=self._min_size,
                    max_size=self._max_size,
                    timeout=self._timeout,
                    # psycopg's own prepared statements are off: on seeing a ROLLBACK it
                    # runs DEALLOCATE ALL, which would drop this store's (see _Sql.prepare).
                    kwargs={"autocommit": True, "prepare_threshold": None},
                    configure=_configure,
                    name=f"buddyrules-{self._schema}",
                    open=True,
                )
                self._pool_pid = os.getpid()
            return self._pool

    def _getconn(self) -> psycopg.Connection[Any]:
        try:
            return self._get_pool().getconn()
        except self._pool_timeout as exc:
            raise StoreError(
                f"no PostgreSQL connection available within {self._timeout}s "
                f"(pool max_size={self._max_size}): is the server reachable? {exc}",
                {"schema": self._schema},
            ) from exc
        except self._error as exc:
            self._fail(exc, "connecting")

    def _putconn(self, conn: psycopg.Connection[Any]) -> None:
        pool = self._pool
        if pool is not None and self._pool_pid == os.getpid():
            pool.putconn(conn)

    def _fail(self, exc: Exception, doing: str) -> NoReturn:
        """Raise the buddyrules error for a driver error."""
        if isinstance(exc, self._missing_relation) or (
            isinstance(exc, _ServerError) and exc.sqlstate in _MISSING_RELATION
        ):
            self._ready = False
            raise self._not_migrated(f"missing table while {doing}: {exc}") from exc
        sqlstate = getattr(exc, "sqlstate", None)
        raise StoreError(
            f"PostgreSQL error while {doing}: {exc}",
            {"schema": self._schema, "sqlstate": sqlstate},
        ) from exc

    def _not_migrated(self, why: str) -> StoreError:
        return StoreError(
            f"the buddyrules schema {self._schema!r} is not ready ({why}): call "
            "PostgresStore(...).migrate() once (at deploy time) before using the store",
            {"schema": self._schema, "latest": self._latest()},
        )

    def _latest(self) -> int:
        return self.migrations[-1].version if self.migrations else 0

    def _query(
        self,
        sql: str,
        params: Sequence[Any] | dict[str, Any],
        doing: str,
        *,
        read_only: bool = True,
    ) -> list[Any]:
        """One autocommit statement on a pooled connection; returns its rows (if any).

        A read that fails because its pooled connection had died (e.g. the server restarted
        since it was opened) is tried once more on a fresh connection; a write is not, since
        it may have committed before the connection broke.
        """
        if not self._ready:
            self._check_schema()
        for attempt in (1, 2):
            conn = self._getconn()
            try:
                cur = conn.execute(sql, params)
                # pgresult.status, not cursor.description: the latter builds column
                # objects on every call, a measurable part of a point read.
                result = cur.pgresult
                return cur.fetchall() if result is not None and result.status == _TUPLES_OK else []
            except self._error as exc:
                if read_only and attempt == 1 and conn.broken:
                    continue
                self._fail(exc, doing)
            finally:
                self._putconn(conn)
        raise AssertionError("unreachable")  # pragma: no cover

    def _call(
        self, steps: Sequence[_Step], doing: str, *, read_only: bool = True
    ) -> list[PGresult]:
        """Prepared statements in one round trip on a pooled connection: their results.

        See :meth:`_exchange_on`; retried once on a fresh connection, as :meth:`_query`
        does, if it only reads and its pooled connection had died.
        """
        if not self._ready:
            self._check_schema()
        for attempt in (1, 2):
            conn = self._getconn()
            try:
                return self._exchange_on(conn, steps)
            except self._error as exc:
                if read_only and attempt == 1 and conn.broken:
                    continue
                self._fail(exc, doing)
            finally:
                self._putconn(conn)
        raise AssertionError("unreachable")  # pragma: no cover

    def _exchange_on(self, conn: psycopg.Connection[Any], steps: Sequence[_Step]) -> list[PGresult]:
        """Run ``steps`` on ``conn`` as one libpq pipeline (one round trip); their results.

        The store's hot calls (lookups, units, quota) go to libpq directly, not through a
        psycopg cursor: each step is a ``Bind``/``Execute`` of a statement prepared on the
        connection (:meth:`_prepare`) with its parameters as text (see :func:`_encode`), or
        a parameterless statement (``BEGIN``, ``COMMIT``, ``ROLLBACK``), then one ``Sync``;
        the results are libpq's, decoded by the caller. Compared with one simple query of
        ``EXECUTE``s with the parameters written in as literals (psycopg's client-side
        cursor), the server neither lexes the values nor evaluates them as expressions and
        the client builds no cursor: see docs/DECISIONS.md for the figures.

        Steps run in order as in a simple query (a failing one skips the rest up to the
        ``Sync``, and leaves an explicit transaction aborted); a failure raises
        :class:`_ServerError`, which says which step failed, after the whole pipeline is read
        (the connection is then ready for the next call). A lost connection raises psycopg's
        error (``conn.broken``); any other failure on the way closes the connection, which
        could be left inside a pipeline.
        """
        if conn not in self._prepared:
            self._prepare(conn)
        encoded = [
            (name, None if params is None else [_encode(value) for value in params])
            for name, params in steps
        ]
        pgconn = conn.pgconn
        try:
            pgconn.enter_pipeline_mode()
            for name, values in encoded:
                if values is None:
                    pgconn.send_query_params(name, None)
                else:
                    pgconn.send_query_prepared(name, values)
            pgconn.pipeline_sync()
            results = _pipeline_results(pgconn)
            pgconn.exit_pipeline_mode()
        except BaseException:
            if not conn.broken:
                conn.close()  # maybe still inside the pipeline: not reusable
            raise
        for i, result in enumerate(results):
            if result.status == _FATAL_ERROR:
                raise _ServerError(result, self._pq.DiagnosticField, i, results)
        return results

    def _execute(self, sql: str, params: Sequence[Any], doing: str) -> int:
        """One autocommit statement; returns the number of rows it changed."""
        if not self._ready:
            self._check_schema()
        conn = self._getconn()
        try:
            return int(conn.execute(sql, params).rowcount)
        except self._error as exc:
            self._fail(exc, doing)
        finally:
            self._putconn(conn)

    def close(self) -> None:
        """Close the pool's connections; the store cannot be used afterwards."""
        with self._pool_lock:
            self._closed = True
            pool, self._pool = self._pool, None
        if pool is not None and self._pool_pid == os.getpid():
            pool.close()

    def __enter__(self) -> PostgresStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- schema --------------------------------------------------------------------------

    def schema_version(self) -> int:
        """The schema version in the database (0 when the schema was never migrated)."""
        conn = self._getconn()
        try:
            return self._version(conn)
        finally:
            self._putconn(conn)

    def _version(self, conn: psycopg.Connection[Any]) -> int:
        exists = conn.execute(
            "SELECT to_regclass(%s) IS NOT NULL", (f'"{self._schema}".schema_version',)
        ).fetchone()
        if not exists or not exists[0]:
            return 0
        row = conn.execute(self._sql.version).fetchone()
        return int(row[0]) if row else 0

    def _check_schema(self) -> None:
        conn = self._getconn()
        try:
            current = self._version(conn)
        except self._error as exc:
            self._fail(exc, "checking the schema version")
        finally:
            self._putconn(conn)
        latest = self._latest()
        if current > latest:
            raise StoreError(
                f"the buddyrules schema {self._schema!r} has version {current}, newer than "
                f"this release knows ({latest}); upgrade buddyrules",
                {"schema": self._schema, "schema_version": current, "supported": latest},
            )
        if current < latest:
            why = "missing" if current == 0 else f"version {current}, latest is {latest}"
            raise self._not_migrated(why)
        self._ready = True

    def migrate(self) -> list[int]:
        """Create the schema or bring it up to date; returns the versions applied now.

        Idempotent, and safe to run from several processes at once: migrations run in one
        transaction under an advisory lock, so they are applied once and completely.
        """
        conn = self._getconn()
        s = f'"{self._schema}"'
        applied: list[int] = []
        try:
            with conn.transaction():
                conn.execute(
                    self._sql.migration_lock, (_lock_id("buddyrules.migrate", self._schema),)
                )
                conn.execute(f"CREATE SCHEMA IF NOT EXISTS {s}")
                conn.execute(
                    f"CREATE TABLE IF NOT EXISTS {s}.schema_version ("
                    "version integer PRIMARY KEY, description text NOT NULL, "
                    "applied_at timestamptz NOT NULL DEFAULT now())"
                )
                current = self._version(conn)
                if current > self._latest():
                    raise StoreError(
                        f"the buddyrules schema {self._schema!r} has version {current}, newer "
                        f"than this release knows ({self._latest()}); upgrade buddyrules",
                        {"schema": self._schema, "schema_version": current},
                    )
                for migration in self.migrations:
                    if migration.version <= current:
                        continue
                    for statement in migration.statements:
                        conn.execute(statement.format(s=s))
                    conn.execute(
                        f"INSERT INTO {s}.schema_version (version, description) VALUES (%s, %s)",
                        (migration.version, migration.description),
                    )
                    applied.append(migration.version)
        except self._error as exc:
            self._fail(exc, "migrating the schema")
        finally:
            self._putconn(conn)
        self._ready = True
        return applied

    # -- units of work and batches -------------------------------------------------------

    def unit_of_work(self, tenant: str, key: BuddyKey) -> AbstractContextManager[_PostgresUnit]:
        """Lock the buddy key (advisory lock, then the row) and open a transaction.

        Commits on a clean exit (a duplicate receipt then raises
        :class:`~buddyrules.errors.ConflictError` and nothing is kept) and rolls back on an
        exception.
        """
        return _PostgresUnit(self, tenant, key)

    def unit_for_event(
        self,
        tenant: str,
        key: BuddyKey,
        event_id: str | None,
        quota: tuple[str, int | None] | None,
    ) -> AbstractContextManager[_PostgresUnit]:
        """:meth:`unit_of_work` for one event, told what the unit will be asked (optional).

        For an Engine that reads a single send's buddy and receipt inside the unit instead
        of looking them up first: the unit's opening round trip also reads the receipt of
        ``event_id`` (under the buddy's lock) and, with ``quota`` (month, limit), reserves
        one event of quota first in a transaction of its own, exactly as a unit opened after
        a :meth:`lookup` does by guessing (see :meth:`_PostgresUnit.reserve_quota`). A send
        is then two round trips. Nothing else differs from :meth:`unit_of_work`: a
        reservation the unit is not asked for is given back, whatever the unit reads that it
        was not told about is read when asked.
        """
        unit = _PostgresUnit(self, tenant, key)
        unit._told = (event_id, quota)
        return unit

    def group(self, tenant: str) -> AbstractContextManager[None]:
        """Units stay separate transactions; their commits are flushed once, on leaving.

        Each unit inside the group commits (and releases its buddy's lock) on its own, without
        waiting for the WAL flush; leaving the group, also with an exception, waits for one
        flush that covers them all. With ``group_commit=False`` this is a no-op.
        """
        if not self._group_commit:
            return nullcontext()
        return _PostgresGroup(self)

    def _prepare(self, conn: psycopg.Connection[Any]) -> None:
        """Prepare the statements of units on ``conn`` (once per connection).

        Raises the driver's error; a connection where it failed is closed (some statements
        may be prepared already, and a prepared name cannot be prepared again), so the pool
        replaces it.
        """
        try:
            conn.execute(self._sql.prepare)
        except BaseException:
            conn.close()
            raise
        self._prepared.add(conn)

    def _in_group(self) -> bool:
        return self._local.depth > 0

    def _flush_wal(self) -> None:
        """Wait until the WAL holds every commit made so far on this server durably.

        A synchronous commit of a transaction that wrote WAL waits for the WAL to be flushed
        up to its commit record, so every asynchronous commit before it is flushed too (the
        WAL is written in order). A transaction that wrote nothing logged (not even one that
        took an xid) commits asynchronously, hence the write to this backend's flush mark.
        """
        self._query(self._sql.flush_mark, (), "flushing a batch", read_only=False)

    # -- plain reads and writes ------------------------------------------------------------

    def get_buddy(self, tenant: str, key: BuddyKey) -> BuddyState | None:
        """Read a buddy without locking it."""
        ident = (tenant, key.user_id, key.audience)
        result = self._call([(self._sql.get_buddy, ident)], "reading a buddy")[0]
        return self._states.parsed(ident, _text(result, 0, 0)) if result.ntuples else None

    def list_buddies(self, tenant: str, user_id: str | None = None) -> Iterator[BuddyState]:
        """Every buddy of the tenant (or of one user), ordered by user_id then audience.

        Read in pages of 500 by key (no cursor stays open between items); a buddy hatched
        meanwhile may or may not appear. Use :meth:`export_states` for one snapshot.
        """
        if user_id is not None:
            rows = self._query(self._sql.user_buddies, (tenant, user_id), "listing buddies")
            for row in rows:
                yield BuddyState.model_validate_json(row[0])
            return
        after = ("", "")
        while True:
            rows = self._query(self._sql.buddies_page, (tenant, *after, _PAGE), "listing buddies")
            for row in rows:
                yield BuddyState.model_validate_json(row[2])
            if len(rows) < _PAGE:
                return
            after = (rows[-1][0], rows[-1][1])

    def export_states(self, tenant: str) -> list[BuddyState]:
        """A snapshot of every buddy of the tenant, ordered by user_id then audience."""
        rows = self._query(self._sql.export, (tenant,), "exporting buddies")
        return [BuddyState.model_validate_json(row[0]) for row in rows]

    def get_receipt(self, tenant: str, event_id: str) -> Receipt | None:
        """Read a receipt without locking."""
        step = (self._sql.get_receipt, (tenant, event_id))
        result = self._call([step], "reading a receipt")[0]
        if result.ntuples:
            return _receipt_at(result, 0)
        self._probed().append((tenant, event_id))
        return None

    def lookup(
        self, tenant: str, keys: Sequence[BuddyKey], event_ids: Sequence[str]
    ) -> tuple[dict[BuddyKey, BuddyState], dict[str, Receipt]]:
        """Read several buddies and receipts at once, without locking: one round trip.

        The same results as :meth:`get_buddy` per key and :meth:`get_receipt` per id (absent
        ones are missing). One simple-protocol query of prepared statements: the buddies'
        and the receipts' (a single key or id uses the statement of ``get_buddy`` or
        ``get_receipt``); an empty input sends no statement for its table, and nothing at all
        when both are empty. Like :meth:`get_receipt`, the ids found absent are queued as
        guesses for the next units of this thread (see :meth:`_next_probed`), each distinct
        id once, in input order: the engine applies each new id once, in that order.
        """
        buddies: dict[BuddyKey, BuddyState] = {}
        receipts: dict[str, Receipt] = {}
        # Duplicates are read (and queued as guesses) once, first occurrence first.
        wanted_keys = list(dict.fromkeys(keys))
        wanted_ids = list(dict.fromkeys(event_ids))
        if not wanted_keys and not wanted_ids:
            return buddies, receipts
        sql = self._sql
        steps: list[_Step] = []
        if len(wanted_keys) == 1:
            steps.append((sql.get_buddy, (tenant, wanted_keys[0].user_id, wanted_keys[0].audience)))
        elif wanted_keys:
            user_ids = [key.user_id for key in wanted_keys]
            audiences = [key.audience for key in wanted_keys]
            steps.append((sql.lookup_buddies, (tenant, user_ids, audiences)))
        if len(wanted_ids) == 1:
            steps.append((sql.get_receipt, (tenant, wanted_ids[0])))
        elif wanted_ids:
            steps.append((sql.lookup_receipts, (tenant, wanted_ids)))
        results = self._call(steps, "reading buddies and receipts")
        if wanted_keys:
            result = results.pop(0)
            parsed = self._states.parsed
            if len(wanted_keys) == 1:
                # get_buddy's statement returns the state only.
                if result.ntuples:
                    key = wanted_keys[0]
                    text = _text(result, 0, 0)
                    buddies[key] = parsed((tenant, key.user_id, key.audience), text)
            else:
                for i in range(result.ntuples):
                    user_id, audience = _text(result, i, 0), _text(result, i, 1)
                    state = parsed((tenant, user_id, audience), _text(result, i, 2))
                    buddies[BuddyKey(user_id, audience)] = state
        if wanted_ids:
            result = results.pop(0)
            for i in range(result.ntuples):
                receipt = _receipt_at(result, i)
                receipts[receipt.event_id] = receipt
            probed = self._probed()
            probed.extend((tenant, i) for i in wanted_ids if i not in receipts)
        # One buddy and only new ids: what a single send reads before it opens that buddy's
        # unit, which then reserves the send's quota early (see _PostgresUnit.reserve_quota).
        self._local.expect = (
            (tenant, wanted_keys[0]) if len(wanted_keys) == 1 and not receipts else None
        )
        return buddies, receipts

    def _probed(self) -> deque[tuple[str, str]]:
        """This thread's queue of (tenant, event id) found absent (see :meth:`_next_probed`)."""
        probed = self._local.probed
        if probed is None:
            probed = self._local.probed = deque(maxlen=_PROBED)
        return probed

    def _next_probed(self, tenant: str) -> str | None:
        """The event id the next unit on this thread will probably ask the receipt of.

        The engine looks an event id up (:meth:`get_receipt`, no receipt) before it opens the
        event's unit, and a batch looks all its ids up, in order, before it applies them; in
        the unit it asks again, under the buddy's lock. So a unit reads the receipt of the
        oldest id this thread found absent in its opening round trip, under the lock, just as
        the later ask would: a right guess saves that round trip, a wrong one costs an index
        probe (the ask then reads as usual). Each unit takes one guess off the queue.
        """
        probed = self._local.probed
        if not probed:
            return None
        guess_tenant, event_id = probed.popleft()
        return event_id if guess_tenant == tenant else None

    def _forget_probed(self, tenant: str, event_id: str) -> None:
        """A unit asked for ``event_id`` unguessed: drop the guesses up to it (stale ones)."""
        probed = self._local.probed
        if probed and (tenant, event_id) in probed:
            while probed.popleft() != (tenant, event_id):
                pass

    def _expected_quota(self, tenant: str, key: BuddyKey) -> tuple[str, int | None] | None:
        """(month, limit) a unit opening for ``key`` should reserve early, or None.

        Only for the unit a single send opens: the first unit on this thread after a lookup
        of that one buddy that found no receipt (:meth:`lookup` leaves the mark, a plain
        :meth:`reserve_quota` removes it), outside a group, once this store's units have been
        asked for a reservation of the tenant (the month and limit are those of the last).
        """
        local = self._local
        expected = local.expect
        if expected is None:
            return None
        local.expect = None
        if expected != (tenant, key):
            return None
        return self._unit_quota.get(tenant)

    def _remember_unit_quota(self, tenant: str, month: str, limit: int | None) -> None:
        remembered = self._unit_quota
        if remembered.get(tenant) != (month, limit):
            if len(remembered) >= _TENANTS_REMEMBERED:
                remembered.clear()
            remembered[tenant] = (month, limit)

    def reserve_quota(self, tenant: str, month: str, count: int, limit: int | None) -> int | None:
        """Atomically add ``count`` to the month's usage if it stays within ``limit``.

        One statement checks the limit and adds (see the ``reserve_quota`` SQL function);
        committed without waiting for the WAL flush unless ``durable_quota``.
        """
        if count < 0:
            raise ValueError("count must not be negative")
        # Reserved outside a unit: the next unit of this thread has nothing to take early.
        self._local.expect = None
        params = (tenant, month, count, limit, not self._durable_quota)
        result = self._call([(self._sql.reserve, params)], "reserving quota", read_only=False)[0]
        return _int_or_none(result)

    def release_quota(self, tenant: str, month: str, count: int) -> None:
        """Give back reserved quota (never below zero)."""
        params = (tenant, month, count, not self._durable_quota)
        self._call([(self._sql.release, params)], "releasing quota", read_only=False)

    def quota_used(self, tenant: str, month: str) -> int:
        """The month's usage."""
        rows = self._query(self._sql.quota_used, (tenant, month), "reading quota")
        return int(rows[0][0]) if rows else 0

    def put_rulebook(self, tenant: str, record: RulebookRecord) -> None:
        """Insert or replace a rulebook record (by version; a replaced record keeps its place)."""
        self._execute(
            self._sql.put_rulebook,
            (
                tenant,
                record.version,
                record.name,
                record.status,
                _dumps(record.document),
                record.sequence,
                record.published_at,
                _dumps(record.extra),
            ),
            "storing a rulebook",
        )

    def get_rulebook(self, tenant: str, version: str) -> RulebookRecord | None:
        """One rulebook record."""
        rows = self._query(self._sql.rulebook, (tenant, version), "reading a rulebook")
        return _rulebook_record(rows[0]) if rows else None

    def list_rulebooks(self, tenant: str) -> list[RulebookRecord]:
        """Every rulebook record of the tenant, oldest first."""
        rows = self._query(self._sql.rulebooks, (tenant,), "listing rulebooks")
        return [_rulebook_record(row) for row in rows]

    def ledger(self, tenant: str, key: BuddyKey | None = None) -> list[LedgerRecord]:
        """Ledger entries (of one buddy, or all), in the order they were written."""
        if key is None:
            rows = self._query(self._sql.ledger, (tenant,), "reading the ledger")
        else:
            rows = self._query(
                self._sql.buddy_ledger,
                (tenant, key.user_id, key.audience),
                "reading the ledger",
            )
        return [_ledger_record(row) for row in rows]

    def outbox_pending(self, tenant: str, limit: int = 100) -> list[OutboxMessage]:
        """Committed, unacknowledged messages, oldest first."""
        if limit <= 0:
            return []
        rows = self._query(self._sql.outbox_pending, (tenant, limit), "reading the outbox")
        return [
            OutboxMessage(
                id=row[0], type=row[1], user_id=row[2], audience=row[3], payload=row[4], at=row[5]
            )
            for row in rows
        ]

    def outbox_ack(self, tenant: str, ids: Sequence[int]) -> int:
        """Acknowledge messages; returns how many were pending (acknowledged rows are kept)."""
        wanted = sorted({int(i) for i in ids})
        if not wanted:
            return 0
        return self._execute(
            self._sql.outbox_ack, (tenant, wanted), "acknowledging outbox messages"
        )


def _configure(conn: psycopg.Connection[Any]) -> None:
    # Timestamps come back in UTC whatever the server's default time zone.
    conn.execute("SET TIME ZONE 'UTC'")


class _PostgresUnit:
    """One buddy's transaction on one pooled connection; writes are sent on commit."""

    __slots__ = (
        "_buddy",
        "_conn",
        "_early",
        "_early_taken",
        "_ledger",
        "_lock_step",
        "_open",
        "_outbox",
        "_prefetched",
        "_receipts",
        "_shown",
        "_store",
        "_stored",
        "_tenant",
        "_told",
        "key",
    )

    def __init__(self, store: PostgresStore, tenant: str, key: BuddyKey) -> None:
        self._store = store
        self._tenant = tenant
        self.key = key
        self._conn: psycopg.Connection[Any] | None = None
        self._open = False
        self._stored: BuddyState | None = None  # as read under the lock
        self._shown = False  # whether get_buddy has returned _stored
        self._lock_step: _Step | None = None  # how the opening locked and read the buddy
        self._buddy: tuple[str, BuddyState] | None = None  # written by this unit
        self._receipts: dict[str, Receipt] = {}
        self._ledger: list[LedgerRecord] = []
        self._outbox: list[OutboxMessage] = []
        # (event id, its receipt or None) as read under the lock in the opening round trip
        self._prefetched: tuple[str, Receipt | None] | None = None
        # (month, limit, count, usage or None) of the quota reserved in a transaction of its
        # own, before the unit's (see reserve_quota), and whether reserve_quota has taken it
        self._early: tuple[str, int | None, int, int | None] | None = None
        self._early_taken = False
        # (event id, (month, limit) or None) given to PostgresStore.unit_for_event
        self._told: tuple[str | None, tuple[str, int | None] | None] | None = None

    def __enter__(self) -> _PostgresUnit:
        if self._open:
            raise StoreError("this unit of work is already open")
        store = self._store
        if not store._ready:
            store._check_schema()
        sql = store._sql
        key = self.key
        tenant = self._tenant
        user_id, audience = _key(key)
        in_group = store._in_group()
        told = self._told
        if told is None:
            guess = store._next_probed(tenant)
            early = None if in_group else store._expected_quota(tenant, key)
        else:
            guess, early = told
        if in_group:
            store._local.dirty = True  # flushed once when the group ends
        lock_key = _lock_id(store._schema, tenant, user_id, audience)
        # One round trip: BEGIN, then the buddy-key lock and the row read FOR UPDATE (the
        # lock_buddy SQL function), then maybe the receipt this unit is expected to ask for
        # (see PostgresStore._next_probed). The buddy's lock is the first (and only
        # waited-for) lock a unit takes; see "No deadlocks" in the module docstring. A
        # single send's quota comes first, in a transaction of its own (see reserve_quota).
        steps: list[_Step] = []
        if early is not None:
            reserve = (tenant, early[0], 1, early[1], not store._durable_quota)
            steps += (_BEGIN, (sql.reserve, reserve), _COMMIT)
        first = len(steps)
        self._lock_step = (sql.lock, (lock_key, tenant, user_id, audience, in_group))
        steps += (_BEGIN, self._lock_step)
        if guess is not None:
            steps.append((sql.get_receipt, (tenant, guess)))
        for attempt in (1, 2):
            conn = store._getconn()
            try:
                results = store._exchange_on(conn, steps)
                if early is not None:
                    self._early = (*early, 1, _int_or_none(results[1]))
                locked = results[first + 1]
                if guess is not None:
                    found = results[first + 2]
                    self._prefetched = (guess, _receipt_at(found, 0) if found.ntuples else None)
                break
            except store._error as exc:
                if early is not None and isinstance(exc, _ServerError) and exc.step >= first:
                    # The reservation was committed before the step that failed: give it
                    # back with the rollback.
                    self._early = (*early, 1, _int_or_none(exc.results[1]))
                self._rollback(conn)
                store._putconn(conn)
                if attempt == 1 and conn.broken:
                    continue  # a pooled connection died (server restart): nothing was done
                store._fail(exc, "locking a buddy")
            except BaseException:
                self._rollback(conn)
                store._putconn(conn)
                raise
        self._conn = conn
        self._read_locked(locked)
        self._open = True
        return self

    def _read_locked(self, locked: PGresult) -> None:
        """Keep the buddy's state as the lock_buddy step read it."""
        text = locked.get_value(0, 0)  # lock_buddy returns NULL for a buddy not hatched yet
        self._stored = (
            self._store._states.parsed((self._tenant, *_key(self.key)), text.decode())
            if text is not None
            else None
        )

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self._open:
            return
        self._open = False
        self._prefetched = None
        conn = self._conn
        assert conn is not None
        self._conn = None
        store = self._store
        try:
            if exc_type is not None:
                self._rollback(conn)
                return
            try:
                self._commit(conn)
                if self._buddy is not None:
                    # Stored as sent: the next read of this text reuses the parsed state.
                    text, state = self._buddy
                    store._states.remember((self._tenant, *_key(self.key)), text, state)
            except store._error as err:
                self._rollback(conn)
                if isinstance(err, _ServerError) and err.is_duplicate_in("receipts"):
                    ids = ", ".join(repr(i) for i in self._receipts)
                    raise ConflictError(
                        f"a receipt for event id {ids} already exists",
                        {"event_id": next(iter(self._receipts), None)},
                    ) from err
                store._fail(err, "committing a unit of work")
            except BaseException:
                self._rollback(conn)
                raise
        finally:
            store._putconn(conn)

    def _early_params(self, no_flush_wait: bool) -> tuple[Any, ...] | None:
        """The release_quota parameters that give the early reservation back, if one was made."""
        early = self._early
        if early is None or early[3] is None:
            return None
        return (self._tenant, early[0], early[2], no_flush_wait)

    def _rollback(self, conn: psycopg.Connection[Any]) -> None:
        """Roll the transaction back and give back the early reservation (one round trip).

        The reservation was committed on its own before the unit's transaction, so the unit
        undoes it: what the service expects of a unit that reserved quota and failed.
        """
        store = self._store
        release = self._early_params(not store._durable_quota)
        self._early = None
        if release is None:
            _rollback_quietly(conn)
            return
        if conn.closed:
            return  # the reservation stays counted (an over-count, as after a crash)
        try:
            steps: list[_Step] = [(store._sql.release, release)]
            if conn.info.transaction_status != 0:  # not IDLE
                steps.insert(0, _ROLLBACK)
            store._exchange_on(conn, steps)
        except Exception:
            conn.close()  # as in _rollback_quietly; the reservation stays counted

    def _commit(self, conn: psycopg.Connection[Any]) -> None:
        """Send every buffered write and the COMMIT as one query (one round trip).

        A failing statement skips the rest of the query, COMMIT included, and leaves the
        transaction aborted for the caller to roll back.
        """
        sql = self._store._sql
        tenant = self._tenant
        steps: list[_Step] = []
        if self._buddy is not None:
            steps.append((sql.put_buddy, (tenant, *_key(self.key), self._buddy[0])))
        for r in self._receipts.values():
            effects = _dumps(r.effects)
            steps.append(
                (
                    sql.put_receipt,
                    (tenant, r.event_id, r.fingerprint, r.user_id, r.audience, effects),
                )
            )
        if self._ledger:
            rows = _dumps(
                [
                    {
                        "user_id": e.user_id,
                        "audience": e.audience,
                        "currency": e.currency,
                        "amount": e.amount,
                        "balance_after": e.balance_after,
                        "reason": e.reason,
                        "reference": e.reference,
                        "at": e.at,
                    }
                    for e in self._ledger
                ]
            )
            steps.append((sql.put_ledger, (tenant, rows)))
        if self._outbox:
            rows = _dumps(
                [
                    {
                        "type": m.type,
                        "user_id": m.user_id,
                        "audience": m.audience,
                        "payload": m.payload,
                        "at": m.at,
                    }
                    for m in self._outbox
                ]
            )
            steps.append((sql.put_outbox, (tenant, rows)))
        if not self._early_taken:
            # Reserved early and not asked for (a replay found under the lock, or a unit that
            # was not a send's): given back in this transaction, so with the unit's writes.
            release = self._early_params(False)
            if release is not None:
                steps.append((sql.release, release))
        steps.append(_COMMIT)
        self._store._exchange_on(conn, steps)

    def _check_open(self) -> None:
        if not self._open:
            raise StoreError("this unit of work is closed (use it inside its `with` block)")

    # -- UnitOfWork ------------------------------------------------------------------------

    def get_buddy(self) -> BuddyState | None:
        """The buddy's state (this unit's pending write first), or None if it has not hatched."""
        self._check_open()
        if self._buddy is not None:
            return self._buddy[1]
        self._shown = True
        return self._stored

    def put_buddy(self, state: BuddyState) -> None:
        """Insert or replace the buddy's state (sent on commit)."""
        self._check_open()
        key = self.key
        if state.user_id != key.user_id or state.audience != key.audience:
            raise ConflictError(
                f"state of ({state.user_id!r}, {state.audience!r}) written in the unit of "
                f"({key.user_id!r}, {key.audience!r})",
                {"user_id": state.user_id, "audience": state.audience},
            )
        self._buddy = (state.model_dump_json(), state)

    def get_receipt(self, event_id: str) -> Receipt | None:
        """The receipt for an event id of this tenant (this unit's pending one first)."""
        self._check_open()
        mine = self._receipts.get(event_id)
        if mine is not None:
            return mine
        store = self._store
        prefetched = self._prefetched
        if prefetched is not None:
            self._prefetched = None  # read once: a later call reads afresh
            if prefetched[0] == event_id:
                return prefetched[1]
        store._forget_probed(self._tenant, event_id)
        conn = self._conn
        assert conn is not None
        try:
            step = (store._sql.get_receipt, (self._tenant, event_id))
            result = store._exchange_on(conn, [step])[0]
        except store._error as exc:
            store._fail(exc, "reading a receipt")
        return _receipt_at(result, 0) if result.ntuples else None

    def reserve_quota(self, month: str, count: int, limit: int | None) -> int | None:
        """:meth:`PostgresStore.reserve_quota` for this unit's event (``QuotaUnitOfWork``).

        Usually already done: a unit opened just after a single send's lookup of its buddy
        (see :meth:`PostgresStore._expected_quota`) reserves one event of the month and
        limit this store's units were last asked for, in a transaction of its own committed
        in the unit's opening round trip just before the unit's own (``BEGIN; reserve;
        COMMIT; BEGIN; lock ...``), so the tenant's quota row stays locked for one statement,
        as when the Engine reserved outside the unit, and no round trip is spent on it. That
        reservation is given back by the unit if it rolls back, or commits without it being
        taken here. Otherwise (the first send, a new month) the unit reserves the same way
        in one round trip of its own (see :meth:`_reserve_and_reopen`), and only a unit that
        has already used its transaction (returned the state, buffered a write, or taken a
        reservation) reserves inside it, holding the quota row until it ends.
        """
        self._check_open()
        if count < 0:
            raise ValueError("count must not be negative")
        store = self._store
        store._remember_unit_quota(self._tenant, month, limit)
        early = self._early
        if early is not None and not self._early_taken and early[:3] == (month, limit, count):
            self._early_taken = True
            return early[3]
        conn = self._conn
        assert conn is not None
        untouched = not (
            self._shown or self._buddy or self._receipts or self._ledger or self._outbox
        )
        if untouched and not self._early_taken:
            return self._reserve_and_reopen(conn, month, count, limit)
        # Something of this transaction is in use (or it holds a reservation already):
        # reserve inside it.
        params = (self._tenant, month, count, limit, False)
        try:
            result = store._exchange_on(conn, [(store._sql.reserve, params)])[0]
        except store._error as exc:
            store._fail(exc, "reserving quota")
        return _int_or_none(result)

    def _reserve_and_reopen(
        self, conn: psycopg.Connection[Any], month: str, count: int, limit: int | None
    ) -> int | None:
        """Reserve in a transaction of its own, then open the unit's transaction again.

        For a unit that was not expected to reserve (or guessed another month or limit) and
        has used nothing of its transaction yet (no state returned, nothing written): one
        round trip rolls it back, reserves (giving back an early reservation that was not
        the one wanted) and commits, then takes the buddy's lock and reads it again, as the
        opening did. The quota row is held for one statement, not for the whole unit. The
        receipts this unit already answered may have changed meanwhile: a receipt recorded
        by now makes the commit fail with a conflict, which the Engine answers as a replay.
        """
        store = self._store
        sql = store._sql
        no_flush_wait = not store._durable_quota
        steps: list[_Step] = [_ROLLBACK, _BEGIN]
        release = self._early_params(no_flush_wait)
        if release is not None:
            steps.append((sql.release, release))
        reserved_at = len(steps)
        steps += ((sql.reserve, (self._tenant, month, count, limit, no_flush_wait)), _COMMIT)
        assert self._lock_step is not None
        steps += (_BEGIN, self._lock_step)
        try:
            results = store._exchange_on(conn, steps)
        except store._error as exc:
            if isinstance(exc, _ServerError) and exc.step > reserved_at + 1:
                # Committed: the unit's rollback gives it back.
                used = _int_or_none(exc.results[reserved_at])
                self._early, self._early_taken = (month, limit, count, used), True
            store._fail(exc, "reserving quota")
        used = _int_or_none(results[reserved_at])
        self._early, self._early_taken = (month, limit, count, used), True
        self._prefetched = None
        self._read_locked(results[-1])
        return used

    def put_receipt(self, receipt: Receipt) -> None:
        """Record a receipt (sent on commit, where a duplicate raises ConflictError)."""
        self._check_open()
        if receipt.event_id in self._receipts:
            raise ConflictError(
                f"a receipt for event id {receipt.event_id!r} already exists",
                {"event_id": receipt.event_id},
            )
        self._receipts[receipt.event_id] = receipt

    def append_ledger(self, entries: Sequence[LedgerRecord]) -> None:
        """Buffer ledger entries (written on commit, ids in this order)."""
        self._check_open()
        self._ledger.extend(entries)

    def append_outbox(self, messages: Sequence[OutboxMessage]) -> None:
        """Buffer outbox messages (written on commit)."""
        self._check_open()
        self._outbox.extend(messages)


class _ThreadState(threading.local):
    """What a PostgresStore keeps per thread (class attributes are the defaults)."""

    depth: int = 0  # nested group() levels
    dirty: bool = False  # a unit committed without waiting for the flush in this group
    probed: deque[tuple[str, str]] | None = None  # (tenant, event id) found absent
    # (tenant, key) of the last lookup of one buddy that found no receipt
    expect: tuple[str, BuddyKey] | None = None


def _key(key: BuddyKey) -> tuple[str, str]:
    return key.user_id, key.audience


def _rollback_quietly(conn: psycopg.Connection[Any]) -> None:
    """Roll back whatever is open; a broken connection is left for the pool to discard."""
    if conn.closed:
        return
    try:
        if conn.info.transaction_status != 0:  # not IDLE
            conn.execute("ROLLBACK")
    except Exception:
        # The connection is broken (the rollback itself failed): closing it makes the pool
        # discard it; the error that brought us here is the one the caller sees.
        conn.close()


class _PostgresGroup:
    """A batch on this thread: units commit asynchronously, one flush on leaving."""

    __slots__ = ("_store",)

    def __init__(self, store: PostgresStore) -> None:
        self._store = store

    def __enter__(self) -> None:
        local = self._store._local
        depth = local.depth
        if depth == 0:
            local.dirty = False
        local.depth = depth + 1

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        store = self._store
        local = store._local
        local.depth -= 1
        if local.depth or not local.dirty:
            return
        local.dirty = False
        try:
            store._flush_wal()
        except StoreError as err:
            if exc is None:
                raise
            # Do not mask the batch's own error, but say that durability is unknown.
            exc.add_note(f"and the batch's commits could not be flushed: {err.message}")
