"""The scratch state of one evaluation: a working copy of the buddy plus what changed.

Mechanics read and write a :class:`Turn`; :meth:`Turn.finish` freezes it into a new
:class:`BuddyState` and an :class:`Effects`, together with the ledger entries and outbox
notifications the service writes in the same transaction. Money moves only through
:meth:`credit_coins`, :meth:`credit_token`, :meth:`debit_token` and :meth:`debit_coins` so
that every change has its ledger entry.

Speed: a turn runs once per event, so it copies only what every event changes (counters,
token balances); the other parts of the state (skills, streaks, rule usage, paths, decay
marks) are shared with the input state and copied on first write through the ``set_*``
methods. The input state is never mutated either way.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from operator import itemgetter
from types import MappingProxyType
from typing import Any, ClassVar, NamedTuple, TypeVar, overload

from buddyrules.effects import Effects, build_effects, frozen_builder
from buddyrules.engine.context import EventContext
from buddyrules.events import Event
from buddyrules.rulebook.compiled import Reward, Rulebook
from buddyrules.state import BuddyState, PathState, RuleUsage, StreakState, trusted_state

__all__ = ["LedgerEntry", "Notification", "Outcome", "Records", "Turn"]


# LedgerEntry and Notification are named tuples rather than frozen dataclasses: several of
# each are built per event, and a frozen dataclass costs several times more to construct.
class LedgerEntry(NamedTuple):
    """One coin or token movement. ``currency`` is ``"coins"`` or ``"token:<key>"``."""

    currency: str
    amount: int
    balance_after: int
    reason: str


class Notification(NamedTuple):
    """An outbox message to deliver after commit (SPEC §6 names, e.g. ``badge.awarded``)."""

    type: str
    payload: dict[str, Any]


#: A ledger row as a turn writes it: ``(currency, amount, balance_after, reason)``.
LedgerRow = tuple[str, int, int, str]
#: A notification as a turn writes it: ``(type, keys, *values)`` with the payload's keys and
#: values, or ``(type, None, payload)`` with the payload itself.
NoteRow = tuple[Any, ...]

_R = TypeVar("_R")
_tuple_new = tuple.__new__  # builds a named tuple without its Python-level __new__


def ledger_entry(row: LedgerRow) -> LedgerEntry:
    """The :class:`LedgerEntry` of a turn's ledger row."""
    return _tuple_new(LedgerEntry, row)


def notification(row: NoteRow) -> Notification:
    """The :class:`Notification` of a turn's notification row."""
    keys = row[1]
    payload = row[2] if keys is None else dict(zip(keys, row[2:], strict=True))
    return _tuple_new(Notification, (row[0], payload))


class Records(Sequence[_R]):
    """An immutable sequence of records, built from a turn's rows when first read.

    Most callers of ``evaluate`` keep the state and the effects and never read the ledger
    entries or notifications (a replay, a simulation, a property test), so the outcome
    keeps the compact rows the turn wrote and builds the :class:`LedgerEntry` and
    :class:`Notification` records (and the payload dicts) only when they are read. It
    behaves as the tuple of those records: same length, items, iteration, ``==`` and
    hash, and pickles as that tuple.
    """

    __slots__ = ("_built", "_make", "_rows")

    def __init__(self, rows: Sequence[Any], make: Callable[[Any], _R]) -> None:
        self._rows = rows
        self._make = make
        self._built: tuple[_R, ...] | None = None

    def items(self) -> tuple[_R, ...]:
        """The records as a tuple (built once)."""
        built = self._built
        if built is None:
            built = self._built = tuple(map(self._make, self._rows))
        return built

    def __len__(self) -> int:
        return len(self._rows)

    @overload
    def __getitem__(self, index: int) -> _R: ...
    @overload
    def __getitem__(self, index: slice) -> tuple[_R, ...]: ...
    def __getitem__(self, index: int | slice) -> _R | tuple[_R, ...]:
        return self.items()[index]

    def __iter__(self) -> Iterator[_R]:
        return iter(self.items())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Records):
            return self.items() == other.items()
        if isinstance(other, tuple):
            return self.items() == other
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.items())

    def __repr__(self) -> str:
        return repr(self.items())

    def __reduce__(self) -> tuple[type[tuple[_R, ...]], tuple[tuple[_R, ...]]]:
        return tuple, (self.items(),)


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one pure step produced: the new state, the effects, and what to record.

    ``ledger`` and ``notifications`` are sequences of :class:`LedgerEntry` and
    :class:`Notification` (tuples, or :class:`Records` that build them on first read).
    """

    state: BuddyState
    effects: Effects
    trace: tuple[dict[str, Any], ...] | None = None
    ledger: Sequence[LedgerEntry] = ()
    notifications: Sequence[Notification] = ()


#: The key, in a state's ``__dict__`` (not a field: never serialised, ignored by ``==``),
#: under which ``evaluate`` records that the state's badge and path conditions are settled.
_SETTLED = "_settled"


#: The state fields the badge and path conditions (and their passes) depend on: a settlement
#: holds for a state whose values of these equal the ones it was made on.
_COVERED = itemgetter(
    "coins",
    "stage",
    "tokens",
    "skills",
    "streaks",
    "counters",
    "badges",
    "badges_ready",
    "paths",
    "audience",
)


def settled_carry(rulebook: Rulebook, state: BuddyState) -> int | None:
    """The parts changed after the last settlement, if ``state`` is settled under ``rulebook``.

    None when the state was not produced by ``evaluate`` under this rulebook, or was copied
    with a change since (then every condition must be tested). The record holds the covered
    values themselves; comparing tuples checks identity first, so the usual case (the very
    containers of the state) costs no deep comparison.
    """
    mark = state.__dict__.get(_SETTLED)
    if mark is not None and mark[0] == rulebook.version and mark[2] == _COVERED(state.__dict__):
        carry: int = mark[1]
        return carry
    return None


_build_outcome = frozen_builder(Outcome)
#: What a per-event list of a turn holds until its first item: the (immutable) empty tuple,
#: so that an event that awards nothing builds no list. Writers replace it with a list
#: first (``if not turn.x: turn.x = []``); appending to it by mistake raises.
_NOTHING: Any = ()
#: A turn's namespace until one is built: empty (so ``if ns:`` finds no live namespace) and
#: read-only (writing into it by mistake raises).
_NO_NAMESPACE: Any = MappingProxyType({})
_records = Records


#: The keys of the notifications a turn writes as rows (see NoteRow).
_COINS_KEYS = ("amount", "balance", "reason")
_TOKEN_KEYS = ("token", "amount", "balance", "reason")
_LEVELED_KEYS = ("skill", "level", "level_before", "value")
_AWARDED_KEYS = ("badge", "reason")


class Turn:
    """Working copy of a buddy during one evaluation (never shared between threads)."""

    __slots__ = (
        "_decay_owned",
        "_paths_owned",
        "_skills_owned",
        "_streaks_owned",
        "_tokens_changed",
        "_usage_owned",
        "awarded_now",
        "badges",
        "base",
        "clipped",
        "coins",
        "coins_credited",
        "counters",
        "decay_applied",
        "dirty",
        "evolution_became_ready",
        "evolution_notified",
        "evolution_ready",
        "evolved_to",
        "explain",
        "gates",
        "grants",
        "ledger",
        "matched",
        "milestones",
        "notifications",
        "ns",
        "path_changes",
        "paths",
        "problems",
        "ready",
        "ready_now",
        "rule_usage",
        "rulebook",
        "skill_changes",
        "skills",
        "stage",
        "streak_changes",
        "streaks",
        "token_credits",
        "tokens",
        "trace",
        "visible",
    )

    rulebook: Rulebook
    base: BuddyState
    explain: bool
    coins: int
    tokens: dict[str, int]
    skills: dict[str, int]
    badges: set[str]
    ready: tuple[str, ...]
    counters: dict[str, int]
    streaks: dict[str, StreakState]
    rule_usage: dict[str, RuleUsage]
    paths: dict[str, PathState]
    gates: tuple[str, ...]
    grants: list[tuple[str, int, bool]] | None
    decay_applied: dict[str, int]
    stage: int
    evolution_notified: int
    coins_credited: int
    token_credits: dict[str, int]
    awarded_now: list[str]
    ready_now: list[str]
    milestones: list[dict[str, Any]]
    skill_changes: dict[str, dict[str, Any]]
    streak_changes: list[dict[str, Any]]
    path_changes: list[dict[str, Any]]
    problems: list[dict[str, Any]]
    trace: list[dict[str, Any]]
    ledger: list[LedgerRow]
    notifications: list[NoteRow] | None
    evolution_ready: bool
    evolution_became_ready: bool
    evolved_to: int | None
    matched: bool
    clipped: bool
    visible: bool
    ns: dict[str, Any]
    dirty: int | None

    def __init__(self, rulebook: Rulebook, state: BuddyState, explain: bool = False) -> None:
        self.rulebook = rulebook
        self.base = state
        self.explain = explain
        # The fields straight from the state's dict: an attribute of a pydantic model costs
        # a __getattr__ hook (see BaseModel), a dict read does not.
        b = state.__dict__
        self.coins = b["coins"]
        # Every declared token is present (conditions read ``tokens.<key>`` directly).
        tokens = b["tokens"]
        zeros = rulebook.token_zeros
        # A buddy holding every declared token (and no other) needs no zeros merged in.
        self.tokens = dict(tokens) if tokens.keys() == zeros.keys() else {**zeros, **tokens}
        self._tokens_changed = False
        self.skills = b["skills"]
        self._skills_owned = False
        self.badges = set(b["badges"])
        self.ready = b["badges_ready"]
        self.counters = dict(b["counters"])
        self.streaks = b["streaks"]
        self._streaks_owned = False
        self.rule_usage = b["rule_usage"]
        self._usage_owned = False
        self.paths = b["paths"]
        self._paths_owned = False
        self.gates = b["gates"]
        self.decay_applied = b["decay_applied"]
        self._decay_owned = False
        self.stage = b["stage"]
        self.evolution_notified = b["evolution_notified"]
        self.coins_credited = 0
        self.token_credits = {}
        # Rarely written in an event: the shared empty tuple until then (see _NOTHING).
        self.awarded_now = _NOTHING
        self.ready_now = _NOTHING
        self.milestones = _NOTHING
        self.skill_changes = {}
        self.streak_changes = _NOTHING
        self.path_changes = _NOTHING
        self.problems = _NOTHING
        self.trace = [] if explain else _NOTHING
        self.ledger = []
        self.notifications = []
        self.evolution_ready = False
        self.evolution_became_ready = False
        self.evolved_to = None
        self.matched = False
        self.clipped = False
        self.visible = False
        self.ns = _NO_NAMESPACE  # built by build_namespace / open_namespace when needed
        self.dirty = None
        # A replay's per-rule record, else None (not recorded): see plans.py, _Writer.grant.
        self.grants = None

    #: The fields that describe one event's changes (not the buddy): :meth:`next_event`
    #: resets them. ``__init__`` sets the same values inline (it runs once per evaluate).
    PER_EVENT: ClassVar[tuple[str, ...]] = (
        "coins_credited",
        "token_credits",
        "awarded_now",
        "ready_now",
        "milestones",
        "skill_changes",
        "streak_changes",
        "path_changes",
        "problems",
        "trace",
        "ledger",
        "notifications",
        "evolution_ready",
        "evolution_became_ready",
        "evolved_to",
        "matched",
        "clipped",
        "visible",
        "_tokens_changed",
    )

    def next_event(self) -> None:
        """Start the next event of a replay on this turn (see ``engine/replay.py``).

        The buddy's working copy stays (it was made current by the previous event); what
        described the previous event's changes starts empty again. ``grants``, when
        recorded, is emptied too; ``notifications`` stays None if the replay asked for none.
        A container that is still empty is kept (most are, most events): the previous
        event's results stay valid only until this call.
        """
        self.coins_credited = 0
        if self.token_credits:
            self.token_credits = {}
        if self.awarded_now:
            self.awarded_now = _NOTHING
        if self.ready_now:
            self.ready_now = _NOTHING
        if self.milestones:
            self.milestones = _NOTHING
        if self.skill_changes:
            self.skill_changes = {}
        if self.streak_changes:
            self.streak_changes = _NOTHING
        if self.path_changes:
            self.path_changes = _NOTHING
        if self.problems:
            self.problems = _NOTHING
        if self.trace:
            self.trace = [] if self.explain else _NOTHING
        if self.ledger:
            self.ledger = []
        if self.notifications:
            self.notifications = []
        self.evolution_ready = False
        self.evolution_became_ready = False
        self.evolved_to = None
        self.matched = False
        self.clipped = False
        self.visible = False
        self._tokens_changed = False
        if self.grants:
            self.grants = []

    @classmethod
    def start(cls, rulebook: Rulebook, state: BuddyState, *, explain: bool = False) -> Turn:
        """Start a turn on ``state`` (the input is never mutated)."""
        return cls(rulebook, state, explain)

    # -- the namespace conditions read -------------------------------------------------

    def build_namespace(self, event: dict[str, Any], audience: str) -> dict[str, Any]:
        """Build the condition namespace once; mechanics keep it current as they change."""
        rb = self.rulebook
        skills = self.skills
        streaks = self.streaks
        skills_ns = {}
        for key, points_per_level, max_level in rb.namespace_skills:
            value = skills.get(key, 0)
            level = value // points_per_level
            skills_ns[key] = {"value": value, "level": level if level < max_level else max_level}
        streaks_ns = {}
        for key in rb.namespace_streaks:
            s = streaks.get(key)
            streaks_ns[key] = (
                {"count": s.count, "best": s.best} if s is not None else {"count": 0, "best": 0}
            )
        self.ns = {
            "event": event,
            "props": event["properties"],
            "coins": self.coins,
            "tokens": self.tokens,
            "skills": skills_ns,
            "badges": self.badges,
            "streaks": streaks_ns,
            "counters": self.counters,
            "stage": self.stage,
            "audience": audience,
        }
        return self.ns

    def open_namespace(self, event: Event, ctx: EventContext) -> dict[str, Any]:
        """Build the namespace for ``event``: for the interpreter, and for a plan that needs
        one.

        The event part holds ``occurred_at`` when the turn is traced (the trace shows it) or
        an expression of the rulebook can read it (:attr:`Rulebook.reads_event_time`).
        """
        event_ns: dict[str, Any] = {
            "type": ctx.type,
            "audience": ctx.audience,
            "user_id": event.user_id,
        }
        if self.explain or self.rulebook.reads_event_time:
            event_ns["occurred_at"] = ctx.occurred_at.isoformat()
        event_ns["properties"] = event.properties
        return self.build_namespace(event_ns, ctx.audience)

    # -- copy on write -------------------------------------------------------------------

    def set_streak(self, key: str, value: StreakState) -> None:
        """Replace one streak's state."""
        if not self._streaks_owned:
            self.streaks = dict(self.streaks)
            self._streaks_owned = True
        self.streaks[key] = value

    def set_usage(self, key: str, value: RuleUsage) -> None:
        """Replace one rule's cap/limit usage."""
        if not self._usage_owned:
            self.rule_usage = dict(self.rule_usage)
            self._usage_owned = True
        self.rule_usage[key] = value

    def set_path(self, key: str, value: PathState) -> None:
        """Replace one path's progress."""
        if not self._paths_owned:
            self.paths = dict(self.paths)
            self._paths_owned = True
        self.paths[key] = value

    def set_decay_applied(self, key: str, period: int) -> None:
        """Remember the last period a decay rule was applied in."""
        if not self._decay_owned:
            self.decay_applied = dict(self.decay_applied)
            self._decay_owned = True
        self.decay_applied[key] = period

    def append(self, name: str, item: Any) -> None:
        """Append ``item`` to the per-event list ``name`` (``awarded_now``, ``milestones``,
        ``streak_changes``, ``path_changes``, ``problems``...), which holds the shared empty
        tuple until its first item (see ``_NOTHING``). Event plans write the same inline."""
        items = getattr(self, name)
        if not items:
            items = []
            setattr(self, name, items)
        items.append(item)

    def add_gate(self, key: str) -> None:
        """Mark a gate unlocked."""
        self.gates = (*self.gates, key)

    def notify(self, kind: str, payload: dict[str, Any]) -> None:
        """Queue an outbox notification (written by the service after commit).

        ``notifications`` is None on a replay that asked for none (``engine/replay.py``).
        """
        notifications = self.notifications
        if notifications is not None:
            notifications.append((kind, None, payload))

    # -- money ---------------------------------------------------------------------------

    def credit_coins(self, amount: int, reason: str) -> None:
        """Credit coins (amount > 0) with a ledger entry and a ``coins.earned`` message."""
        if amount <= 0:
            return
        coins = self.coins + amount
        self.coins = coins
        self.coins_credited += amount
        self.visible = True
        ns = self.ns
        if ns:
            ns["coins"] = coins
        self.ledger.append(("coins", amount, coins, reason))
        notifications = self.notifications
        if notifications is not None:
            notifications.append(("coins.earned", _COINS_KEYS, amount, coins, reason))

    def debit_coins(self, amount: int, reason: str) -> None:
        """Debit coins; the caller has checked the balance."""
        self.coins -= amount
        if self.ns:
            self.ns["coins"] = self.coins
        self.visible = True
        self.ledger.append(("coins", -amount, self.coins, reason))
        self.notify("coins.spent", {"amount": amount, "balance": self.coins, "reason": reason})

    def credit_token(self, key: str, amount: int, reason: str) -> int:
        """Credit a token, clipped to its ``max_balance``; return what was credited."""
        if amount <= 0:
            return 0
        tokens = self.tokens
        balance = tokens.get(key, 0)
        max_balance = self.rulebook.tokens[key].max_balance
        if max_balance is not None:
            room = max_balance - balance
            if amount > room:
                self.clipped = True
                if room <= 0:
                    return 0
                amount = room
        balance += amount
        tokens[key] = balance
        self._tokens_changed = True
        credits = self.token_credits
        credits[key] = credits.get(key, 0) + amount
        self.visible = True
        self.ledger.append((f"token:{key}", amount, balance, reason))
        notifications = self.notifications
        if notifications is not None:
            notifications.append(("token.earned", _TOKEN_KEYS, key, amount, balance, reason))
        return amount

    def debit_token(self, key: str, amount: int, reason: str) -> None:
        """Debit a token; the caller has checked the balance."""
        balance = self.tokens.get(key, 0) - amount
        self.tokens[key] = balance
        self._tokens_changed = True
        self.visible = True
        self.ledger.append((f"token:{key}", -amount, balance, reason))
        self.notify(
            "token.spent", {"token": key, "amount": amount, "balance": balance, "reason": reason}
        )

    def set_skill(self, key: str, value: int, reason: str, *, message: str) -> None:
        """Set a skill value (clamped to 0..max_value), recording value and level changes."""
        skill = self.rulebook.skills[key]
        value = max(0, min(skill.max_value, value))
        before = self.skills.get(key, 0)
        if value == before:
            return
        if not self._skills_owned:
            self.skills = dict(self.skills)
            self._skills_owned = True
        self.skills[key] = value
        level_before = skill.level_of(before)
        level = skill.level_of(value)
        change = self.skill_changes.get(key)
        if change is None:
            change = {"skill": key, "before": before, "level_before": level_before}
            self.skill_changes[key] = change
        change["value"] = value
        change["delta"] = value - change["before"]
        change["level"] = level
        self.visible = True
        if self.ns:
            self.ns["skills"][key] = {"value": value, "level": level}
        if message == "skill.decayed":
            self.notify(
                message, {"skill": key, "value": value, "value_before": before, "level": level}
            )
        elif level > level_before and self.notifications is not None:
            self.notifications.append(
                ("skill.leveled", _LEVELED_KEYS, key, level, level_before, value)
            )

    # -- badges --------------------------------------------------------------------------

    def award_badge(self, key: str, reason: str) -> bool:
        """Attach a badge (once) and pay its reward. Returns False if already awarded."""
        if key in self.badges:
            return False
        self.badges.add(key)
        if key in self.ready:
            self.ready = tuple(k for k in self.ready if k != key)
        self.append("awarded_now", key)
        self.visible = True
        if self.notifications is not None:
            self.notifications.append(("badge.awarded", _AWARDED_KEYS, key, reason))
        badge = self.rulebook.badges_by_key.get(key)
        if badge is not None:
            self.pay(badge.reward, f"badge:{key}")
        return True

    def mark_ready(self, key: str) -> None:
        """Report a manual badge ready (once)."""
        if key in self.ready or key in self.badges:
            return
        self.ready = (*self.ready, key)
        self.append("ready_now", key)
        self.visible = True
        self.notify("badge.ready", {"badge": key})

    def pay(self, reward: Reward, reason: str) -> None:
        """Pay a reward: coins, token credits (clipped to max_balance), then its badge.

        A manual badge named by a reward is made ready, not awarded: manual badges are only
        ever awarded by an admin.
        """
        if reward.coins:
            self.credit_coins(reward.coins, reason)
        for key, amount in reward.tokens:
            self.credit_token(key, amount, reason)
        if reward.badge is not None:
            badge = self.rulebook.badges_by_key.get(reward.badge)
            if badge is not None and badge.mode == "manual":
                self.mark_ready(reward.badge)
            else:
                self.award_badge(reward.badge, reason)

    # -- what changed (incremental badge and path passes) ---------------------------------

    def rewards_changed(self) -> int:
        """The watched parts rewards can change (coins, tokens, badges) that differ from the
        base state now, as a :class:`~buddyrules.rulebook._deps.DependencyIndex` mask."""
        index = self.rulebook.dependencies
        base = self.base
        changed = 0
        if index.watch_coins and self.coins != base.coins:
            changed |= index.watch_coins
        if self._tokens_changed:
            base_tokens = base.tokens
            tokens = self.tokens
            for key, bit in index.watch_tokens:
                if tokens.get(key, 0) != base_tokens.get(key, 0):
                    changed |= bit
        if len(self.badges) != len(base.badges):  # a turn only adds badges
            changed |= index.watch_badges
        return changed

    def note_rewards(self) -> None:
        """Mark what rewards changed as changed, if watching (see :meth:`rewards_changed`).

        Called after a path step or a badge paid its reward, so that the conditions tested
        later in the same event see those parts as changed.
        """
        if self.dirty is not None:
            self.dirty |= self.rewards_changed()

    # -- results -------------------------------------------------------------------------

    def problem(self, rule: str, reason: str) -> None:
        """Record an evaluation problem (a failed expression); never raised."""
        self.append("problems", {"rule": rule, "reason": reason})

    def state_values(
        self,
        tokens: dict[str, int],
        badges: tuple[str, ...],
        last_event_at: datetime | None,
        events_applied: int,
    ) -> dict[str, Any]:
        """Every field of the buddy's state as this turn holds it, for ``trusted_state``
        (not settled: see :meth:`finish`). The turn's own containers are used as they are;
        the five fields a turn never changes are the base's (a copy of the base's dict,
        then what a turn can change: cheaper than writing out all twenty fields)."""
        values = self.base.__dict__.copy()
        values["stage"] = self.stage
        values["coins"] = self.coins
        values["tokens"] = tokens
        values["skills"] = self.skills
        values["badges"] = badges
        values["badges_ready"] = self.ready
        values["counters"] = self.counters
        values["streaks"] = self.streaks
        values["rule_usage"] = self.rule_usage
        values["paths"] = self.paths
        values["gates"] = self.gates
        values["decay_applied"] = self.decay_applied
        values["evolution_notified"] = self.evolution_notified
        values["last_event_at"] = last_event_at
        values["events_applied"] = events_applied
        values[_SETTLED] = None
        return values

    def finish(
        self,
        *,
        counters_visible: bool = False,
        last_event_at: datetime | None = None,
        count_event: bool = False,
        debug: bool = True,
        carry: int | None = None,
    ) -> Outcome:
        """Freeze the turn into a new state and its effects.

        ``carry`` is given by ``evaluate`` only: every badge and path condition was settled
        in this step, except those depending on the parts in ``carry`` (a mask of
        :class:`~buddyrules.rulebook._deps.DependencyIndex` bits, changed after they were
        tested). The new state then remembers that (see :func:`settled_carry`), and the
        next ``evaluate`` tests only conditions whose inputs changed. Any other step leaves
        the new state unsettled, so the next event tests everything.
        """
        b = self.base.__dict__
        if self._tokens_changed:
            base_tokens = b["tokens"]
            if len(self.tokens) == len(base_tokens):
                # Every declared token is already in the base (a buddy that has held each
                # one): the turn's own dict is the new balances, zeros included.
                tokens = self.tokens
            else:
                tokens = {k: v for k, v in self.tokens.items() if v or k in base_tokens}
        else:
            tokens = b["tokens"]
        awarded = self.awarded_now
        badges = (*b["badges"], *awarded) if awarded else b["badges"]
        values = self.state_values(
            tokens,
            badges,
            last_event_at if last_event_at is not None else b["last_event_at"],
            b["events_applied"] + 1 if count_event else b["events_applied"],
        )
        if carry is not None:
            values[_SETTLED] = (self.rulebook.version, carry, _COVERED(values))
        state = trusted_state(values)
        debug_reason: str | None = None
        if debug and not (self.visible or counters_visible):
            debug_reason = (
                "rewards_capped" if self.matched and self.clipped else "no_matching_rules"
            )
        trace = tuple(self.trace) if self.explain else None
        token_credits = self.token_credits
        # "key:amount" per token credited (one, most often: then no comprehension)
        credits: tuple[str, ...] = ()
        if token_credits:
            if len(token_credits) == 1:
                for key, amount in token_credits.items():
                    credits = (f"{key}:{amount}",)
            else:
                credits = tuple([f"{k}:{v}" for k, v in token_credits.items()])
        skill_changes = self.skill_changes
        # Positionally, without the frozen dataclass __init__ (see frozen_builder). Most
        # lists are empty: ``()`` skips a call.
        effects = build_effects(
            self.coins_credited,
            tuple(awarded) if awarded else (),
            tuple(self.ready_now) if self.ready_now else (),
            credits,
            self.evolution_ready,
            tuple(self.milestones) if self.milestones else (),
            debug_reason,
            tuple(skill_changes.values()) if skill_changes else (),
            tuple(self.streak_changes) if self.streak_changes else (),
            self.evolved_to,
            tuple(self.path_changes) if self.path_changes else (),
            tuple(self.problems) if self.problems else (),
            False,
            self.rulebook.version,
            trace,
        )
        ledger = self.ledger
        notifications = self.notifications
        return _build_outcome(
            state,
            effects,
            trace,
            _records(ledger, ledger_entry) if ledger else (),
            _records(notifications, notification) if notifications else (),
        )
