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

What one unit writes is kept in chunks rather than one row per record: the ledger entries of
a unit that share buddy, reference and time are one tuple, and so are its outbox messages
(their payloads one marshal blob); ids inside a chunk are consecutive. A store's cost per
event is mostly the memory it keeps, so fewer, smaller objects are what make commits cheap.
An acknowledgement finds its chunk by bisection over the chunks' first ids.

The Engine writes through three extra methods of :class:`MemoryUnitOfWork`
(:meth:`~MemoryUnitOfWork.put_effects_receipt`, :meth:`~MemoryUnitOfWork.append_ledger_entries`,
:meth:`~MemoryUnitOfWork.append_notifications`) that take the engine's own values instead of
record objects; they store exactly what the port's methods would, and are not part of the
port (other stores need not have them).

Units are not re-entrant: opening a second unit for the same buddy on the same thread
deadlocks, as it would on a database.
"""

from __future__ import annotations

import bisect
import copy
import marshal
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import fields
from datetime import datetime
from operator import attrgetter
from types import TracebackType
from typing import Any

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

__all__ = ["MemoryStore", "MemoryUnitOfWork"]

# Snapshot rows (see the module docstring). A packed value is marshal bytes, or a private
# deep copy in the rare case marshal cannot hold it (e.g. a datetime inside a payload).
_Key = tuple[str, str]  # (user_id, audience)
_ReceiptRow = tuple[str, str, str, Any]  # fingerprint, user_id, audience, packed effects
# A unit's ledger entries that share buddy, reference and time, kept together: a chunk is
# one tuple per unit however many entries the event made. ``entries`` are (currency, amount,
# balance_after, reason) tuples; their ids are consecutive from ``first_id``.
_Entry = tuple[str, int, int, str]
_PendingChunk = tuple[str, str, str | None, datetime, tuple[_Entry, ...]]  # user, aud, ref, at
_LedgerChunk = tuple[int, str, str, str | None, datetime, tuple[_Entry, ...]]  # first_id, ...
# Outbox messages of one unit that share buddy and time are kept together too: a chunk is
# ``[first_id, user_id, audience, at, packed, count, acked]`` where ``packed`` holds the
# ``(type, payload)`` pairs (one marshal for them all), their ids are consecutive from
# ``first_id``, and ``acked`` is the set of acknowledged offsets (None until the first ack).
# A chunk leaves the pending dict when every message in it is acknowledged.
_PendingOutbox = tuple[str, str, datetime, Any, int]  # user, audience, at, packed, count
_OutboxChunk = tuple[int, str, str, datetime, Any, int]  # first_id, user, audience, at, ...


def _pack(value: dict[str, Any]) -> Any:
    try:
        return marshal.dumps(value)
    except ValueError:  # not marshal-able: keep a private copy instead
        return copy.deepcopy(value)


# A receipt written from an Effects object (the Engine's fast path) is packed as the marshal
# of its field values, without the trace: cheaper than building the wire dict first. It is
# rendered to the wire dict only when read back (replays are rare; sends are the hot path).
_EFFECT_FIELDS = tuple(f.name for f in fields(Effects) if f.name != "trace")
_effect_values = attrgetter(*_EFFECT_FIELDS)


def _pack_effects(effects: Effects) -> Any:
    try:
        return marshal.dumps(_effect_values(effects))
    except ValueError:  # a value marshal cannot hold: keep the wire dict instead
        return _pack(effects.to_wire(include_trace=False))


def _receipt_effects(packed: Any) -> dict[str, Any]:
    if isinstance(packed, bytes):
        value = marshal.loads(packed)
        if type(value) is tuple:  # see _pack_effects
            return Effects(**dict(zip(_EFFECT_FIELDS, value, strict=True))).to_wire(
                include_trace=False
            )
        wire: dict[str, Any] = value
        return wire
    return copy.deepcopy(packed)


def _receipt_of(event_id: str, row: _ReceiptRow) -> Receipt:
    return Receipt(event_id, row[0], row[1], row[2], _receipt_effects(row[3]))


def _ledger_of(chunks: Iterable[_LedgerChunk]) -> list[LedgerRecord]:
    return [
        LedgerRecord(user_id, audience, currency, amount, balance, reason, reference, at, ident)
        for first, user_id, audience, reference, at, entries in chunks
        for ident, (currency, amount, balance, reason) in enumerate(entries, first)
    ]


def _pack_messages(messages: tuple[tuple[str, dict[str, Any]], ...]) -> Any:
    try:
        return marshal.dumps(messages)
    except ValueError:  # not marshal-able: keep a private copy instead
        return copy.deepcopy(messages)


def _unpack_messages(packed: Any) -> tuple[tuple[str, dict[str, Any]], ...]:
    if isinstance(packed, bytes):
        value: tuple[tuple[str, dict[str, Any]], ...] = marshal.loads(packed)
        return value
    return copy.deepcopy(packed)


def _closed() -> StoreError:
    return StoreError("this unit of work is closed (use it inside its `with` block)")


def _duplicate_receipt(event_id: str) -> ConflictError:
    return ConflictError(
        f"a receipt for event id {event_id!r} already exists", {"event_id": event_id}
    )


def _plain_tuple(entry: tuple[Any, ...]) -> tuple[Any, ...]:
    return entry if type(entry) is tuple else tuple(entry)


class _Tenant:
    """One tenant's data. Only :class:`MemoryStore` touches it, under its mutex for writes."""

    __slots__ = (
        "buddies",
        "ledger",
        "ledger_by_key",
        "outbox",
        "outbox_acked",
        "outbox_starts",
        "receipts",
        "rulebooks",
    )

    def __init__(self) -> None:
        self.buddies: dict[_Key, BuddyState] = {}
        self.receipts: dict[str, _ReceiptRow] = {}
        self.rulebooks: dict[str, RulebookRecord] = {}
        self.ledger: list[_LedgerChunk] = []
        self.ledger_by_key: dict[_Key, list[_LedgerChunk]] = {}
        # Pending messages by id; dicts keep insertion order, so this is oldest first.
        self.outbox: dict[int, _OutboxChunk] = {}
        # Offsets acknowledged so far, only for chunks partly acknowledged (chunks stay
        # immutable tuples, which the collector does not walk).
        self.outbox_acked: dict[int, set[int]] = {}
        # First ids of the chunks, ascending (an ack finds its chunk by bisection); ids of
        # chunks acknowledged since are dropped lazily.
        self.outbox_starts: list[int] = []


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
        # Receipts keep the object too, so that reads inside the unit return it as given
        # (None for one written by put_effects_receipt: read back from its row).
        self._receipts: dict[str, tuple[Receipt | None, _ReceiptRow]] = {}
        self._ledger: list[_PendingChunk] = []
        self._outbox: list[_PendingOutbox] = []

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
            return mine[0] if mine[0] is not None else _receipt_of(event_id, mine[1])
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
                    e.reference,
                    e.at,
                    ((e.currency, e.amount, e.balance_after, e.reason),),
                )
                for e in entries
            ]
        )

    def append_outbox(self, messages: Sequence[OutboxMessage]) -> None:
        """Buffer outbox messages (ids are assigned on commit)."""
        if not self._open:
            raise _closed()
        self._outbox.extend(
            [
                (m.user_id, m.audience, m.at, _pack_messages(((m.type, m.payload),)), 1)
                for m in messages
            ]
        )

    # -- the Engine's fast path -----------------------------------------------------------
    # Not part of the UnitOfWork port: the Engine calls these instead of put_receipt,
    # append_ledger and append_outbox when its unit is a MemoryUnitOfWork, to skip building
    # record objects (and the receipt's wire dict) that this store would take apart again.
    # They store exactly what the port's methods would.

    def put_effects_receipt(self, event_id: str, fingerprint: str, effects: Effects) -> None:
        """:meth:`put_receipt` of ``Receipt(event_id, fingerprint, <unit key>, effects
        .to_wire(include_trace=False))``, without building the wire dict now."""
        if not self._open:
            raise _closed()
        if event_id in self._receipts or event_id in self._data.receipts:
            raise _duplicate_receipt(event_id)
        user_id, audience = self._ident
        self._receipts[event_id] = (
            None,
            (fingerprint, user_id, audience, _pack_effects(effects)),
        )

    def append_ledger_entries(
        self, entries: Sequence[_Entry], reference: str | None, at: datetime
    ) -> None:
        """:meth:`append_ledger` of the unit's buddy: ``(currency, amount, balance_after,
        reason)`` tuples of immutable values (the engine's ledger entries, kept as given),
        all with one reference and time."""
        if not self._open:
            raise _closed()
        if entries:
            user_id, audience = self._ident
            # Plain tuples: the collector untracks a tuple of strings and numbers, but never
            # an instance of a tuple subclass such as the engine's named tuples.
            kept = tuple([_plain_tuple(entry) for entry in entries])
            self._ledger.append((user_id, audience, reference, at, kept))

    def append_notifications(
        self, notifications: Iterable[tuple[str, dict[str, Any]]], at: datetime
    ) -> None:
        """:meth:`append_outbox` of the unit's buddy: ``(type, payload)`` pairs (the engine's
        notifications), all at one time."""
        if not self._open:
            raise _closed()
        # Plain pairs: marshal takes no tuple subclass (the engine's are named tuples).
        messages = tuple([(kind, payload) for kind, payload in notifications])
        if messages:
            user_id, audience = self._ident
            self._outbox.append((user_id, audience, at, _pack_messages(messages), len(messages)))


class MemoryStore:
    """A thread-safe in-memory :class:`~buddyrules.storage.Store` (per-buddy locks)."""

    def __init__(self) -> None:
        # Guards every committed write and the creation of per-buddy locks.
        self._mutex = threading.Lock()
        self._tenants: dict[str, _Tenant] = {}
        self._locks: dict[tuple[str, str, str], threading.Lock] = {}
        self._quota: dict[tuple[str, str], int] = {}
        self._next_id = 1  # ledger and outbox ids (taken under the mutex)

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
            next_id = self._next_id
            if ledger:
                chunks = data.ledger
                by_key = data.ledger_by_key
                for user_id, audience, reference, at, entries in ledger:
                    chunk = (next_id, user_id, audience, reference, at, entries)
                    next_id += len(entries)
                    chunks.append(chunk)
                    own = by_key.get((user_id, audience))
                    if own is None:
                        by_key[(user_id, audience)] = [chunk]
                    else:
                        own.append(chunk)
            if outbox:
                pending = data.outbox
                starts = data.outbox_starts
                for user_id, audience, at, packed, count in outbox:
                    pending[next_id] = (next_id, user_id, audience, at, packed, count)
                    starts.append(next_id)
                    next_id += count
            self._next_id = next_id

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

    def lookup(
        self, tenant: str, keys: Sequence[BuddyKey], event_ids: Sequence[str]
    ) -> tuple[dict[BuddyKey, BuddyState], dict[str, Receipt]]:
        """Several buddies and receipts at once (see :meth:`Store.lookup`)."""
        data = self._tenants.get(tenant)
        buddies: dict[BuddyKey, BuddyState] = {}
        receipts: dict[str, Receipt] = {}
        if data is None:
            return buddies, receipts
        states = data.buddies
        for key in keys:
            state = states.get((key.user_id, key.audience))
            if state is not None:
                buddies[key] = state
        rows = data.receipts
        for event_id in event_ids:
            row = rows.get(event_id)
            if row is not None:
                receipts[event_id] = _receipt_of(event_id, row)
        return buddies, receipts

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
                chunks = list(data.ledger)
            else:
                chunks = list(data.ledger_by_key.get((key.user_id, key.audience), ()))
        return _ledger_of(chunks)

    def outbox_pending(self, tenant: str, limit: int = 100) -> list[OutboxMessage]:
        """Committed, unacknowledged messages, oldest first."""
        data = self._tenants.get(tenant)
        if data is None or limit <= 0:
            return []
        with self._mutex:
            chunks = []
            room = limit
            partly = data.outbox_acked
            for chunk in data.outbox.values():
                done = partly.get(chunk[0])
                # A copy of the acked offsets: acks may change the set once the mutex is free.
                chunks.append((*chunk, frozenset(done) if done is not None else None))
                room -= chunk[5] - (len(done) if done is not None else 0)
                if room <= 0:
                    break
        out: list[OutboxMessage] = []
        for first, user_id, audience, at, packed, _count, acked in chunks:
            for offset, (kind, payload) in enumerate(_unpack_messages(packed)):
                if acked is None or offset not in acked:
                    out.append(OutboxMessage(kind, user_id, audience, payload, at, first + offset))
        return out[:limit]

    def outbox_ack(self, tenant: str, ids: Sequence[int]) -> int:
        """Acknowledge messages; returns how many were pending."""
        data = self._tenants.get(tenant)
        if data is None:
            return 0
        acked = 0
        with self._mutex:
            pending = data.outbox
            starts = data.outbox_starts
            for ident in ids:
                if not isinstance(ident, int):
                    continue
                at = bisect.bisect_right(starts, ident) - 1
                if at < 0:
                    continue
                chunk = pending.get(starts[at])
                if chunk is None:
                    continue
                offset = ident - chunk[0]
                if offset >= chunk[5]:
                    continue
                done = data.outbox_acked.get(chunk[0])
                if done is None:
                    done = data.outbox_acked[chunk[0]] = set()
                elif offset in done:
                    continue
                done.add(offset)
                acked += 1
                if len(done) == chunk[5]:
                    del pending[chunk[0]]
                    del data.outbox_acked[chunk[0]]
            if len(starts) > 2 * len(pending) + 1024:
                starts[:] = list(pending)
        return acked

    def close(self) -> None:
        """Nothing to release; the data stays readable (and writable) after close."""
