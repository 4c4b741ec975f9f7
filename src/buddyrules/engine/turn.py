"""The scratch state of one evaluation: a mutable copy of the buddy plus what changed.

Mechanics read and write a :class:`Turn`; :meth:`Turn.finish` freezes it into a new
:class:`BuddyState` and an :class:`Effects`, together with the ledger entries and outbox
notifications the service writes in the same transaction. Money moves only through
:meth:`credit_coins`, :meth:`credit_token`, :meth:`debit_token` and :meth:`debit_coins` so
that every change has its ledger entry.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from buddyrules.effects import Effects
from buddyrules.rulebook.compiled import Reward, Rulebook
from buddyrules.state import BuddyState, PathState, RuleUsage, StreakState

__all__ = ["LedgerEntry", "Notification", "Outcome", "Turn"]


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    """One coin or token movement. ``currency`` is ``"coins"`` or ``"token:<key>"``."""

    currency: str
    amount: int
    balance_after: int
    reason: str


@dataclass(frozen=True, slots=True)
class Notification:
    """An outbox message to deliver after commit (SPEC §6 names, e.g. ``badge.awarded``)."""

    type: str
    payload: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one pure step produced: the new state, the effects, and what to record."""

    state: BuddyState
    effects: Effects
    trace: tuple[dict[str, Any], ...] | None = None
    ledger: tuple[LedgerEntry, ...] = ()
    notifications: tuple[Notification, ...] = ()


@dataclass(slots=True)
class Turn:
    """Mutable working copy of a buddy during one evaluation."""

    rulebook: Rulebook
    base: BuddyState
    explain: bool = False
    coins: int = 0
    tokens: dict[str, int] = field(default_factory=dict)
    skills: dict[str, int] = field(default_factory=dict)
    badges: set[str] = field(default_factory=set)
    badge_order: list[str] = field(default_factory=list)
    ready: set[str] = field(default_factory=set)
    ready_order: list[str] = field(default_factory=list)
    counters: dict[str, int] = field(default_factory=dict)
    streaks: dict[str, StreakState] = field(default_factory=dict)
    rule_usage: dict[str, RuleUsage] = field(default_factory=dict)
    paths: dict[str, PathState] = field(default_factory=dict)
    gates: list[str] = field(default_factory=list)
    decay_applied: dict[str, int] = field(default_factory=dict)
    stage: int = 1
    evolution_notified: int = 1
    # What changed (the effects):
    coins_credited: int = 0
    token_credits: dict[str, int] = field(default_factory=dict)
    awarded_now: list[str] = field(default_factory=list)
    ready_now: list[str] = field(default_factory=list)
    milestones: list[dict[str, Any]] = field(default_factory=list)
    skill_changes: dict[str, dict[str, Any]] = field(default_factory=dict)
    streak_changes: list[dict[str, Any]] = field(default_factory=list)
    path_changes: list[dict[str, Any]] = field(default_factory=list)
    problems: list[dict[str, Any]] = field(default_factory=list)
    trace: list[dict[str, Any]] = field(default_factory=list)
    ledger: list[LedgerEntry] = field(default_factory=list)
    notifications: list[Notification] = field(default_factory=list)
    evolution_ready: bool = False
    evolution_became_ready: bool = False
    evolved_to: int | None = None
    matched: bool = False
    clipped: bool = False
    visible: bool = False
    ns: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def start(cls, rulebook: Rulebook, state: BuddyState, *, explain: bool = False) -> Turn:
        """Copy the mutable parts of ``state`` (the input is never mutated)."""
        turn = cls(rulebook=rulebook, base=state, explain=explain)
        turn.coins = state.coins
        turn.tokens = dict(state.tokens)
        turn.skills = dict(state.skills)
        turn.badges = set(state.badges)
        turn.badge_order = list(state.badges)
        turn.ready = set(state.badges_ready)
        turn.ready_order = list(state.badges_ready)
        turn.counters = dict(state.counters)
        turn.streaks = dict(state.streaks)
        turn.rule_usage = dict(state.rule_usage)
        turn.paths = dict(state.paths)
        turn.gates = list(state.gates)
        turn.decay_applied = dict(state.decay_applied)
        turn.stage = state.stage
        turn.evolution_notified = state.evolution_notified
        return turn

    # -- the namespace conditions read -------------------------------------------------

    def build_namespace(self, event: dict[str, Any], audience: str) -> dict[str, Any]:
        """Build the condition namespace once; mechanics keep it current as they change."""
        rb = self.rulebook
        tokens = self.tokens
        for key in rb.tokens:
            tokens.setdefault(key, 0)
        skills_ns = {}
        for key, skill in rb.skills.items():
            value = self.skills.get(key, 0)
            skills_ns[key] = {"value": value, "level": skill.level_of(value)}
        streaks_ns = {}
        for st in rb.streaks:
            s = self.streaks.get(st.key)
            streaks_ns[st.key] = {"count": s.count if s else 0, "best": s.best if s else 0}
        self.ns = {
            "event": event,
            "props": event["properties"],
            "coins": self.coins,
            "tokens": tokens,
            "skills": skills_ns,
            "badges": self.badges,
            "streaks": streaks_ns,
            "counters": self.counters,
            "stage": self.stage,
            "audience": audience,
        }
        return self.ns

    # -- money ---------------------------------------------------------------------------

    def credit_coins(self, amount: int, reason: str) -> None:
        """Credit coins (amount > 0) with a ledger entry and a ``coins.earned`` message."""
        if amount <= 0:
            return
        self.coins += amount
        self.coins_credited += amount
        self.visible = True
        if self.ns:
            self.ns["coins"] = self.coins
        self.ledger.append(LedgerEntry("coins", amount, self.coins, reason))
        self.notifications.append(
            Notification(
                "coins.earned", {"amount": amount, "balance": self.coins, "reason": reason}
            )
        )

    def debit_coins(self, amount: int, reason: str) -> None:
        """Debit coins; the caller has checked the balance."""
        self.coins -= amount
        if self.ns:
            self.ns["coins"] = self.coins
        self.visible = True
        self.ledger.append(LedgerEntry("coins", -amount, self.coins, reason))
        self.notifications.append(
            Notification("coins.spent", {"amount": amount, "balance": self.coins, "reason": reason})
        )

    def credit_token(self, key: str, amount: int, reason: str) -> int:
        """Credit a token, clipped to its ``max_balance``; return what was credited."""
        if amount <= 0:
            return 0
        token = self.rulebook.tokens[key]
        balance = self.tokens.get(key, 0)
        if token.max_balance is not None:
            room = max(0, token.max_balance - balance)
            if amount > room:
                self.clipped = True
                amount = room
        if amount <= 0:
            return 0
        balance += amount
        self.tokens[key] = balance
        self.token_credits[key] = self.token_credits.get(key, 0) + amount
        self.visible = True
        self.ledger.append(LedgerEntry(f"token:{key}", amount, balance, reason))
        self.notifications.append(
            Notification(
                "token.earned",
                {"token": key, "amount": amount, "balance": balance, "reason": reason},
            )
        )
        return amount

    def debit_token(self, key: str, amount: int, reason: str) -> None:
        """Debit a token; the caller has checked the balance."""
        balance = self.tokens.get(key, 0) - amount
        self.tokens[key] = balance
        self.visible = True
        self.ledger.append(LedgerEntry(f"token:{key}", -amount, balance, reason))
        self.notifications.append(
            Notification(
                "token.spent",
                {"token": key, "amount": amount, "balance": balance, "reason": reason},
            )
        )

    def set_skill(self, key: str, value: int, reason: str, *, message: str) -> None:
        """Set a skill value (clamped to 0..max_value), recording value and level changes."""
        skill = self.rulebook.skills[key]
        value = max(0, min(skill.max_value, value))
        before = self.skills.get(key, 0)
        if value == before:
            return
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
            self.notifications.append(
                Notification(
                    message,
                    {"skill": key, "value": value, "value_before": before, "level": level},
                )
            )
        elif level > level_before:
            self.notifications.append(
                Notification(
                    "skill.leveled",
                    {"skill": key, "level": level, "level_before": level_before, "value": value},
                )
            )

    # -- badges --------------------------------------------------------------------------

    def award_badge(self, key: str, reason: str) -> bool:
        """Attach a badge (once) and pay its reward. Returns False if already awarded."""
        if key in self.badges:
            return False
        self.badges.add(key)
        self.badge_order.append(key)
        if key in self.ready:
            self.ready.discard(key)
            self.ready_order.remove(key)
        self.awarded_now.append(key)
        self.visible = True
        self.notifications.append(Notification("badge.awarded", {"badge": key, "reason": reason}))
        badge = self.rulebook.badges_by_key.get(key)
        if badge is not None:
            self.pay(badge.reward, f"badge:{key}")
        return True

    def mark_ready(self, key: str) -> None:
        """Report a manual badge ready (once)."""
        if key in self.ready or key in self.badges:
            return
        self.ready.add(key)
        self.ready_order.append(key)
        self.ready_now.append(key)
        self.visible = True
        self.notifications.append(Notification("badge.ready", {"badge": key}))

    def pay(self, reward: Reward, reason: str) -> None:
        """Pay a reward: coins, token credits (clipped to max_balance), then its badge."""
        if reward.coins:
            self.credit_coins(reward.coins, reason)
        for key, amount in reward.tokens:
            self.credit_token(key, amount, reason)
        if reward.badge is not None:
            self.award_badge(reward.badge, reason)

    # -- results -------------------------------------------------------------------------

    def problem(self, rule: str, reason: str) -> None:
        """Record an evaluation problem (a failed expression); never raised."""
        self.problems.append({"rule": rule, "reason": reason})

    def finish(
        self,
        *,
        counters_visible: bool = False,
        last_event_at: datetime | None = None,
        count_event: bool = False,
        debug: bool = True,
    ) -> Outcome:
        """Freeze the turn into a new state and its effects."""
        base = self.base
        streaks = self.streaks
        state = BuddyState.model_construct(
            user_id=base.user_id,
            audience=base.audience,
            rulebook_version=base.rulebook_version,
            timezone=base.timezone,
            hatched_at=base.hatched_at,
            stage=self.stage,
            coins=self.coins,
            tokens={k: v for k, v in self.tokens.items() if v or k in base.tokens},
            skills=self.skills,
            badges=tuple(self.badge_order),
            badges_ready=tuple(self.ready_order),
            counters=self.counters,
            streaks=streaks,
            rule_usage=self.rule_usage,
            paths=self.paths,
            gates=tuple(self.gates),
            decay_applied=self.decay_applied,
            evolution_notified=self.evolution_notified,
            last_event_at=last_event_at if last_event_at is not None else base.last_event_at,
            events_applied=base.events_applied + (1 if count_event else 0),
        )
        debug_reason: str | None = None
        if debug and not (self.visible or counters_visible):
            debug_reason = (
                "rewards_capped" if self.matched and self.clipped else "no_matching_rules"
            )
        effects = Effects(
            coins=self.coins_credited,
            badges_awarded=tuple(self.awarded_now),
            badges_ready=tuple(self.ready_now),
            tokens=tuple(f"{k}:{v}" for k, v in self.token_credits.items()),
            evolution_ready=self.evolution_ready,
            streak_milestones=tuple(self.milestones),
            debug_reason=debug_reason,
            skills=tuple(self.skill_changes.values()),
            streaks=tuple(self.streak_changes),
            evolved_to=self.evolved_to,
            paths=tuple(self.path_changes),
            problems=tuple(self.problems),
            rulebook_version=self.rulebook.version,
            trace=tuple(self.trace) if self.explain else None,
        )
        return Outcome(
            state=state,
            effects=effects,
            trace=tuple(self.trace) if self.explain else None,
            ledger=tuple(self.ledger),
            notifications=tuple(self.notifications),
        )
