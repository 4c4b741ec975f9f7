"""``evaluate``: one event through the fixed evaluation order (SPEC §3). Pure.

The order, stated once, here:

1. ``counters[type] += 1`` (every accepted type, declared in rules or not);
2. streaks bound to this type: burn / freeze for missed periods, then tick;
3. coin rules, then skill rules, then token rules, each in rulebook order;
4. path sub-steps and steps;
5. badges, repeated until nothing changes;
6. evolution readiness, and with ``auto_evolve`` one stage.

Steps 2-6 run in this order either through the interpreter below (``explain=True``, and
rulebooks that use the incremental passes) or through an event plan, which writes out the
same steps for one event type (:mod:`buddyrules.engine.plans`, checked against the
interpreter by the test suite).

No clock, no I/O, no randomness: the same inputs give byte-identical outputs.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from buddyrules.engine.badges import evaluate_badges
from buddyrules.engine.context import EventContext
from buddyrules.engine.evolution import evaluate_evolution
from buddyrules.engine.paths import evaluate_paths
from buddyrules.engine.periods import local_day, zone
from buddyrules.engine.plans import _PLANS as _plans
from buddyrules.engine.plans import plan_for
from buddyrules.engine.rules import apply_coin_rules, apply_skill_rules, apply_token_rules
from buddyrules.engine.streaks import apply_streaks
from buddyrules.engine.turn import Outcome, Turn, settled_carry
from buddyrules.errors import ValidationFailed
from buddyrules.events import Event
from buddyrules.rulebook._deps import ALWAYS, DependencyIndex
from buddyrules.rulebook.compiled import Rulebook
from buddyrules.state import BuddyState, PathState

__all__ = ["buddy_zone", "check_event", "evaluate", "new_buddy"]


def buddy_zone(rulebook: Rulebook, state: BuddyState) -> Any:
    """The timezone periods are computed in: the buddy's own, else the rulebook's."""
    return zone(state.timezone) if state.timezone else rulebook.tz


def new_buddy(
    rulebook: Rulebook,
    user_id: str,
    audience: str | None = None,
    *,
    timezone: str | None = None,
    hatched_at: datetime | None = None,
) -> BuddyState:
    """A fresh stage-1 buddy pinned to ``rulebook.version``.

    ``audience`` may be omitted when the rulebook has exactly one. Raises
    :class:`ValidationFailed` for an unknown audience or timezone.
    """
    if audience is None:
        audience = rulebook.default_audience
        if audience is None:
            raise ValidationFailed(
                "audience is required: the rulebook configures several",
                {"fields": {"audience": "required"}},
            )
    elif audience not in rulebook.audiences:
        raise ValidationFailed(
            f"unknown audience {audience!r}", {"fields": {"audience": "not configured"}}
        )
    if timezone is not None:
        try:
            zone(timezone)
        except Exception as exc:  # zoneinfo raises several types for bad names
            raise ValidationFailed(
                f"unknown timezone {timezone!r}", {"fields": {"timezone": str(exc)}}
            ) from None
    if hatched_at is not None and hatched_at.tzinfo is None:
        raise ValidationFailed(
            "hatched_at must be timezone-aware", {"fields": {"hatched_at": "naive datetime"}}
        )
    # A path's first step is open from the hatch (unless it has its own unlock condition),
    # so a buddy's first event does not report it as a change.
    paths = {
        path.key: PathState(unlocked=(path.steps[0].key,))
        for path in rulebook.paths
        if (path.audience is None or path.audience == audience) and path.steps[0].unlock is None
    }
    return BuddyState(
        user_id=user_id,
        audience=audience,
        rulebook_version=rulebook.version,
        timezone=timezone,
        hatched_at=hatched_at,
        paths=paths,
    )


def check_event(event: Event, state: BuddyState) -> tuple[datetime, str]:
    """The event's ``occurred_at`` and audience (the buddy's when omitted), after checking
    that it can be applied to ``state``; raises :class:`ValidationFailed` otherwise."""
    occurred_at = event.occurred_at
    if occurred_at is None:
        raise ValidationFailed(
            "occurred_at is required by evaluate (the pure core reads no clock)",
            {"fields": {"occurred_at": "required"}},
        )
    b = state.__dict__  # a dict read costs less than a pydantic attribute
    if event.user_id != b["user_id"]:
        raise ValidationFailed(
            f"event is for user {event.user_id!r}, state is user {state.user_id!r}",
            {"fields": {"user_id": "does not match the buddy"}},
        )
    audience = event.audience
    if audience is None:
        return occurred_at, b["audience"]
    if audience != b["audience"]:
        raise ValidationFailed(
            f"event audience {audience!r} does not match the buddy's {state.audience!r}",
            {"fields": {"audience": "does not match the buddy"}},
        )
    return occurred_at, audience


def evaluate(
    rulebook: Rulebook,
    state: BuddyState,
    event: Event | Mapping[str, Any],
    *,
    explain: bool = False,
) -> Outcome:
    """Apply one event to a buddy state and return the new state and the effects.

    ``event`` is an :class:`Event` or a dict (snake or camel case) and must carry
    ``occurred_at`` (the service fills it from its clock; the core reads none). An omitted
    audience is the buddy's. Registration and quota are the service's business: an
    unregistered type only bumps its counter.
    """
    ev = event if type(event) is Event else Event.coerce(event)
    occurred_at, audience = check_event(ev, state)
    event_type = ev.type
    timezone = state.__dict__["timezone"]
    day = local_day(occurred_at, zone(timezone) if timezone else rulebook.period_tz)
    turn = Turn(rulebook, state, explain)

    # 1. counters
    counters = turn.counters
    counters[event_type] = counters.get(event_type, 0) + 1
    index = rulebook.dependencies
    watching = index.worthwhile
    if not (explain or watching):
        # Steps 2-6 as one function written for this event type's rules (see plans.py).
        plan = _plans.get(id(rulebook))
        step = plan.get(event_type) if plan is not None else None
        if step is None:
            step = plan_for(rulebook, event_type)
        step(turn, ev, audience, day, None)
        last = state.__dict__["last_event_at"]
        return turn.finish(
            last_event_at=occurred_at if last is None or occurred_at > last else last,
            count_event=True,
        )
    ctx = EventContext(event_type, audience, occurred_at, day)
    if explain:
        # The interpreter's conditions read the namespace (plans read the turn itself and
        # build one only if some expression needs it).
        turn.open_namespace(ev, ctx)
        # 2. streaks
        streaks = rulebook.streaks_by_type.get(event_type)
        if streaks:
            apply_streaks(turn, streaks, ctx)
        # 3. coin, skill, token rules
        coin_rules = rulebook.coin_rules_by_type.get(event_type)
        if coin_rules:
            apply_coin_rules(turn, coin_rules, ctx)
        skill_rules = rulebook.skill_rules_by_type.get(event_type)
        if skill_rules:
            apply_skill_rules(turn, skill_rules, ctx)
        token_rules = rulebook.token_rules_by_type.get(event_type)
        if token_rules:
            apply_token_rules(turn, token_rules, ctx)
    else:
        # Steps 2-3 through the event type's rules-only plan (see plans.py).
        plan_for(rulebook, event_type, rules_only=True)(turn, ev, audience, day, ctx)
        if not turn.ns:  # the interpreter's passes below read the namespace
            turn.open_namespace(ev, ctx)
    # Steps 4 and 5 test only the conditions whose inputs changed when the input state
    # was settled by an earlier evaluate under this rulebook (see _changed_by_rules).
    if watching:
        if not explain:
            carried = settled_carry(rulebook, state)
            if carried is not None:
                turn.dirty = _changed_by_rules(turn, state, event_type, carried, index)
        coins, badges, stage = turn.coins, len(turn.badges), turn.stage
        tokens = [turn.tokens.get(key, 0) for key, _ in index.watch_tokens]
    # 4. paths
    if rulebook.paths:
        evaluate_paths(turn, audience)
    # 5. badges
    if rulebook.badges:
        evaluate_badges(turn, audience)
    # 6. evolution
    if len(rulebook.stages) > 1:
        evaluate_evolution(turn)

    last = state.last_event_at
    return turn.finish(
        last_event_at=occurred_at if last is None or occurred_at > last else last,
        count_event=True,
        carry=_changed_late(turn, index, coins, tokens, badges, stage) if watching else None,
    )


def _changed_by_rules(
    turn: Turn, base: BuddyState, event_type: str, carried: int, index: DependencyIndex
) -> int:
    """The watched state parts steps 1-3 changed, plus those carried over, as a bit mask.

    A badge or path condition that reads only the buddy's state and cannot fail (see
    :class:`~buddyrules.rulebook._deps.DependencyIndex`) was tested at the end of the
    previous evaluate and acted upon if it held. If none of the parts it reads changed
    since (and none is carried: changed after it was tested), it still gives the same
    answer, so it need not be tested again.
    """
    dirty = carried | ALWAYS | index.watch_counters.get(event_type, 0) | turn.rewards_changed()
    if turn.skill_changes and index.watch_skills:
        watch = index.watch_skills
        for key in turn.skill_changes:
            dirty |= watch.get(key, 0)
    streaks = turn.streaks
    if streaks is not base.streaks and index.watch_streaks:
        base_streaks = base.streaks
        for key, bit in index.watch_streaks:
            if streaks.get(key) is not base_streaks.get(key):
                dirty |= bit
    return dirty


def _changed_late(
    turn: Turn, index: DependencyIndex, coins: int, tokens: list[int], badges: int, stage: int
) -> int:
    """The watched parts steps 4-6 changed (rewards, awards, evolution): the next carry.

    A condition tested in step 4 or 5 may read a part that a later reward or the evolution
    changed in the same event; it was not tested on the final value, so the next evaluate
    must test it whatever that event changes.
    """
    late = 0
    if turn.coins != coins:
        late |= index.watch_coins
    if len(turn.badges) != badges:
        late |= index.watch_badges
    if turn.stage != stage:
        late |= index.watch_stage
    if index.watch_tokens:
        current = turn.tokens
        for (key, bit), before in zip(index.watch_tokens, tokens, strict=True):
            if current.get(key, 0) != before:
                late |= bit
    return late
