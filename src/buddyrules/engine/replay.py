"""Replaying one buddy's events on one working copy: ``evaluate`` over a history, cheaper.

``evaluate`` is a pure step: it copies what it changes, builds a new immutable state and a
full effects record, and leaves its input untouched. A replay of a recorded history (what
``simulate`` does for every buddy) does not need the states in between, only what each
event did. :class:`BuddyReplay` therefore starts one :class:`~buddyrules.engine.turn.Turn`
on the first state and applies every event to it in turn, through the same event plans
``evaluate`` runs (:mod:`buddyrules.engine.plans`), resetting only what describes one event
(:meth:`Turn.next_event`). The final :meth:`BuddyReplay.state` equals the state a chain of
``evaluate`` calls returns, and each event's changes equal that call's effects and ledger;
``tests/engine/test_engine_replay.py`` checks both on generated histories.

It is not a public API: it hands out the live turn, which is only valid until the next
event.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from buddyrules.engine.context import EventContext
from buddyrules.engine.periods import zone
from buddyrules.engine.plans import plan_for
from buddyrules.engine.turn import Turn
from buddyrules.errors import ValidationFailed
from buddyrules.events import Event
from buddyrules.rulebook.compiled import Rulebook
from buddyrules.state import BuddyState, trusted_state

__all__ = ["BuddyReplay"]


class BuddyReplay:
    """One buddy's events applied in order to a single working copy of its state.

    ``record_grants`` makes each event's turn list the grants an ``explain=True`` trace
    reports (``turn.grants``: clipped coin and token rules, crediting skill rules).
    ``notifications=False`` builds no outbox notifications (``turn.notifications`` is None):
    a simulation sends none.
    """

    __slots__ = (
        "_applied",
        "_audience",
        "_awarded",
        "_base",
        "_ctx",
        "_event_ns",
        "_last",
        "_plans",
        "_rulebook",
        "_tokens",
        "_turn",
        "_tz",
        "_with_time",
    )

    def __init__(
        self,
        rulebook: Rulebook,
        state: BuddyState,
        *,
        record_grants: bool = False,
        notifications: bool = True,
    ):
        self._rulebook = rulebook
        self._base = state
        self._audience = state.audience
        self._tz = zone(state.timezone) if state.timezone else rulebook.period_tz
        self._with_time = rulebook.reads_event_time
        self._plans: dict[str, Any] = {}
        self._awarded: list[str] = []
        self._applied = 0
        self._last = state.last_event_at
        # Which token keys the state keeps: a chain of evaluate calls keeps a key once some
        # event ended with it non-zero (Turn.finish), so a replay tracks the same.
        self._tokens = set(state.tokens)
        turn = Turn(rulebook, state, False)
        # The event part of the namespace, as evaluate builds it (same keys, same order),
        # kept and updated in place: the user and audience are the buddy's for every event.
        event_ns: dict[str, Any] = {"type": "", "audience": self._audience}
        event_ns["user_id"] = state.user_id
        if self._with_time:
            event_ns["occurred_at"] = ""
        event_ns["properties"] = {}
        self._event_ns = event_ns
        turn.build_namespace(event_ns, self._audience)
        # One context, updated per event (nothing keeps a context past its event).
        self._ctx = EventContext("", self._audience, datetime.min.replace(tzinfo=UTC), 1)
        if record_grants:
            turn.grants = []
        if not notifications:
            turn.notifications = None  # what would be sent is not built at all
        self._turn = turn

    def apply(self, event: Event) -> Turn:
        """Apply one event (same checks as ``evaluate``); return the turn, which describes
        this event's changes until the next call: ``coins_credited``, ``awarded_now``,
        ``ready_now``, ``milestones``, ``skill_changes``, ``problems``, ``ledger``..."""
        occurred_at = event.occurred_at
        if occurred_at is None:
            raise ValidationFailed(
                "occurred_at is required by evaluate (the pure core reads no clock)",
                {"fields": {"occurred_at": "required"}},
            )
        base = self._base
        if event.user_id != base.user_id:
            raise ValidationFailed(
                f"event is for user {event.user_id!r}, state is user {base.user_id!r}",
                {"fields": {"user_id": "does not match the buddy"}},
            )
        audience = self._audience
        if event.audience is not None and event.audience != audience:
            raise ValidationFailed(
                f"event audience {event.audience!r} does not match the buddy's {audience!r}",
                {"fields": {"audience": "does not match the buddy"}},
            )
        turn = self._turn
        if self._applied:
            turn.next_event()
        event_type = event.type
        ns = turn.ns
        event_ns = self._event_ns
        event_ns["type"] = event_type
        if self._with_time:
            event_ns["occurred_at"] = occurred_at.isoformat()
        props = event.properties
        event_ns["properties"] = props
        ns["props"] = props
        ctx = self._ctx
        ctx.type = event_type
        ctx.occurred_at = occurred_at
        day = occurred_at.astimezone(self._tz).toordinal()
        ctx.day = day
        ctx.week = (day - 1) // 7  # as EventContext computes it
        counters = turn.counters
        counters[event_type] = counters.get(event_type, 0) + 1
        plan = self._plans.get(event_type)
        if plan is None:
            # The full plan whatever the rulebook's incremental passes: full badge and path
            # passes give the same results (tests/engine/test_engine_incremental.py).
            plan = self._plans[event_type] = plan_for(self._rulebook, event_type)
        plan(turn, ctx, ns, audience)
        self._applied += 1
        last = self._last
        if last is None or occurred_at > last:
            self._last = occurred_at
        if turn.awarded_now:
            self._awarded.extend(turn.awarded_now)
        if turn._tokens_changed:
            kept = self._tokens
            tokens = turn.tokens
            if len(kept) < len(tokens):  # once every key is kept, nothing more to track
                for key, value in tokens.items():
                    if value:
                        kept.add(key)
        return turn

    def state(self) -> BuddyState:
        """The buddy's state after the events applied so far (as ``evaluate`` would give)."""
        turn = self._turn
        base = self._base
        if not self._applied:
            return base
        kept = self._tokens
        b = base.__dict__
        values = {
            "user_id": b["user_id"],
            "audience": b["audience"],
            "rulebook_version": b["rulebook_version"],
            "timezone": b["timezone"],
            "hatched_at": b["hatched_at"],
            "stage": turn.stage,
            "coins": turn.coins,
            # Copies: the turn keeps working on its own containers if more events come.
            "tokens": {k: v for k, v in turn.tokens.items() if k in kept},
            "skills": dict(turn.skills),
            "badges": (*base.badges, *self._awarded),
            "badges_ready": turn.ready,
            "counters": dict(turn.counters),
            "streaks": dict(turn.streaks),
            "rule_usage": dict(turn.rule_usage),
            "paths": dict(turn.paths),
            "gates": turn.gates,
            "decay_applied": dict(turn.decay_applied),
            "evolution_notified": turn.evolution_notified,
            "last_event_at": self._last,
            "events_applied": base.events_applied + self._applied,
            "_settled": None,
        }
        return trusted_state(values)
