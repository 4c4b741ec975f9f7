"""The storage ports: what the service needs from a store, and nothing more.

A store keeps tenants apart: every call names its tenant and no call for one tenant can read
or change another's data. Two promises every adapter must keep (the contract suite in
:mod:`buddyrules.testing.store_contract` checks them):

* **one buddy, one writer**: :meth:`Store.unit_of_work` locks the buddy key
  ``(tenant, user_id, audience)`` (whether or not the buddy exists yet) until the unit
  commits or rolls back; units for different buddies may run in parallel;
* **uniqueness**: one buddy per ``(tenant, user_id, audience)`` and one receipt per
  ``(tenant, event_id)``; a second :meth:`UnitOfWork.put_receipt` for the same id raises
  :class:`~buddyrules.errors.ConflictError` at the latest on commit, and nothing of that
  unit is kept.

Everything a unit writes (buddy, receipt, ledger, outbox) commits atomically on a clean exit
from the ``with`` block and is rolled back on an exception. Reads inside a unit see the unit's
own writes; nobody else sees them before commit.

What the service promises adapters (so a single-writer database cannot deadlock): it never
nests units, and it never calls a :class:`Store` method that writes (quota, rulebooks, outbox
acks) while a unit is open on the same thread. It may call read methods (``get_buddy``,
``get_receipt``) while another thread holds a unit.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol, runtime_checkable

from buddyrules.state import BuddyState

__all__ = [
    "BuddyKey",
    "LedgerRecord",
    "OutboxMessage",
    "QuotaUnitOfWork",
    "Receipt",
    "RulebookRecord",
    "RulebookStatus",
    "Store",
    "UnitOfWork",
]

RulebookStatus = Literal["draft", "published", "archived"]


@dataclass(frozen=True, slots=True)
class BuddyKey:
    """Identifies one buddy within a tenant."""

    user_id: str
    audience: str


@dataclass(frozen=True, slots=True)
class Receipt:
    """What an event id produced: its fingerprint and the effects (wire dict) returned."""

    event_id: str
    fingerprint: str
    user_id: str
    audience: str
    effects: dict[str, Any]


@dataclass(frozen=True, slots=True)
class LedgerRecord:
    """A coin or token movement. ``currency`` is ``"coins"`` or ``"token:<key>"``.

    ``id`` is assigned by the store (0 before it is written).
    """

    user_id: str
    audience: str
    currency: str
    amount: int
    balance_after: int
    reason: str
    reference: str | None
    at: datetime
    id: int = 0


@dataclass(frozen=True, slots=True)
class OutboxMessage:
    """A notification written with the change that caused it. ``id`` is assigned by the store."""

    type: str
    user_id: str
    audience: str
    payload: dict[str, Any]
    at: datetime
    id: int = 0


@dataclass(frozen=True, slots=True)
class RulebookRecord:
    """A stored rulebook version. ``document`` is the rulebook's JSON mapping.

    ``sequence`` orders publications: the current rulebook is the published record with the
    highest sequence (0 for drafts).
    """

    version: str
    name: str
    status: RulebookStatus
    document: dict[str, Any]
    sequence: int = 0
    published_at: datetime | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class UnitOfWork(Protocol):
    """One buddy's transaction: the buddy key is locked while it is open."""

    key: BuddyKey

    def get_buddy(self) -> BuddyState | None:
        """The buddy's state (including a state put in this unit), or None if not hatched."""
        ...

    def put_buddy(self, state: BuddyState) -> None:
        """Insert or replace the buddy's state.

        ``state.user_id``/``state.audience`` must be the unit's key, else ConflictError.
        """
        ...

    def get_receipt(self, event_id: str) -> Receipt | None:
        """The receipt for an event id of this tenant (any buddy, or put in this unit)."""
        ...

    def put_receipt(self, receipt: Receipt) -> None:
        """Record a receipt; a duplicate event id raises ConflictError (now or on commit)."""
        ...

    def append_ledger(self, entries: Sequence[LedgerRecord]) -> None:
        """Append ledger entries."""
        ...

    def append_outbox(self, messages: Sequence[OutboxMessage]) -> None:
        """Append outbox messages (visible to ``outbox_pending`` only after commit)."""
        ...


class QuotaUnitOfWork(UnitOfWork, Protocol):
    """A unit of work that can also reserve quota inside its own transaction.

    Optional. A store whose units can do this sets the class attribute
    ``quota_in_unit = True``; the Engine then reserves a single send's quota in the event's
    unit (after the receipt check) instead of in a transaction of its own before it, and
    the unit gives the reservation back if the event is not applied. How the store does it
    is its own choice: SQLiteStore reserves inside the event's transaction (all writers are
    serialised anyway), so a crash cannot leave quota counted for an event that was not
    applied. PostgresStore reserves in a short transaction of its own sent in the unit's
    first round trip (holding the month's quota row for a whole unit would queue every
    writer), so a client that dies between that reservation and the end of its unit leaves
    it counted, as a separate reservation would.
    """

    def reserve_quota(self, month: str, count: int, limit: int | None) -> int | None:
        """:meth:`Store.reserve_quota` of the unit's tenant, inside the unit's transaction."""
        ...


@runtime_checkable
class Store(Protocol):
    """A place to keep buddies, receipts, quota, rulebooks, the ledger and the outbox."""

    def unit_of_work(self, tenant: str, key: BuddyKey) -> AbstractContextManager[UnitOfWork]:
        """Lock ``key`` and open a transaction; commit on clean exit, roll back on error."""
        ...

    def group(self, tenant: str) -> AbstractContextManager[None]:
        """A hint that several units follow (a batch): a store may commit them together.

        Each unit stays atomic on its own (a failing unit rolls back alone); units committed
        before a failure stay committed. Stores that cannot group make this a no-op.
        """
        ...

    def get_buddy(self, tenant: str, key: BuddyKey) -> BuddyState | None:
        """Read a buddy without locking it."""
        ...

    def list_buddies(self, tenant: str, user_id: str | None = None) -> Iterator[BuddyState]:
        """Every buddy of the tenant (or of one user), ordered by user_id then audience."""
        ...

    def export_states(self, tenant: str) -> list[BuddyState]:
        """A snapshot of every buddy of the tenant (e.g. for ``simulate(initial_states=...)``)."""
        ...

    def get_receipt(self, tenant: str, event_id: str) -> Receipt | None:
        """Read a receipt without locking."""
        ...

    def lookup(
        self, tenant: str, keys: Sequence[BuddyKey], event_ids: Sequence[str]
    ) -> tuple[dict[BuddyKey, BuddyState], dict[str, Receipt]]:
        """Read several buddies and receipts at once, without locking.

        Returns the buddies found (by key) and the receipts found (by event id); absent keys
        and ids are missing. Exactly what :meth:`get_buddy` for each key and
        :meth:`get_receipt` for each id would return, in as few round trips as the store can
        (the Engine reads a batch's buddies and receipts, or one event's, with one call).
        Duplicates are allowed; either sequence may be empty.
        """
        ...

    def reserve_quota(self, tenant: str, month: str, count: int, limit: int | None) -> int | None:
        """Atomically add ``count`` to the month's usage if it stays within ``limit``.

        Returns the usage after reserving, or None (nothing reserved) when it would exceed
        ``limit``. ``limit=None`` means unlimited (usage is still counted).
        """
        ...

    def release_quota(self, tenant: str, month: str, count: int) -> None:
        """Give back reserved quota (never below zero)."""
        ...

    def quota_used(self, tenant: str, month: str) -> int:
        """The month's usage."""
        ...

    def put_rulebook(self, tenant: str, record: RulebookRecord) -> None:
        """Insert or replace a rulebook record (by version; a replaced one keeps its place)."""
        ...

    def get_rulebook(self, tenant: str, version: str) -> RulebookRecord | None:
        """One rulebook record."""
        ...

    def list_rulebooks(self, tenant: str) -> list[RulebookRecord]:
        """Every rulebook record of the tenant, oldest first."""
        ...

    def ledger(self, tenant: str, key: BuddyKey | None = None) -> list[LedgerRecord]:
        """Ledger entries (of one buddy, or all), in the order they were written."""
        ...

    def outbox_pending(self, tenant: str, limit: int = 100) -> list[OutboxMessage]:
        """Committed, unacknowledged messages, oldest first."""
        ...

    def outbox_ack(self, tenant: str, ids: Sequence[int]) -> int:
        """Acknowledge messages; returns how many were pending.

        Unknown ids, ids already acknowledged and ids of another tenant are ignored.
        """
        ...

    def close(self) -> None:
        """Release connections and files."""
        ...
