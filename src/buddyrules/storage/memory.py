"""MemoryStore: a thread-safe, in-process store with a database's uniqueness rules.

It is the default store of :class:`buddyrules.Engine` and the reference adapter of the
contract suite (:mod:`buddyrules.testing.store_contract`). Data lives in dicts and is lost
when the process exits.

How it keeps the promises of :mod:`buddyrules.storage.protocols`:

* one lock per ``(tenant, user_id, audience)``, taken by :meth:`MemoryStore.unit_of_work`
  for the whole ``with`` block (whether or not the buddy exists yet);
* a unit buffers its writes; on a clean exit they are checked (receipt uniqueness) and
  applied together under one store-wide mutex, so no reader ever sees half a unit; on an
  exception the buffer is dropped;
* quota reservations are a check-and-add under the same mutex.

Buddy states are kept as given (immutable by convention: the engine builds a new state for
every change). Receipts, ledger entries and outbox messages are kept as snapshots: flat
tuples whose JSON-like parts (effects, payloads) are packed with :mod:`marshal`, as soon as
they are written to a unit. That is what a database does too (a caller mutating a dict later
cannot change the store), and it keeps a store holding millions of records out of the cyclic
garbage collector's way: tuples of strings, numbers and bytes are not tracked, so full
collections do not walk them. Records are rebuilt when read (reads are rare; commits are
the hot path). Internal indexes are keyed by plain ``(user_id, audience)`` tuples, whose
hashing is cheaper than a dataclass's.

Units are not re-entrant: opening a second unit for the same buddy on the same thread
deadlocks, as it would on a database.
"""

from __future__ import annotations

import copy
import itertools
import marshal
import threading
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from datetime import datetime
from types import TracebackType
from typing import Any

from buddyrules.errors import ConflictError, StoreError
from buddyrules.state import BuddyState
from buddyrules.storage.protocols import (
    BuddyKey,
    LedgerRecord,
    OutboxMessage,
    Receipt,
    RulebookRecord,
)

__all__ = ["MemoryStore", "MemoryUnitOfWork"]

# Snapshot rows (see the module docstring). A packed value is marshal bytes, or a private
# deep copy in the rare case marshal cannot hold it (e.g. a datetime inside a payload).
_Key = tuple[str, str]  # (user_id, audience)
_ReceiptRow = tuple[str, str, str, Any]  # fingerprint, user_id, audience, packed effects
_LedgerRow = tuple[str, str, str, int, int, str, str | None, datetime]  # without the id
_OutboxRow = tuple[str, str, str, Any, datetime]  # type, user_id, audience, packed payload, at


def _pack(value: dict[str, Any]) -> Any:
    try:
        return marshal.dumps(value)
    except ValueError:  # not marshal-able: keep a private copy instead
        return copy.deepcopy(value)


def _unpack(packed: Any) -> dict[str, Any]:
    if isinstance(packed, bytes):
        value: dict[str, Any] = marshal.loads(packed)
        return value
    return copy.deepcopy(packed)


def _receipt_of(event_id: str, row: _ReceiptRow) -> Receipt:
    return Receipt(event_id, row[0], row[1], row[2], _unpack(row[3]))


def _ledger_of(ident: int, row: _LedgerRow) -> LedgerRecord:
    user_id, audience, currency, amount, balance, reason, reference, at = row
    return LedgerRecord(user_id, audience, currency, amount, balance, reason, reference, at, ident)


def _outbox_of(ident: int, row: _OutboxRow) -> OutboxMessage:
    return OutboxMessage(row[0], row[1], row[2], _unpack(row[3]), row[4], ident)


def _closed() -> StoreError:
    return StoreError("this unit of work is closed (use it inside its `with` block)")


def _duplicate_receipt(event_id: str) -> ConflictError:
    return ConflictError(
        f"a receipt for event id {event_id!r} already exists", {"event_id": event_id}
    )


class _Tenant:
    """One tenant's data. Only :class:`MemoryStore` touches it, under its mutex for writes."""

    __slots__ = ("buddies", "ledger", "ledger_by_key", "outbox", "receipts", "rulebooks")

    def __init__(self) -> None:
        self.buddies: dict[_Key, BuddyState] = {}
        self.receipts: dict[str, _ReceiptRow] = {}
        self.rulebooks: dict[str, RulebookRecord] = {}
        self.ledger: list[tuple[int, _LedgerRow]] = []
        self.ledger_by_key: dict[_Key, list[tuple[int, _LedgerRow]]] = {}
        # Pending messages by id; dicts keep insertion order, so this is oldest first.
        self.outbox: dict[int, _OutboxRow] = {}


class MemoryUnitOfWork(AbstractContextManager["MemoryUnitOfWork"]):
    """One buddy's transaction in a :class:`MemoryStore` (use it as a context manager)."""

    __slots__ = (
        "_buddy",
        "_data",
        "_ident",
        "_ledger",
        "_lock",
        "_open",
        "_outbox",
        "_receipts",
        "_store",
        "key",
    )

    def __init__(self, store: MemoryStore, data: _Tenant, key: BuddyKey, lock: threading.Lock):
        self.key = key
        self._ident: _Key = (key.user_id, key.audience)
        self._store = store
        self._data = data
        self._lock = lock
        self._open = False
        self._buddy: BuddyState | None = None
        # Receipts keep the object too, so that reads inside the unit return it as given.
        self._receipts: dict[str, tuple[Receipt, _ReceiptRow]] = {}
        self._ledger: list[_LedgerRow] = []
        self._outbox: list[_OutboxRow] = []

    def __enter__(self) -> MemoryUnitOfWork:
        self._lock.acquire()
        self._open = True
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if exc_type is None:
                self._store._commit(self._data, self)
        finally:
            # A unit is used once: its buffers are dropped with it, closing is enough.
            self._open = False
            self._lock.release()

    def get_buddy(self) -> BuddyState | None:
        """The buddy's state (this unit's pending write first), or None."""
        if not self._open:
            raise _closed()
        if self._buddy is not None:
            return self._buddy
        return self._data.buddies.get(self._ident)

    def put_buddy(self, state: BuddyState) -> None:
        """Insert or replace the buddy's state (applied on commit)."""
        if not self._open:
            raise _closed()
        if state.user_id != self.key.user_id or state.audience != self.key.audience:
            raise ConflictError(
                f"state of ({state.user_id!r}, {state.audience!r}) written in the unit of "
                f"({self.key.user_id!r}, {self.key.audience!r})",
                {"user_id": state.user_id, "audience": state.audience},
            )
        self._buddy = state

    def get_receipt(self, event_id: str) -> Receipt | None:
        """The receipt for ``event_id`` (this unit's pending one first), or None."""
        if not self._open:
            raise _closed()
        mine = self._receipts.get(event_id)
        if mine is not None:
            return mine[0]
        row = self._data.receipts.get(event_id)
        return _receipt_of(event_id, row) if row is not None else None

    def put_receipt(self, receipt: Receipt) -> None:
        """Record a receipt; an id already recorded (or pending here) raises ConflictError."""
        if not self._open:
            raise _closed()
        event_id = receipt.event_id
        if event_id in self._receipts or event_id in self._data.receipts:
            raise _duplicate_receipt(event_id)
        row = (receipt.fingerprint, receipt.user_id, receipt.audience, _pack(receipt.effects))
        self._receipts[event_id] = (receipt, row)

    def append_ledger(self, entries: Sequence[LedgerRecord]) -> None:
        """Buffer ledger entries (ids are assigned on commit)."""
        if not self._open:
            raise _closed()
        self._ledger.extend(
            [
                (
                    e.user_id,
                    e.audience,
                    e.currency,
                    e.amount,
                    e.balance_after,
                    e.reason,
                    e.reference,
                    e.at,
                )
                for e in entries
            ]
        )

    def append_outbox(self, messages: Sequence[OutboxMessage]) -> None:
        """Buffer outbox messages (ids are assigned on commit)."""
        if not self._open:
            raise _closed()
        self._outbox.extend(
            [(m.type, m.user_id, m.audience, _pack(m.payload), m.at) for m in messages]
        )


class MemoryStore:
    """A thread-safe in-memory :class:`~buddyrules.storage.Store` (per-buddy locks)."""

    def __init__(self) -> None:
        # Guards every committed write and the creation of per-buddy locks.
        self._mutex = threading.Lock()
        self._tenants: dict[str, _Tenant] = {}
        self._locks: dict[tuple[str, str, str], threading.Lock] = {}
        self._quota: dict[tuple[str, str], int] = {}
        self._ids = itertools.count(1)

    # -- internals ----------------------------------------------------------------------

    def _tenant(self, tenant: str) -> _Tenant:
        data = self._tenants.get(tenant)
        if data is None:
            with self._mutex:
                data = self._tenants.setdefault(tenant, _Tenant())
        return data

    def _commit(self, data: _Tenant, unit: MemoryUnitOfWork) -> None:
        receipts = unit._receipts
        buddy = unit._buddy
        ledger = unit._ledger
        outbox = unit._outbox
        if buddy is None and not receipts and not ledger and not outbox:
            return
        with self._mutex:
            # Check everything first, then apply: a conflict leaves nothing behind.
            committed = data.receipts
            for event_id in receipts:
                if event_id in committed:
                    raise _duplicate_receipt(event_id)
            if buddy is not None:
                data.buddies[unit._ident] = buddy
            for event_id, pending_receipt in receipts.items():
                committed[event_id] = pending_receipt[1]
            ids = self._ids
            if ledger:
                numbered = [(next(ids), row) for row in ledger]
                data.ledger.extend(numbered)
                by_key = data.ledger_by_key
                own = unit._ident
                for entry in numbered:
                    row = entry[1]
                    ident = own if row[0] == own[0] and row[1] == own[1] else (row[0], row[1])
                    entries = by_key.get(ident)
                    if entries is None:
                        by_key[ident] = [entry]
                    else:
                        entries.append(entry)
            if outbox:
                pending = data.outbox
                for message in outbox:
                    pending[next(ids)] = message

    # -- units ----------------------------------------------------------------------------

    def unit_of_work(self, tenant: str, key: BuddyKey) -> MemoryUnitOfWork:
        """Lock ``key`` and open a unit; commit on clean exit, drop its writes on error."""
        ident = (tenant, key.user_id, key.audience)
        lock = self._locks.get(ident)
        if lock is None:
            with self._mutex:
                lock = self._locks.setdefault(ident, threading.Lock())
        return MemoryUnitOfWork(self, self._tenant(tenant), key, lock)

    def group(self, tenant: str) -> AbstractContextManager[None]:
        """A no-op: every unit of a MemoryStore commits on its own, instantly."""
        return nullcontext()

    # -- buddies and receipts -------------------------------------------------------------

    def get_buddy(self, tenant: str, key: BuddyKey) -> BuddyState | None:
        """Read a buddy without locking it."""
        data = self._tenants.get(tenant)
        return data.buddies.get((key.user_id, key.audience)) if data is not None else None

    def list_buddies(self, tenant: str, user_id: str | None = None) -> Iterator[BuddyState]:
        """Every buddy of the tenant (or of one user), ordered by user_id then audience."""
        data = self._tenants.get(tenant)
        if data is None:
            return iter(())
        with self._mutex:
            items = list(data.buddies.items())
        if user_id is not None:
            items = [(k, s) for k, s in items if k[0] == user_id]
        items.sort(key=lambda kv: kv[0])
        return iter([s for _, s in items])

    def export_states(self, tenant: str) -> list[BuddyState]:
        """A snapshot of every buddy of the tenant."""
        return list(self.list_buddies(tenant))

    def get_receipt(self, tenant: str, event_id: str) -> Receipt | None:
        """Read a receipt without locking."""
        data = self._tenants.get(tenant)
        row = data.receipts.get(event_id) if data is not None else None
        return _receipt_of(event_id, row) if row is not None else None

    # -- quota ----------------------------------------------------------------------------

    def reserve_quota(self, tenant: str, month: str, count: int, limit: int | None) -> int | None:
        """Atomically add ``count`` to the month's usage if it stays within ``limit``."""
        if count < 0:
            raise ValueError("count must not be negative")
        ident = (tenant, month)
        with self._mutex:
            used = self._quota.get(ident, 0) + count
            if limit is not None and used > limit:
                return None
            self._quota[ident] = used
            return used

    def release_quota(self, tenant: str, month: str, count: int) -> None:
        """Give back reserved quota (never below zero)."""
        ident = (tenant, month)
        with self._mutex:
            self._quota[ident] = max(0, self._quota.get(ident, 0) - count)

    def quota_used(self, tenant: str, month: str) -> int:
        """The month's usage."""
        return self._quota.get((tenant, month), 0)

    # -- rulebooks ------------------------------------------------------------------------

    def put_rulebook(self, tenant: str, record: RulebookRecord) -> None:
        """Insert or replace a rulebook record (a replaced one keeps its place)."""
        data = self._tenant(tenant)
        with self._mutex:
            data.rulebooks[record.version] = record

    def get_rulebook(self, tenant: str, version: str) -> RulebookRecord | None:
        """One rulebook record, or None."""
        data = self._tenants.get(tenant)
        return data.rulebooks.get(version) if data is not None else None

    def list_rulebooks(self, tenant: str) -> list[RulebookRecord]:
        """Every rulebook record of the tenant, oldest first."""
        data = self._tenants.get(tenant)
        if data is None:
            return []
        with self._mutex:
            return list(data.rulebooks.values())

    # -- ledger and outbox ----------------------------------------------------------------

    def ledger(self, tenant: str, key: BuddyKey | None = None) -> list[LedgerRecord]:
        """Ledger entries (of one buddy, or all), in the order they were written."""
        data = self._tenants.get(tenant)
        if data is None:
            return []
        with self._mutex:
            if key is None:
                rows = list(data.ledger)
            else:
                rows = list(data.ledger_by_key.get((key.user_id, key.audience), ()))
        return [_ledger_of(ident, row) for ident, row in rows]

    def outbox_pending(self, tenant: str, limit: int = 100) -> list[OutboxMessage]:
        """Committed, unacknowledged messages, oldest first."""
        data = self._tenants.get(tenant)
        if data is None or limit <= 0:
            return []
        with self._mutex:
            rows = list(itertools.islice(data.outbox.items(), limit))
        return [_outbox_of(ident, row) for ident, row in rows]

    def outbox_ack(self, tenant: str, ids: Sequence[int]) -> int:
        """Acknowledge messages; returns how many were pending."""
        data = self._tenants.get(tenant)
        if data is None:
            return 0
        acked = 0
        with self._mutex:
            for ident in ids:
                if data.outbox.pop(ident, None) is not None:
                    acked += 1
        return acked

    def close(self) -> None:
        """Nothing to release; the data stays readable (and writable) after close."""
