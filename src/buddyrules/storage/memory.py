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
every change). Receipts, ledger entries and outbox messages are kept as snapshots, packed as
soon as they are written to a unit: each record is one :mod:`marshal` blob (bytes) of its
plain values, its time kept beside it as given (a datetime holds no references). That is what
a database does too (a caller mutating a dict later cannot change the store). It also keeps
a store holding millions of records out of the cyclic garbage collector's way: bytes are not
containers, so the collector never counts, scans or promotes them. Tuples would be untracked
only after surviving a collection, and until then every record kept would count towards the
next one; a ``send`` on a store of tuples ran about seven of them per event, which made the
collector run ten times as often as the engine alone. A record marshal cannot hold (a value
of another type, e.g. a datetime in a payload) is kept as a tuple holding a private copy
instead. Records are rebuilt when read (reads are rare; commits are the hot path). Internal
indexes are keyed by plain ``(user_id, audience)`` tuples, whose hashing is cheaper than a
dataclass's.

What one unit writes is kept in chunks rather than one record per entry: the ledger entries
of a unit that share buddy, reference and time are one blob, and so are its outbox messages;
ids inside a chunk are consecutive, and a chunk's first id is kept beside it (ids are given
on commit, after the blob is packed). An acknowledgement finds its chunk by bisection over
the chunks' first ids.

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

# Records (see the module docstring): one marshal blob each, or, when marshal cannot hold a
# value, a tuple of the same values holding a private deep copy.
_Key = tuple[str, str]  # (user_id, audience)
_Packed = bytes | tuple[Any, ...]
# A receipt: (fingerprint, user_id, audience, effects), where effects is the wire dict, or the
# values of the Effects fields but the trace (what the Engine's fast path writes: cheaper
# than building the wire dict, which is only built when the receipt is read back).
# A ledger chunk: (user_id, audience, reference, entries), the entries of one unit that
# share buddy, reference and time, as (currency, amount, balance_after, reason) tuples.
# An outbox chunk: (user_id, audience, messages), one unit's (type, payload) pairs.
# A chunk's time is kept beside it, as given: a datetime is not a container either.
_Entry = tuple[str, int, int, str]

_EFFECT_FIELDS = tuple(f.name for f in fields(Effects) if f.name != "trace")
_effect_values = attrgetter(*_EFFECT_FIELDS)


def _pack_row(values: tuple[Any, ...]) -> _Packed:
    """A record as one marshal blob, or as a private deep copy if marshal cannot hold it
    (a value of another type, e.g. a datetime or a tuple subclass inside a payload)."""
    try:
        return marshal.dumps(values)
    except ValueError:
        copied: tuple[Any, ...] = copy.deepcopy(values)
        return copied


def _unpack_row(row: _Packed) -> tuple[Any, ...]:
    """A record's values; a fresh copy every time, so readers cannot change the store."""
    if isinstance(row, bytes):
        values: tuple[Any, ...] = marshal.loads(row)
        return values
    copied: tuple[Any, ...] = copy.deepcopy(row)
    return copied


def _receipt_of(event_id: str, row: _Packed) -> Receipt:
    fingerprint, user_id, audience, effects = _unpack_row(row)
    if type(effects) is tuple:  # Effects field values (see put_effects_receipt)
        effects = Effects(**dict(zip(_EFFECT_FIELDS, effects, strict=True))).to_wire(
            include_trace=False
        )
    return Receipt(event_id, fingerprint, user_id, audience, effects)


def _ledger_of(data: _Tenant, positions: Iterable[int]) -> list[LedgerRecord]:
    chunks = data.ledger
    firsts = data.ledger_first
    out: list[LedgerRecord] = []
    times = data.ledger_at
    for pos in positions:
        user_id, audience, reference, entries = _unpack_row(chunks[pos])
        at = times[pos]
        out.extend(
            LedgerRecord(user_id, audience, currency, amount, balance, reason, reference, at, i)
            for i, (currency, amount, balance, reason) in enumerate(entries, firsts[pos])
        )
    return out


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
        "ledger_at",
        "ledger_by_key",
        "ledger_first",
        "outbox",
        "outbox_acked",
        "outbox_at",
        "outbox_count",
        "outbox_starts",
        "receipts",
        "rulebooks",
    )

    def __init__(self) -> None:
        self.buddies: dict[_Key, BuddyState] = {}
        self.receipts: dict[str, _Packed] = {}
        self.rulebooks: dict[str, RulebookRecord] = {}
        # Ledger chunks in commit order, each chunk's first id and time at the same
        # position, and each buddy's chunk positions.
        self.ledger: list[_Packed] = []
        self.ledger_first: list[int] = []
        self.ledger_at: list[datetime] = []
        self.ledger_by_key: dict[_Key, list[int]] = {}
        # Pending outbox chunks, their message counts and times, by first id; dicts keep
        # insertion order, so this is oldest first.
        self.outbox: dict[int, _Packed] = {}
        self.outbox_count: dict[int, int] = {}
        self.outbox_at: dict[int, datetime] = {}
        # Offsets acknowledged so far, only for chunks partly acknowledged (chunks stay
        # immutable blobs).
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
        self._receipts: dict[str, tuple[Receipt | None, _Packed]] = {}
        # Packed chunks with their entry (message) counts and times, and the ledger's buddy.
        self._ledger: list[tuple[_Packed, int, datetime, _Key]] = []
        self._outbox: list[tuple[_Packed, int, datetime]] = []

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
        row = _pack_row((receipt.fingerprint, receipt.user_id, receipt.audience, receipt.effects))
        self._receipts[event_id] = (receipt, row)

    def append_ledger(self, entries: Sequence[LedgerRecord]) -> None:
        """Buffer ledger entries (ids are assigned on commit)."""
        if not self._open:
            raise _closed()
        self._ledger.extend(
            [
                (
                    _pack_row(
                        (
                            e.user_id,
                            e.audience,
                            e.reference,
                            ((e.currency, e.amount, e.balance_after, e.reason),),
                        )
                    ),
                    1,
                    e.at,
                    (e.user_id, e.audience),
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
                (_pack_row((m.user_id, m.audience, ((m.type, m.payload),))), 1, m.at)
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
            _pack_row((fingerprint, user_id, audience, _effect_values(effects))),
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
            ident = self._ident
            # Plain tuples: marshal takes no tuple subclass (the engine's are named tuples).
            kept = tuple([_plain_tuple(entry) for entry in entries])
            self._ledger.append((_pack_row((*ident, reference, kept)), len(kept), at, ident))

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
            self._outbox.append((_pack_row((*self._ident, messages)), len(messages), at))


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
                firsts = data.ledger_first
                times = data.ledger_at
                by_key = data.ledger_by_key
                for packed, count, at, ident in ledger:
                    pos = len(chunks)
                    chunks.append(packed)
                    firsts.append(next_id)
                    times.append(at)
                    next_id += count
                    own = by_key.get(ident)
                    if own is None:
                        by_key[ident] = [pos]
                    else:
                        own.append(pos)
            if outbox:
                pending = data.outbox
                counts = data.outbox_count
                stamps = data.outbox_at
                starts = data.outbox_starts
                for packed, count, at in outbox:
                    pending[next_id] = packed
                    counts[next_id] = count
                    stamps[next_id] = at
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
                positions: list[int] = list(range(len(data.ledger)))
            else:
                positions = list(data.ledger_by_key.get((key.user_id, key.audience), ()))
            # Chunks are never changed or removed once committed: read them outside.
        return _ledger_of(data, positions)

    def outbox_pending(self, tenant: str, limit: int = 100) -> list[OutboxMessage]:
        """Committed, unacknowledged messages, oldest first."""
        data = self._tenants.get(tenant)
        if data is None or limit <= 0:
            return []
        with self._mutex:
            chunks = []
            room = limit
            partly = data.outbox_acked
            counts = data.outbox_count
            times = data.outbox_at
            for first, packed in data.outbox.items():
                done = partly.get(first)
                # A copy of the acked offsets: acks may change the set once the mutex is free.
                acked_now = frozenset(done) if done is not None else None
                chunks.append((first, packed, times[first], acked_now))
                room -= counts[first] - (len(done) if done is not None else 0)
                if room <= 0:
                    break
        out: list[OutboxMessage] = []
        for first, packed, at, acked in chunks:
            user_id, audience, messages = _unpack_row(packed)
            for offset, (kind, payload) in enumerate(messages):
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
            counts = data.outbox_count
            starts = data.outbox_starts
            for ident in ids:
                if not isinstance(ident, int):
                    continue
                at = bisect.bisect_right(starts, ident) - 1
                if at < 0:
                    continue
                first = starts[at]
                count = counts.get(first)
                if count is None:  # acknowledged in full already
                    continue
                offset = ident - first
                if offset >= count:
                    continue
                done = data.outbox_acked.get(first)
                if done is None:
                    done = data.outbox_acked[first] = set()
                elif offset in done:
                    continue
                done.add(offset)
                acked += 1
                if len(done) == count:
                    del pending[first]
                    del counts[first]
                    del data.outbox_at[first]
                    del data.outbox_acked[first]
            if len(starts) > 2 * len(pending) + 1024:
                starts[:] = list(pending)
        return acked

    def close(self) -> None:
        """Nothing to release; the data stays readable (and writable) after close."""
