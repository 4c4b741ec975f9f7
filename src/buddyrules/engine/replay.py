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

from buddyrules.engine.context import EventContext
from buddyrules.engine.evaluate import check_event
from buddyrules.engine.periods import local_day, zone
from buddyrules.engine.plans import plan_for, plans_of
from buddyrules.engine.turn import Turn
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
        audience = state.audience
        self._tz = zone(state.timezone) if state.timezone else rulebook.period_tz
        self._with_time = rulebook.reads_event_time
        self._plans = plans_of(rulebook)  # the rulebook's table, shared by every replay
        self._awarded: list[str] = []
        self._applied = 0
        self._last = state.last_event_at
        # Which token keys the state keeps: a chain of evaluate calls keeps a key once some
        # event ended with it non-zero (Turn.finish), so a replay tracks the same.
        self._tokens = set(state.tokens)
        # No namespace until a plan needs one (Turn.open_namespace); once built it stays
        # live (the mechanics keep it current) and only its event part changes per event.
        turn = Turn(rulebook, state, False)
        # One context, updated per event (nothing keeps a context past its event).
        self._ctx = EventContext("", audience, datetime.min.replace(tzinfo=UTC), 1)
        if record_grants:
            turn.grants = []
        if not notifications:
            turn.notifications = None  # what would be sent is not built at all
        self._turn = turn

    def apply(self, event: Event) -> Turn:
        """Apply one event (``evaluate``'s checks); return the turn, which describes
        this event's changes until the next call: ``coins_credited``, ``awarded_now``,
        ``ready_now``, ``milestones``, ``skill_changes``, ``problems``, ``ledger``..."""
        occurred_at, audience = check_event(event, self._base)
        turn = self._turn
        if self._applied:
            turn.next_event()
        event_type = event.type
        ns = turn.ns
        if ns:
            event_ns = ns["event"]
            event_ns["type"] = event_type
            if self._with_time:
                event_ns["occurred_at"] = occurred_at.isoformat()
            props = event.properties
            event_ns["properties"] = props
            ns["props"] = props
        ctx = self._ctx
        ctx.move_to(event_type, occurred_at, local_day(occurred_at, self._tz))
        counters = turn.counters
        counters[event_type] = counters.get(event_type, 0) + 1
        plan = self._plans.get(event_type)
        if plan is None:
            # The full plan whatever the rulebook's incremental passes: full badge and path
            # passes give the same results (tests/engine/test_engine_incremental.py).
            plan = plan_for(self._rulebook, event_type)
        plan(turn, event, audience, ctx.day, ctx)
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
        values = turn.state_values(
            {k: v for k, v in turn.tokens.items() if k in kept},
            (*base.badges, *self._awarded),
            self._last,
            base.events_applied + self._applied,
        )
        # Copies: the turn keeps working on its own containers if more events come.
        for name in _MUTABLE:
            values[name] = dict(values[name])
        return trusted_state(values)


#: The state's containers a turn changes in place once it owns them (Turn.set_* copy on
#: first write, then write into their copy).
_MUTABLE = ("skills", "counters", "streaks", "rule_usage", "paths", "decay_applied")
