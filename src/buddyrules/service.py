"""The Engine: the imperative shell around the pure core (SPEC §1, §3, §6).

:class:`Engine` validates events, resolves audiences, checks registration, deduplicates by
event id, reserves quota, and applies each event in one unit of work of its buddy's store
(state, receipt, ledger and outbox together). It is the only place that reads the clock.

Choices this module makes where the SPEC leaves room (also in the docstrings below):

* ``hatch`` of an existing buddy raises :class:`~buddyrules.errors.ConflictError`;
* audiences of events are resolved against the *current* published rulebook; registration is
  checked against the buddy's pinned rulebook (the current one when the user has no buddy);
* in a batch, an ``event_id`` reused with a different payload (inside the batch or against a
  stored receipt) rejects the whole batch with ``idempotency_key_conflict`` before any quota
  is reserved or anything is applied;
* the ``usage.threshold_reached`` message is written in the unit of work of the event whose
  reservation crosses 80% of the quota (addressed to that event's buddy key);
* admin idempotency keys share the receipt namespace with event ids as ``"admin:" + key``;
* an Engine caches the current published rulebook: changes made through another Engine on
  the same store are seen after :meth:`Engine.refresh`.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

from buddyrules.effects import Effects, frozen_builder
from buddyrules.engine import admin as pure_admin
from buddyrules.engine.advance import advance
from buddyrules.engine.evaluate import evaluate, new_buddy
from buddyrules.engine.periods import next_month_start_utc
from buddyrules.engine.turn import LedgerEntry, Notification, Outcome
from buddyrules.errors import (
    BatchTooLarge,
    BuddyRulesError,
    ConflictError,
    EventQuotaExceeded,
    EventTypeNotRegistered,
    IdempotencyKeyConflict,
    MissingAudience,
    NoPublishedConfig,
    ResourceNotFound,
    RulebookError,
    StoreError,
    UnknownAudience,
    ValidationFailed,
)
from buddyrules.events import Event
from buddyrules.rulebook import Rulebook, lint_rulebook, load_rulebook
from buddyrules.state import BuddyState
from buddyrules.storage.memory import MemoryStore
from buddyrules.storage.protocols import (
    BuddyKey,
    LedgerRecord,
    OutboxMessage,
    QuotaUnitOfWork,
    Receipt,
    RulebookRecord,
    Store,
    UnitOfWork,
)

__all__ = [
    "MAX_BATCH",
    "QUOTA_THRESHOLD",
    "Admin",
    "Engine",
    "GateResult",
    "MigrationSummary",
    "Outbox",
    "SweepSummary",
]

MAX_BATCH = 100
"""The largest batch :meth:`Engine.send_batch` accepts."""

QUOTA_THRESHOLD = 0.8
"""The share of the monthly quota at which ``usage.threshold_reached`` is written once."""

Clock = Callable[[], datetime]
RulebookSource = Rulebook | Mapping[str, Any] | str

# Positional constructors of the frozen records built for every event (a frozen dataclass's
# __init__ costs about twice as much); every field is passed, ``id`` as 0.
_buddy_key: Callable[[str, str], BuddyKey] = frozen_builder(BuddyKey)
_ledger_record: Callable[..., LedgerRecord] = frozen_builder(LedgerRecord)
_outbox_message: Callable[..., OutboxMessage] = frozen_builder(OutboxMessage)


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _month_of(now: datetime) -> str:
    utc = now if now.tzinfo is UTC else now.astimezone(UTC)
    return f"{utc.year:04d}-{utc.month:02d}"


_last_month: tuple[int, int, str] = (0, 0, "")


def _event_month(now: datetime) -> str:
    """``_month_of`` for the event path: consecutive events mostly fall in one month."""
    global _last_month
    year, month, text = _last_month
    if now.tzinfo is UTC and now.month == month and now.year == year:
        return text
    text = _month_of(now)
    if now.tzinfo is UTC:
        _last_month = (now.year, now.month, text)  # one tuple: threads see old or new
    return text


def _threshold(limit: int) -> int:
    """The smallest usage that is at least 80% of ``limit`` (integer arithmetic, no floats)."""
    return (4 * limit + 4) // 5


def _check_user_id(user_id: Any) -> str:
    if not isinstance(user_id, str) or not 1 <= len(user_id) <= 128:
        raise ValidationFailed(
            "user_id must be a string of 1-128 characters",
            {"fields": {"user_id": "must be a string of 1-128 characters"}},
        )
    return user_id


def _fingerprint_call(action: str, user_id: str, audience: str, args: Mapping[str, Any]) -> str:
    text = json.dumps(
        {"action": action, "user_id": user_id, "audience": audience, "args": args},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass(frozen=True, slots=True)
class GateResult:
    """What :meth:`Admin.unlock_gate` did: ``already_unlocked`` repeats touch no balance."""

    already_unlocked: bool
    effects: Effects


@dataclass(frozen=True, slots=True)
class SweepSummary:
    """What :meth:`Engine.sweep` did: buddies visited, buddies changed, messages written."""

    at: datetime
    buddies: int
    changed: int
    notifications: int


@dataclass(frozen=True, slots=True)
class MigrationSummary:
    """What :meth:`Engine.migrate` did.

    ``migrated`` buddies were re-pinned to ``to_version``; ``unchanged`` were already on it;
    ``skipped`` (``(user_id, audience)`` pairs) have an audience the target does not configure.
    """

    to_version: str
    migrated: int
    unchanged: int
    skipped: tuple[tuple[str, str], ...]


@dataclass(slots=True)
class _Prepared:
    """An event that passed steps 1-3 (shape, audience, registration)."""

    event: Event
    audience: str
    key: BuddyKey
    fingerprint: str | None
    rulebook: Rulebook  # the one registration was checked against


class Outbox:
    """The tenant's outbox: read committed messages and acknowledge delivered ones."""

    def __init__(self, store: Store, tenant: str) -> None:
        self._store = store
        self.tenant = tenant

    def pending(self, limit: int = 100) -> list[OutboxMessage]:
        """Committed, unacknowledged messages, oldest first."""
        return self._store.outbox_pending(self.tenant, limit)

    def ack(self, ids: Iterable[int]) -> int:
        """Acknowledge messages by id; returns how many were pending."""
        return self._store.outbox_ack(self.tenant, list(ids))


class Engine:
    """The service: validate, deduplicate, meter, serialise per buddy, apply, record.

    ``store`` defaults to a fresh :class:`~buddyrules.storage.memory.MemoryStore`. ``clock``
    returns the current aware datetime (default: UTC now); it is read for omitted
    ``occurred_at``, the quota month, hatch times and ledger times of admin calls.
    ``monthly_event_quota`` limits accepted events per tenant and UTC month (``None``:
    unlimited; usage is counted either way).
    """

    def __init__(
        self,
        store: Store | None = None,
        *,
        tenant: str = "default",
        clock: Clock | None = None,
        monthly_event_quota: int | None = None,
    ) -> None:
        if not isinstance(tenant, str) or not tenant:
            raise ValidationFailed("tenant must be a non-empty string", {"fields": {"tenant": ""}})
        if monthly_event_quota is not None and (
            not isinstance(monthly_event_quota, int) or monthly_event_quota < 0
        ):
            raise ValidationFailed(
                "monthly_event_quota must be a non-negative integer or None",
                {"fields": {"monthly_event_quota": "must be >= 0"}},
            )
        self.store: Store = store if store is not None else MemoryStore()
        self.tenant = tenant
        self.monthly_event_quota = monthly_event_quota
        self._clock: Clock = clock if clock is not None else _utc_now
        self._compiled: dict[str, Rulebook] = {}
        self._current: Rulebook | None = None
        self._current_loaded = False
        self._generation = 0  # bumped by refresh(): a concurrent reload cannot cache stale data
        self._cache_lock = threading.Lock()
        # Serialises rulebook lifecycle changes made through this engine (sequence numbers).
        self._lifecycle = threading.Lock()
        self.admin = Admin(self)
        self.outbox = Outbox(self.store, tenant)

    def __repr__(self) -> str:
        return f"Engine(tenant={self.tenant!r}, store={type(self.store).__name__})"

    # -- clock ----------------------------------------------------------------------------

    def now(self) -> datetime:
        """The injected clock's current time (must be timezone-aware)."""
        now = self._clock()
        if now.tzinfo is None or now.utcoffset() is None:
            raise ValidationFailed(
                "the clock returned a naive datetime", {"fields": {"clock": "naive datetime"}}
            )
        return now

    # -- rulebooks ------------------------------------------------------------------------

    def _compile(self, record: RulebookRecord) -> Rulebook:
        rulebook = load_rulebook(record.document)
        if rulebook.version != record.version:
            raise StoreError(
                f"stored rulebook {record.version} reloads as version {rulebook.version}",
                {"version": record.version},
            )
        return rulebook

    def rulebook(self, version: str) -> Rulebook:
        """The compiled rulebook of a stored version (``resource_not_found`` if unknown)."""
        cached = self._compiled.get(version)
        if cached is not None:
            return cached
        record = self.store.get_rulebook(self.tenant, version)
        if record is None:
            raise ResourceNotFound(f"unknown rulebook version {version!r}", {"version": version})
        rulebook = self._compile(record)
        self._compiled[version] = rulebook
        return rulebook

    def refresh(self) -> None:
        """Forget the cached current rulebook (re-read it from the store on next use)."""
        with self._cache_lock:
            self._generation += 1
            self._current_loaded = False

    def _current_or_none(self) -> Rulebook | None:
        if self._current_loaded:
            return self._current
        generation = self._generation
        published = [r for r in self.store.list_rulebooks(self.tenant) if r.status == "published"]
        current = None
        if published:
            record = max(published, key=lambda r: r.sequence)
            current = self.rulebook(record.version)
        with self._cache_lock:
            if generation == self._generation:
                self._current = current
                self._current_loaded = True
        return current

    def current_rulebook(self) -> Rulebook:
        """The current published rulebook (``no_published_config`` when there is none)."""
        current = self._current_or_none()
        if current is None:
            raise NoPublishedConfig(
                f"no rulebook is published for tenant {self.tenant!r}", {"tenant": self.tenant}
            )
        return current

    def rulebook_versions(self) -> list[RulebookRecord]:
        """Every stored version (draft, published, archived) of the tenant, oldest first."""
        return self.store.list_rulebooks(self.tenant)

    def save_draft(self, rulebook: RulebookSource) -> str:
        """Store a rulebook as a draft and return its version.

        Saving the same draft again is a no-op; a version already published or archived is a
        ``conflict`` (published rulebooks are immutable).
        """
        rb = load_rulebook(rulebook)
        with self._lifecycle:
            existing = self.store.get_rulebook(self.tenant, rb.version)
            if existing is not None:
                if existing.status == "draft":
                    return rb.version
                raise ConflictError(
                    f"rulebook {rb.version} is already {existing.status}",
                    {"version": rb.version, "status": existing.status},
                )
            self.store.put_rulebook(
                self.tenant, RulebookRecord(rb.version, rb.name, "draft", rb.to_dict())
            )
        self._compiled.setdefault(rb.version, rb)
        return rb.version

    def publish(self, rulebook: RulebookSource) -> str:
        """Lint and publish a rulebook (it becomes current); returns its version.

        Error findings of :func:`~buddyrules.lint_rulebook` raise ``rulebook_invalid``.
        Publishing a version that is already published changes nothing (idempotent);
        publishing a draft or an archived version makes it published and current.
        """
        rb = load_rulebook(rulebook)
        errors = [f for f in lint_rulebook(rb) if f.severity == "error"]
        if errors:
            raise RulebookError(
                [{"path": f.path, "message": f.message, "column": None} for f in errors]
            )
        with self._lifecycle:
            existing = self.store.get_rulebook(self.tenant, rb.version)
            if existing is not None and existing.status == "published":
                self.refresh()
                return rb.version
            sequence = 1 + max(
                (r.sequence for r in self.store.list_rulebooks(self.tenant)), default=0
            )
            self.store.put_rulebook(
                self.tenant,
                RulebookRecord(
                    rb.version,
                    rb.name,
                    "published",
                    rb.to_dict(),
                    sequence=sequence,
                    published_at=self.now(),
                ),
            )
            self._compiled.setdefault(rb.version, rb)
            self.refresh()
        return rb.version

    def archive(self, version: str) -> RulebookRecord:
        """Archive a version: it is no longer current (the newest other published one is).

        Buddies pinned to it keep running on it until migrated. Archiving twice is a no-op.
        """
        with self._lifecycle:
            record = self.store.get_rulebook(self.tenant, version)
            if record is None:
                raise ResourceNotFound(
                    f"unknown rulebook version {version!r}", {"version": version}
                )
            if record.status != "archived":
                record = RulebookRecord(
                    record.version,
                    record.name,
                    "archived",
                    record.document,
                    sequence=record.sequence,
                    published_at=record.published_at,
                    extra=record.extra,
                )
                self.store.put_rulebook(self.tenant, record)
            self.refresh()
        return record

    def migrate(
        self, user_id: str | None, to_version: str, *, audience: str | None = None
    ) -> MigrationSummary:
        """Re-pin buddies (one user's, or every buddy of the tenant) to a published version.

        State carries over unchanged (badges are never revoked); nothing is evaluated. A
        buddy whose audience the target does not configure is skipped. ``resource_not_found``
        when the version (or the user's buddy) does not exist; ``conflict`` when the version
        is not published.
        """
        record = self.store.get_rulebook(self.tenant, to_version)
        if record is None:
            raise ResourceNotFound(
                f"unknown rulebook version {to_version!r}", {"version": to_version}
            )
        if record.status != "published":
            raise ConflictError(
                f"rulebook {to_version} is {record.status}: only a published version can be "
                "migrated to",
                {"version": to_version, "status": record.status},
            )
        target = self.rulebook(to_version)
        if user_id is not None:
            _check_user_id(user_id)
        keys = [
            BuddyKey(s.user_id, s.audience)
            for s in self.store.list_buddies(self.tenant, user_id)
            if audience is None or s.audience == audience
        ]
        if user_id is not None and not keys:
            raise ResourceNotFound(
                f"user {user_id!r} has no buddy"
                + (f" in audience {audience!r}" if audience else ""),
                {"user_id": user_id, "audience": audience},
            )
        migrated = unchanged = 0
        skipped: list[tuple[str, str]] = []
        for key in keys:
            if key.audience not in target.audiences:
                skipped.append((key.user_id, key.audience))
                continue
            with self.store.unit_of_work(self.tenant, key) as uow:
                state = uow.get_buddy()
                if state is None:
                    continue
                if state.rulebook_version == to_version:
                    unchanged += 1
                    continue
                uow.put_buddy(state.model_copy(update={"rulebook_version": to_version}))
                migrated += 1
        return MigrationSummary(to_version, migrated, unchanged, tuple(skipped))

    # -- buddies --------------------------------------------------------------------------

    def _resolve_audience(self, rulebook: Rulebook, audience: Any) -> str:
        if audience is None:
            default = rulebook.default_audience
            if default is None:
                raise MissingAudience(
                    "audience is required: the rulebook configures "
                    f"{len(rulebook.audiences)} audiences ({', '.join(rulebook.audiences)})",
                    {"audiences": list(rulebook.audiences)},
                )
            return default
        if audience not in rulebook.audiences:
            raise UnknownAudience(
                f"unknown audience {audience!r} (configured: {', '.join(rulebook.audiences)})",
                {"audience": audience, "audiences": list(rulebook.audiences)},
            )
        return str(audience)

    def _key_of_existing(self, user_id: str, audience: str | None) -> BuddyKey:
        """The key of an existing buddy (admin paths): audience may be inferred."""
        _check_user_id(user_id)
        if audience is not None:
            return BuddyKey(user_id, audience)
        current = self._current_or_none()
        if current is not None and current.default_audience is not None:
            return BuddyKey(user_id, current.default_audience)
        buddies = list(self.store.list_buddies(self.tenant, user_id))
        if not buddies:
            raise ResourceNotFound(f"user {user_id!r} has no buddy", {"user_id": user_id})
        if len(buddies) > 1:
            raise MissingAudience(
                f"user {user_id!r} has buddies in several audiences: name one",
                {"audiences": [b.audience for b in buddies]},
            )
        return BuddyKey(user_id, buddies[0].audience)

    def hatch(
        self, user_id: str, audience: str | None = None, *, timezone: str | None = None
    ) -> BuddyState:
        """Create a stage-1 buddy pinned to the current published rulebook.

        ``no_published_config`` when nothing is published; ``conflict`` when the buddy
        already exists (use :meth:`buddy` to read it). Writes a ``buddy.hatched`` message.
        """
        _check_user_id(user_id)
        rulebook = self.current_rulebook()
        aud = self._resolve_audience(rulebook, audience)
        key = BuddyKey(user_id, aud)
        now = self.now()
        with self.store.unit_of_work(self.tenant, key) as uow:
            if uow.get_buddy() is not None:
                raise ConflictError(
                    f"user {user_id!r} already has a buddy in audience {aud!r}",
                    {"user_id": user_id, "audience": aud},
                )
            state = new_buddy(rulebook, user_id, aud, timezone=timezone, hatched_at=now)
            uow.put_buddy(state)
            uow.append_outbox([self._hatched_message(state, now)])
        return state

    @staticmethod
    def _hatched_message(state: BuddyState, now: datetime) -> OutboxMessage:
        return OutboxMessage(
            "buddy.hatched",
            state.user_id,
            state.audience,
            {"stage": state.stage, "rulebook_version": state.rulebook_version},
            now,
        )

    def buddy(self, user_id: str, audience: str | None = None) -> BuddyState:
        """A buddy's state (``resource_not_found`` when the user has none there)."""
        key = self._key_of_existing(user_id, audience)
        state = self.store.get_buddy(self.tenant, key)
        if state is None:
            raise ResourceNotFound(
                f"user {user_id!r} has no buddy in audience {key.audience!r}",
                {"user_id": user_id, "audience": key.audience},
            )
        return state

    def export_states(self) -> list[BuddyState]:
        """A snapshot of every buddy of the tenant."""
        return self.store.export_states(self.tenant)

    def ledger(self, user_id: str | None = None, audience: str | None = None) -> list[LedgerRecord]:
        """Ledger entries in write order: of the tenant, of one user, or of one buddy."""
        if user_id is None:
            entries = self.store.ledger(self.tenant)
            return entries if audience is None else [e for e in entries if e.audience == audience]
        if audience is None:
            current = self._current_or_none()
            audience = current.default_audience if current is not None else None
        if audience is not None:
            return self.store.ledger(self.tenant, BuddyKey(user_id, audience))
        return [e for e in self.store.ledger(self.tenant) if e.user_id == user_id]

    def quota_used(self, month: str | None = None) -> int:
        """Events counted against the quota in ``month`` (``"YYYY-MM"``; default: now)."""
        return self.store.quota_used(
            self.tenant, month if month is not None else _month_of(self.now())
        )

    # -- events: steps 1-3 --------------------------------------------------------------------

    def _shape(
        self, raw: Event | Mapping[str, Any], current: Rulebook | None
    ) -> tuple[Event, str, BuddyKey]:
        """Shape and audience (SPEC §1 steps 1-2): the event, its audience and buddy key."""
        if isinstance(raw, Event):
            # An Event built directly skipped validation: run it now, on the same fields.
            fields: dict[str, Any] = {"user_id": raw.user_id, "type": raw.type}
            for name in ("event_id", "audience", "properties", "occurred_at"):
                value = getattr(raw, name)
                if value is not None:
                    fields[name] = value
            event = Event.from_dict(fields)
        else:
            event = Event.from_dict(raw)
        if current is None:
            raise NoPublishedConfig(
                f"no rulebook is published for tenant {self.tenant!r}", {"tenant": self.tenant}
            )
        audience = event.audience
        if audience is None:
            audience = current.default_audience
        # Every configured audience has registered types, so this is the fast membership test.
        if audience is None or audience not in current.event_types:
            audience = self._resolve_audience(current, event.audience)
        return event, audience, _buddy_key(event.user_id, audience)

    def _pin(
        self,
        event: Event,
        audience: str,
        key: BuddyKey,
        state: BuddyState | None,
        current: Rulebook,
    ) -> _Prepared:
        """Registration (SPEC §1 step 3) under the rulebook the buddy is pinned to."""
        rulebook = current
        if state is not None and state.rulebook_version != current.version:
            rulebook = self.rulebook(state.rulebook_version)
        types = rulebook.event_types.get(audience)
        if types is None or event.type not in types:
            self._check_registered(rulebook, audience, event.type)  # raises
        fingerprint = event.fingerprint(audience) if event.event_id is not None else None
        return _Prepared(event, audience, key, fingerprint, rulebook)

    def _lookup(
        self, keys: Sequence[BuddyKey], event_ids: Sequence[str]
    ) -> tuple[dict[BuddyKey, BuddyState], dict[str, Receipt]]:
        """The buddies and receipts steps 3 and 4 need, in one store call when it can."""
        lookup = getattr(self.store, "lookup", None)
        if lookup is not None:
            found: tuple[dict[BuddyKey, BuddyState], dict[str, Receipt]] = lookup(
                self.tenant, keys, event_ids
            )
            return found
        # A store written before Store.lookup existed: one read per item.
        buddies = {}
        for key in keys:
            state = self.store.get_buddy(self.tenant, key)
            if state is not None:
                buddies[key] = state
        receipts = {}
        for event_id in event_ids:
            receipt = self.store.get_receipt(self.tenant, event_id)
            if receipt is not None:
                receipts[event_id] = receipt
        return buddies, receipts

    @staticmethod
    def _check_registered(rulebook: Rulebook, audience: str, event_type: str) -> None:
        types = rulebook.event_types.get(audience)
        if types is None or event_type not in types:
            raise EventTypeNotRegistered(
                f"event type {event_type!r} is not registered for audience {audience!r} "
                f"(rulebook {rulebook.version})",
                {"type": event_type, "audience": audience, "rulebook_version": rulebook.version},
            )

    @staticmethod
    def _replay_or_conflict(receipt: Receipt, fingerprint: str, event_id: str) -> Effects:
        if receipt.fingerprint != fingerprint:
            raise IdempotencyKeyConflict(
                f"event id {event_id!r} was already used with a different payload",
                {"event_id": event_id},
            )
        return Effects.from_wire(receipt.effects).as_replayed()

    def _quota_exceeded(self, now: datetime, requested: int) -> EventQuotaExceeded:
        reset_at = next_month_start_utc(now).isoformat()
        limit = self.monthly_event_quota
        return EventQuotaExceeded(
            f"the monthly event quota ({limit}) of tenant {self.tenant!r} is used up; "
            f"it resets at {reset_at}",
            {"reset_at": reset_at, "limit": limit, "requested": requested},
        )

    def _threshold_message(self, key: BuddyKey, month: str, now: datetime) -> OutboxMessage:
        limit = self.monthly_event_quota
        assert limit is not None
        return OutboxMessage(
            "usage.threshold_reached",
            key.user_id,
            key.audience,
            {
                "tenant": self.tenant,
                "month": month,
                "used": _threshold(limit),
                "limit": limit,
                "threshold": QUOTA_THRESHOLD,
            },
            now,
        )

    # -- events: step 6 -------------------------------------------------------------------

    def _apply(
        self,
        p: _Prepared,
        now: datetime,
        explain: bool,
        extra: list[OutboxMessage] | None,
        quota: tuple[str, int | None] | None = None,
    ) -> tuple[Effects, bool]:
        """Apply one prepared event in its buddy's unit; returns (effects, applied).

        ``applied`` is False when the event turned out to be a replay (another thread
        recorded the same id first). Raises on failure; the unit rolls back. With ``quota``
        (month, limit), the unit reserves the event's quota itself after the receipt check
        (a store with ``quota_in_unit``), so it commits or rolls back with the event.
        """
        event = p.event
        event_id = event.event_id
        try:
            with self.store.unit_of_work(self.tenant, p.key) as uow:
                if event_id is not None:
                    receipt = uow.get_receipt(event_id)
                    if receipt is not None:
                        assert p.fingerprint is not None
                        return self._replay_or_conflict(receipt, p.fingerprint, event_id), False
                if quota is not None:
                    month, limit = quota
                    used = cast(QuotaUnitOfWork, uow).reserve_quota(month, 1, limit)
                    if used is None:
                        raise self._quota_exceeded(now, 1)
                    if limit is not None and used == _threshold(limit) and used > 0:
                        extra = [self._threshold_message(p.key, month, now)]
                effects = self._apply_in_unit(uow, p, now, explain, extra)
                return effects, True
        except ConflictError:
            if event_id is None or p.fingerprint is None:
                raise
            # Another unit (another buddy's, or a racing thread) recorded this id first.
            receipt = self.store.get_receipt(self.tenant, event_id)
            if receipt is None:
                raise
            return self._replay_or_conflict(receipt, p.fingerprint, event_id), False

    def _apply_in_unit(
        self,
        uow: UnitOfWork,
        p: _Prepared,
        now: datetime,
        explain: bool,
        extra: list[OutboxMessage] | None,
    ) -> Effects:
        event = p.event
        key = p.key
        occurred_at = event.occurred_at
        if occurred_at is None:
            occurred_at = now
            event = Event(
                event.user_id,
                event.type,
                event.event_id,
                event.audience,
                event.properties,
                occurred_at,
            )
        state = uow.get_buddy()
        outbox: list[OutboxMessage] = [] if extra is None else list(extra)
        if state is None:
            rulebook = p.rulebook
            if not rulebook.auto_hatch:
                effects = Effects(
                    debug_reason="no_active_buddies_for_user",
                    rulebook_version=rulebook.version,
                    trace=() if explain else None,
                )
                self._record(uow, p, effects, (), (), outbox, occurred_at)
                return effects
            state = new_buddy(rulebook, key.user_id, key.audience, hatched_at=now)
            outbox.append(self._hatched_message(state, now))
        elif state.rulebook_version == p.rulebook.version:
            rulebook = p.rulebook
        else:
            # Migrated since validation: the pinned rulebook decides registration.
            rulebook = self.rulebook(state.rulebook_version)
            self._check_registered(rulebook, key.audience, event.type)
        outcome = evaluate(rulebook, state, event, explain=explain)
        uow.put_buddy(outcome.state)
        self._record(
            uow, p, outcome.effects, outcome.ledger, outcome.notifications, outbox, occurred_at
        )
        return outcome.effects

    def _record(
        self,
        uow: UnitOfWork,
        p: _Prepared,
        effects: Effects,
        ledger: Sequence[LedgerEntry],
        notifications: Sequence[Notification],
        outbox: list[OutboxMessage],
        at: datetime,
    ) -> None:
        event_id = p.event.event_id
        user_id, audience = p.key.user_id, p.key.audience
        fast = getattr(uow, "append_ledger_entries", None)
        if fast is not None:
            # A unit with the Engine's fast path (MemoryStore's, SQLiteStore's): its rows
            # are built straight from the engine's values, without the port's record objects.
            if ledger:
                fast(ledger, event_id, at)
            if outbox:
                uow.append_outbox(outbox)
            if notifications:
                uow.append_notifications(notifications, at)  # type: ignore[attr-defined]
        else:
            self._record_rows(uow, user_id, audience, event_id, ledger, notifications, outbox, at)
        if event_id is None:
            return
        assert p.fingerprint is not None
        put_effects = getattr(uow, "put_effects_receipt", None)
        if put_effects is not None:
            # A unit that packs the effects itself (MemoryStore's, SQLiteStore's): the wire
            # dict is only built if the receipt is ever read.
            put_effects(event_id, p.fingerprint, effects)
            return
        wire = effects.to_wire(include_trace=False)
        uow.put_receipt(Receipt(event_id, p.fingerprint, user_id, audience, wire))

    @staticmethod
    def _record_rows(
        uow: UnitOfWork,
        user_id: str,
        audience: str,
        event_id: str | None,
        ledger: Sequence[LedgerEntry],
        notifications: Sequence[Notification],
        outbox: list[OutboxMessage],
        at: datetime,
    ) -> None:
        """Ledger entries and outbox messages as the UnitOfWork port's record objects."""
        if ledger:
            uow.append_ledger(
                [
                    _ledger_record(
                        user_id,
                        audience,
                        e.currency,
                        e.amount,
                        e.balance_after,
                        e.reason,
                        event_id,
                        at,
                        0,
                    )
                    for e in ledger
                ]
            )
        for n in notifications:
            outbox.append(_outbox_message(n.type, user_id, audience, n.payload, at, 0))
        if outbox:
            uow.append_outbox(outbox)

    # -- events: the public calls ---------------------------------------------------------

    def send(self, event: Event | Mapping[str, Any], *, explain: bool = False) -> Effects:
        """Validate, deduplicate, meter and apply one event (SPEC §1); returns its effects.

        ``event`` is an :class:`~buddyrules.Event` or a dict (snake_case or camelCase keys).
        With ``explain=True`` the effects carry a ``trace`` (SPEC §7). A repeated
        ``event_id`` with the same payload returns the stored effects with ``replayed=True``
        (no rule runs, so a replay carries no trace; receipts never store one).
        """
        current = self._current_or_none()
        shaped, audience, key = self._shape(event, current)
        assert current is not None  # _shape raised otherwise
        event_id = shaped.event_id
        # The buddy (for its pinned rulebook) and the receipt, read together (a MemoryStore
        # has no round trips to save: two dict reads are cheaper than building the maps).
        receipt: Receipt | None = None
        if type(self.store) is MemoryStore:
            state = self.store.get_buddy(self.tenant, key)
            if event_id is not None:
                receipt = self.store.get_receipt(self.tenant, event_id)
        else:
            buddies, receipts = self._lookup((key,), () if event_id is None else (event_id,))
            state = buddies.get(key)
            if event_id is not None:
                receipt = receipts.get(event_id)
        p = self._pin(shaped, audience, key, state, current)
        if event_id is not None and receipt is not None:
            assert p.fingerprint is not None
            return self._replay_or_conflict(receipt, p.fingerprint, event_id)
        now = self.now()
        month = _event_month(now)
        limit = self.monthly_event_quota
        if getattr(self.store, "quota_in_unit", False):
            # Steps 5 and 6 in one transaction: nothing to give back on failure.
            return self._apply(p, now, explain, None, (month, limit))[0]
        used = self.store.reserve_quota(self.tenant, month, 1, limit)
        if used is None:
            raise self._quota_exceeded(now, 1)
        extra = None
        if limit is not None and used == _threshold(limit) and used > 0:
            extra = [self._threshold_message(p.key, month, now)]
        applied = False
        try:
            effects, applied = self._apply(p, now, explain, extra)
        finally:
            if not applied:
                self.store.release_quota(self.tenant, month, 1)
        return effects

    def send_batch(self, events: Sequence[Event | Mapping[str, Any]]) -> list[Effects]:
        """Send 1-100 events; returns their effects in order (SPEC §1, Batches).

        Steps 1-3 run for every event first; any failure rejects the whole batch with one
        error whose ``details["errors"]`` lists ``{"index", "code", "message"}`` (code and
        status of the lowest failing index) and nothing is applied or metered. Then ids are
        deduplicated (also within the batch), quota is reserved for all new events at once,
        and events are applied in order, each in its own unit of work. If applying event
        *k* fails, events before *k* stay committed and the error's ``details["index"]`` is
        *k*; re-sending the batch is safe because of event ids.
        """
        if isinstance(events, str | bytes) or not isinstance(events, Sequence):
            raise ValidationFailed(
                "a batch must be a list of events", {"fields": {"": "expected a list"}}
            )
        n = len(events)
        if n == 0:
            raise ValidationFailed("a batch needs at least one event", {"fields": {"": "empty"}})
        if n > MAX_BATCH:
            raise BatchTooLarge(
                f"a batch holds at most {MAX_BATCH} events, got {n}",
                {"max": MAX_BATCH, "size": n},
            )
        current = self._current_or_none()
        shaped: list[tuple[int, Event, str, BuddyKey]] = []
        failures: list[tuple[int, BuddyRulesError]] = []
        for i, raw in enumerate(events):
            try:
                shaped.append((i, *self._shape(raw, current)))
            except BuddyRulesError as exc:
                failures.append((i, exc))
        # Every buddy and receipt the batch needs, in one store call.
        buddies, receipts = self._lookup(
            [key for _, _, _, key in shaped],
            [e.event_id for _, e, _, _ in shaped if e.event_id is not None],
        )
        prepared: list[_Prepared] = []
        for i, event, audience, key in shaped:
            assert current is not None  # _shape raised otherwise
            try:
                prepared.append(self._pin(event, audience, key, buddies.get(key), current))
            except BuddyRulesError as exc:
                failures.append((i, exc))
        if failures:
            raise _batch_error(failures, "rejected")

        # Step 4: duplicates, inside the batch and against stored receipts.
        results: list[Effects | None] = [None] * n
        duplicate_of: dict[int, int] = {}
        first_by_id: dict[str, int] = {}
        to_apply: list[int] = []
        for i, p in enumerate(prepared):
            event_id = p.event.event_id
            if event_id is None:
                to_apply.append(i)
                continue
            assert p.fingerprint is not None
            j = first_by_id.get(event_id)
            try:
                if j is not None:
                    if prepared[j].fingerprint != p.fingerprint:
                        raise IdempotencyKeyConflict(
                            f"event id {event_id!r} appears twice in the batch with different "
                            "payloads",
                            {"event_id": event_id},
                        )
                    duplicate_of[i] = j
                    continue
                first_by_id[event_id] = i
                receipt = receipts.get(event_id)
                if receipt is not None:
                    results[i] = self._replay_or_conflict(receipt, p.fingerprint, event_id)
                else:
                    to_apply.append(i)
            except IdempotencyKeyConflict as exc:
                failures.append((i, exc))
        if failures:
            raise _batch_error(failures, "rejected")

        # Step 5: quota for every new event at once (all or nothing).
        now = self.now()
        month = _month_of(now)
        limit = self.monthly_event_quota
        count = len(to_apply)
        threshold_at = -1
        if count:
            used = self.store.reserve_quota(self.tenant, month, count, limit)
            if used is None:
                raise self._quota_exceeded(now, count)
            if limit is not None:
                mark = _threshold(limit)
                before = used - count
                if before < mark <= used and mark > 0:
                    threshold_at = mark - before - 1  # position in to_apply that crosses

        # Step 6: apply in order, each event in its own unit.
        done = 0
        not_applied = 0
        failure: tuple[int, BaseException] | None = None
        pending_threshold = False
        try:
            with self.store.group(self.tenant):
                for pos, i in enumerate(to_apply):
                    p = prepared[i]
                    if pos == threshold_at:
                        pending_threshold = True
                    extra = (
                        [self._threshold_message(p.key, month, now)] if pending_threshold else None
                    )
                    try:
                        effects, applied = self._apply(p, now, False, extra)
                    except Exception as exc:
                        failure = (i, exc)
                        break
                    done += 1
                    if applied:
                        pending_threshold = False
                    else:
                        not_applied += 1
                    results[i] = effects
        finally:
            unused = not_applied + (count - done)
            if unused:
                self.store.release_quota(self.tenant, month, unused)
        if failure is not None:
            index, cause = failure
            committed = [i for i in to_apply if results[i] is not None]
            raise _apply_error(index, cause, committed) from cause

        for i, j in duplicate_of.items():
            first = results[j]
            assert first is not None
            results[i] = first.as_replayed() if not first.replayed else first
        out: list[Effects] = []
        for r in results:
            assert r is not None
            out.append(r)
        return out

    # -- admin, evolve, sweep -------------------------------------------------------------

    def _admin_call(
        self,
        action: str,
        user_id: str,
        audience: str | None,
        key: str | None,
        args: dict[str, Any],
        step: Callable[[Rulebook, BuddyState], tuple[Outcome, dict[str, Any]]],
    ) -> tuple[Effects, dict[str, Any]]:
        """Run a pure admin step in the buddy's unit; write ledger, outbox and key receipt.

        Returns the effects and the step's extra result fields (e.g. ``already_unlocked``).
        """
        buddy_key = self._key_of_existing(user_id, audience)
        if key is not None and (not isinstance(key, str) or not 1 <= len(key) <= 128):
            raise ValidationFailed(
                "key must be a string of 1-128 characters", {"fields": {"key": "1-128 chars"}}
            )
        receipt_id = f"admin:{key}" if key is not None else None
        fingerprint = (
            _fingerprint_call(action, buddy_key.user_id, buddy_key.audience, args)
            if receipt_id is not None
            else None
        )
        reference = f"admin:{action}" + (f":{key}" if key is not None else "")
        now = self.now()
        try:
            with self.store.unit_of_work(self.tenant, buddy_key) as uow:
                if receipt_id is not None:
                    assert fingerprint is not None
                    receipt = uow.get_receipt(receipt_id)
                    if receipt is not None:
                        return _admin_replay(receipt, fingerprint, key)
                state = uow.get_buddy()
                if state is None:
                    raise ResourceNotFound(
                        f"user {buddy_key.user_id!r} has no buddy in audience "
                        f"{buddy_key.audience!r}",
                        {"user_id": buddy_key.user_id, "audience": buddy_key.audience},
                    )
                outcome, extra = step(self.rulebook(state.rulebook_version), state)
                if outcome.state != state:
                    uow.put_buddy(outcome.state)
                if outcome.ledger:
                    uow.append_ledger(
                        [
                            LedgerRecord(
                                buddy_key.user_id,
                                buddy_key.audience,
                                e.currency,
                                e.amount,
                                e.balance_after,
                                e.reason,
                                reference,
                                now,
                            )
                            for e in outcome.ledger
                        ]
                    )
                if outcome.notifications:
                    uow.append_outbox(
                        [
                            OutboxMessage(
                                n.type, buddy_key.user_id, buddy_key.audience, n.payload, now
                            )
                            for n in outcome.notifications
                        ]
                    )
                if receipt_id is not None:
                    assert fingerprint is not None
                    uow.put_receipt(
                        Receipt(
                            receipt_id,
                            fingerprint,
                            buddy_key.user_id,
                            buddy_key.audience,
                            {**outcome.effects.to_wire(include_trace=False), **extra},
                        )
                    )
                return outcome.effects, extra
        except ConflictError:
            if receipt_id is None or fingerprint is None:
                raise
            receipt = self.store.get_receipt(self.tenant, receipt_id)
            if receipt is None:
                raise
            return _admin_replay(receipt, fingerprint, key)

    def evolve(
        self, user_id: str, audience: str | None = None, *, key: str | None = None
    ) -> Effects:
        """Advance the buddy one stage (``evolution_not_ready`` when its condition is false)."""

        def step(rb: Rulebook, state: BuddyState) -> tuple[Outcome, dict[str, Any]]:
            return pure_admin.admin_evolve(rb, state), {}

        return self._admin_call("evolve", user_id, audience, key, {}, step)[0]

    def sweep(self, now: datetime | None = None) -> SweepSummary:
        """Apply time-based rules (decay, streak burns) to every buddy of the tenant.

        Each buddy runs :func:`~buddyrules.advance` in its own unit of work; sweeping again
        for the same period changes nothing. ``now`` defaults to the clock.
        """
        at = now if now is not None else self.now()
        if at.tzinfo is None or at.utcoffset() is None:
            raise ValidationFailed("now must be timezone-aware", {"fields": {"now": "naive"}})
        keys = [BuddyKey(s.user_id, s.audience) for s in self.store.list_buddies(self.tenant)]
        changed = notifications = 0
        reference = f"sweep:{at.astimezone(UTC).isoformat()}"
        for key in keys:
            with self.store.unit_of_work(self.tenant, key) as uow:
                state = uow.get_buddy()
                if state is None:
                    continue
                outcome = advance(self.rulebook(state.rulebook_version), state, at)
                if outcome.state == state and not outcome.notifications and not outcome.ledger:
                    continue
                uow.put_buddy(outcome.state)
                if outcome.ledger:
                    uow.append_ledger(
                        [
                            LedgerRecord(
                                key.user_id,
                                key.audience,
                                e.currency,
                                e.amount,
                                e.balance_after,
                                e.reason,
                                reference,
                                at,
                            )
                            for e in outcome.ledger
                        ]
                    )
                if outcome.notifications:
                    uow.append_outbox(
                        [
                            OutboxMessage(n.type, key.user_id, key.audience, n.payload, at)
                            for n in outcome.notifications
                        ]
                    )
                changed += 1
                notifications += len(outcome.notifications)
        return SweepSummary(at, len(keys), changed, notifications)


def _admin_replay(
    receipt: Receipt, fingerprint: str, key: str | None
) -> tuple[Effects, dict[str, Any]]:
    if receipt.fingerprint != fingerprint:
        raise IdempotencyKeyConflict(
            f"admin key {key!r} was already used for a different call", {"key": key}
        )
    stored = receipt.effects
    extra = {"already_unlocked": stored["already_unlocked"]} if "already_unlocked" in stored else {}
    return Effects.from_wire(stored).as_replayed(), extra


def _batch_error(failures: list[tuple[int, BuddyRulesError]], what: str) -> BuddyRulesError:
    """One error for a rejected batch: class of the lowest failing index, every failure listed."""
    failures = sorted(failures, key=lambda f: f[0])
    index, first = failures[0]
    errors = [{"index": i, "code": e.code, "message": e.message} for i, e in failures]
    message = (
        f"batch {what}: {len(errors)} event(s) failed; first at index {index}: {first.message}"
    )
    details = {"errors": errors}
    cls = type(first)
    if cls is RulebookError:  # never raised by steps 1-4, but keep the constructor honest
        return BuddyRulesError(message, details)
    return cls(message, details)


def _apply_error(index: int, exc: BaseException, committed: list[int]) -> BuddyRulesError:
    """The error raised when applying event ``index`` of a batch failed."""
    if isinstance(exc, BuddyRulesError):
        code, message = exc.code, exc.message
    else:
        code, message = StoreError.code, f"{type(exc).__name__}: {exc}"
    details: dict[str, Any] = {
        "index": index,
        "errors": [{"index": index, "code": code, "message": message}],
        "committed": committed,
    }
    text = (
        f"applying batch event {index} failed "
        f"({len(committed)} earlier event(s) committed): {message}"
    )
    if isinstance(exc, BuddyRulesError) and type(exc) is not RulebookError:
        return type(exc)(text, details)
    return StoreError(text, details)


class Admin:
    """Admin overrides (SPEC §6), reached as ``engine.admin``.

    Every call takes keyword-only ``audience=None`` and ``key=None``; it runs in the buddy's
    unit of work and writes ledger and outbox like an event. With ``key`` it is idempotent:
    the same call with the same key returns the stored result (``replayed=True``); a
    different call with a used key raises ``idempotency_key_conflict``.
    """

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def _run(
        self,
        action: str,
        user_id: str,
        audience: str | None,
        key: str | None,
        args: dict[str, Any],
        fn: Callable[[Rulebook, BuddyState], Outcome],
    ) -> Effects:
        def step(rb: Rulebook, state: BuddyState) -> tuple[Outcome, dict[str, Any]]:
            return fn(rb, state), {}

        return self._engine._admin_call(action, user_id, audience, key, args, step)[0]

    def earn_coins(
        self,
        user_id: str,
        amount: int,
        *,
        reason: str,
        audience: str | None = None,
        key: str | None = None,
    ) -> Effects:
        """Credit coins."""
        return self._run(
            "earn_coins",
            user_id,
            audience,
            key,
            {"amount": amount, "reason": reason},
            lambda rb, s: pure_admin.admin_earn_coins(rb, s, amount, reason),
        )

    def spend_coins(
        self,
        user_id: str,
        amount: int,
        *,
        reason: str,
        audience: str | None = None,
        key: str | None = None,
    ) -> Effects:
        """Debit coins (``insufficient_balance`` rather than going negative)."""
        return self._run(
            "spend_coins",
            user_id,
            audience,
            key,
            {"amount": amount, "reason": reason},
            lambda rb, s: pure_admin.admin_spend_coins(rb, s, amount, reason),
        )

    def grant_tokens(
        self,
        user_id: str,
        token: str,
        amount: int,
        *,
        reason: str,
        audience: str | None = None,
        key: str | None = None,
    ) -> Effects:
        """Credit a token (clipped to its ``max_balance``)."""
        return self._run(
            "grant_tokens",
            user_id,
            audience,
            key,
            {"token": token, "amount": amount, "reason": reason},
            lambda rb, s: pure_admin.admin_grant_tokens(rb, s, token, amount, reason),
        )

    def spend_tokens(
        self,
        user_id: str,
        token: str,
        amount: int,
        *,
        reason: str,
        audience: str | None = None,
        key: str | None = None,
    ) -> Effects:
        """Debit a primary token (``progression_not_spendable``, ``insufficient_balance``)."""
        return self._run(
            "spend_tokens",
            user_id,
            audience,
            key,
            {"token": token, "amount": amount, "reason": reason},
            lambda rb, s: pure_admin.admin_spend_tokens(rb, s, token, amount, reason),
        )

    def set_skill(
        self,
        user_id: str,
        skill: str,
        value: int,
        *,
        audience: str | None = None,
        key: str | None = None,
    ) -> Effects:
        """Set a skill value (clamped to 0..max_value)."""
        return self._run(
            "set_skill",
            user_id,
            audience,
            key,
            {"skill": skill, "value": value},
            lambda rb, s: pure_admin.admin_set_skill(rb, s, skill, value),
        )

    def add_skill(
        self,
        user_id: str,
        skill: str,
        amount: int,
        *,
        audience: str | None = None,
        key: str | None = None,
    ) -> Effects:
        """Add to a skill value (negative subtracts; clamped to 0..max_value)."""
        return self._run(
            "add_skill",
            user_id,
            audience,
            key,
            {"skill": skill, "amount": amount},
            lambda rb, s: pure_admin.admin_add_skill(rb, s, skill, amount),
        )

    def award_badge(
        self, user_id: str, badge: str, *, audience: str | None = None, key: str | None = None
    ) -> Effects:
        """Award a badge (a ready manual badge becomes awarded) and pay its reward."""
        return self._run(
            "award_badge",
            user_id,
            audience,
            key,
            {"badge": badge},
            lambda rb, s: pure_admin.admin_award_badge(rb, s, badge),
        )

    def complete_sub_step(
        self,
        user_id: str,
        path: str,
        step: str,
        sub_step: str,
        *,
        audience: str | None = None,
        key: str | None = None,
    ) -> Effects:
        """Complete a path sub-step that allows manual completion."""
        return self._run(
            "complete_sub_step",
            user_id,
            audience,
            key,
            {"path": path, "step": step, "sub_step": sub_step},
            lambda rb, s: pure_admin.admin_complete_sub_step(rb, s, path, step, sub_step),
        )

    def unlock_gate(
        self, user_id: str, gate: str, *, audience: str | None = None, key: str | None = None
    ) -> GateResult:
        """Unlock a gate once by spending its token; a repeat reports ``already_unlocked``."""

        def step(rb: Rulebook, state: BuddyState) -> tuple[Outcome, dict[str, Any]]:
            outcome, already = pure_admin.admin_unlock_gate(rb, state, gate)
            return outcome, {"already_unlocked": already}

        effects, extra = self._engine._admin_call(
            "unlock_gate", user_id, audience, key, {"gate": gate}, step
        )
        return GateResult(bool(extra.get("already_unlocked", False)), effects)

    def evolve(
        self, user_id: str, *, audience: str | None = None, key: str | None = None
    ) -> Effects:
        """Same as :meth:`Engine.evolve`."""
        return self._engine.evolve(user_id, audience, key=key)
