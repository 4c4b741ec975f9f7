"""Invariants every rulebook must keep, and the driver that plays a history to check them.

A *step invariant* is a callable taking one :class:`Step` (one event applied to one buddy:
``event``, ``before``, ``after``, ``effects`` and ``history``, the buddy's events so far). It
passes by returning (anything but ``False``) and fails by raising :class:`AssertionError` or
returning ``False``. The built-in ones are listed in :data:`STEP_INVARIANTS`; write your own
the same way and pass them to :func:`~buddyrules.testing.check.check_rulebook`::

    def no_more_than_300_coins_a_day(step: Step) -> None:
        today = [s for s in step.buddy_steps if step.local_date(s.event) == step.local_date()]
        earned = sum(s.effects.coins for s in today)
        assert earned <= 300, f"{step.after.user_id} earned {earned} coins on {step.local_date()}"

Two invariants look at a whole history rather than one step: :func:`split_resume_equivalent`
(stopping after any event, saving every buddy as JSON and going on gives the same results)
and :func:`replay_is_idempotent` (sending a history twice through an
:class:`~buddyrules.service.Engine` changes nothing the second time).

:func:`play` is the driver: it applies a history with the pure engine from fresh buddies and,
by default, plays an *attentive admin* who awards every manual badge as soon as it is ready
and evolves a buddy as soon as its next stage is ready (when the rulebook does not evolve
automatically), so that histories can reach every badge and stage.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from functools import cached_property
from typing import Any
from zoneinfo import ZoneInfo

from buddyrules.effects import Effects
from buddyrules.engine import Outcome, evaluate, new_buddy
from buddyrules.engine.admin import admin_award_badge, admin_evolve
from buddyrules.engine.evaluate import buddy_zone
from buddyrules.engine.periods import local_date, period_index, week_index
from buddyrules.errors import BuddyRulesError
from buddyrules.events import parse_timestamp
from buddyrules.rulebook.compiled import Rulebook
from buddyrules.state import BuddyState

__all__ = [
    "HISTORY_INVARIANTS",
    "STEP_INVARIANTS",
    "AdminStep",
    "InvariantViolation",
    "Playthrough",
    "Step",
    "StepInvariant",
    "badges_awarded_at_most_once",
    "balances_never_negative",
    "caps_respected",
    "deterministic",
    "invariant_name",
    "manual_badges_need_an_admin",
    "no_evaluation_problems",
    "play",
    "replay_is_idempotent",
    "run_step_invariants",
    "split_resume_equivalent",
    "stage_in_range_and_monotonic",
    "streaks_bounded_by_active_periods",
]

BuddyId = tuple[str, str]  # (user_id, audience)


@dataclass(frozen=True, eq=False)
class Step:
    """One event applied to one buddy: what a step invariant sees.

    Attributes:
        rulebook: the rulebook being checked.
        index: the event's position in the whole history (0-based).
        event: the event as sent (wire shape: ``user_id``, ``type``, ``occurred_at``, ...).
        before: the buddy's state before the event.
        after: the buddy's state after it.
        effects: what the event changed.
        outcome: the full :class:`~buddyrules.Outcome` (ledger entries, notifications).
        earlier: this buddy's previous steps, oldest first.
    """

    rulebook: Rulebook
    index: int
    event: dict[str, Any]
    before: BuddyState
    after: BuddyState
    effects: Effects
    outcome: Outcome
    earlier: tuple[Step, ...] = ()

    @property
    def history(self) -> tuple[dict[str, Any], ...]:
        """The buddy's events so far, oldest first, ending with this step's event."""
        return (*(s.event for s in self.earlier), self.event)

    @property
    def buddy_steps(self) -> tuple[Step, ...]:
        """The buddy's steps so far, oldest first, ending with this step."""
        return (*self.earlier, self)

    @property
    def user_id(self) -> str:
        """The buddy's user."""
        return self.after.user_id

    @property
    def zone(self) -> ZoneInfo:
        """The timezone the buddy's periods use (its own, else the rulebook's)."""
        tz: ZoneInfo = buddy_zone(self.rulebook, self.after)
        return tz

    @cached_property
    def occurred_at(self) -> datetime:
        """When this step's event happened."""
        return parse_timestamp(self.event["occurred_at"])

    @cached_property
    def day(self) -> date:
        """The buddy's local calendar date of this step's event."""
        return local_date(self.occurred_at, self.zone)

    def local_date(self, event: Mapping[str, Any] | None = None) -> date:
        """The buddy's local calendar date of ``event`` (default: this step's event)."""
        if event is None or event is self.event:
            return self.day
        return local_date(parse_timestamp(event["occurred_at"]), self.zone)

    def period(self, kind: str, event: Mapping[str, Any] | None = None) -> int:
        """The index of the ``daily``/``weekly``/``monthly`` period of ``event`` (local)."""
        return period_index(kind, self.local_date(event))


@dataclass(frozen=True, eq=False)
class AdminStep:
    """An admin action the attentive admin of :func:`play` took after an event.

    ``action`` is ``"evolve"`` or ``"award_badge"``; ``detail`` names the stage or badge.
    """

    after_index: int
    action: str
    detail: str
    before: BuddyState
    after: BuddyState
    effects: Effects

    @property
    def user_id(self) -> str:
        """The buddy's user."""
        return self.after.user_id


@dataclass(frozen=True, eq=False)
class Playthrough:
    """A history applied by :func:`play`: every step in order, and the final states."""

    rulebook: Rulebook
    events: tuple[dict[str, Any], ...]
    entries: tuple[Step | AdminStep, ...]
    states: Mapping[BuddyId, BuddyState]
    timezones: Mapping[str, str | None] = field(default_factory=dict)

    @property
    def steps(self) -> tuple[Step, ...]:
        """The event steps, in history order."""
        return tuple(e for e in self.entries if isinstance(e, Step))

    @property
    def admin_steps(self) -> tuple[AdminStep, ...]:
        """The admin actions, in order."""
        return tuple(e for e in self.entries if isinstance(e, AdminStep))


class InvariantViolation(AssertionError):
    """An invariant broke on a history.

    Attributes:
        invariant: the invariant's name.
        message: what went wrong.
        step_index: the index of the event it broke at (None for whole-history invariants).
        playthrough: the history as played up to the failure (None if it never started).
    """

    def __init__(
        self,
        invariant: str,
        message: str,
        *,
        step_index: int | None = None,
        playthrough: Playthrough | None = None,
    ) -> None:
        where = f" at event #{step_index}" if step_index is not None else ""
        super().__init__(f"{invariant}{where}: {message}")
        self.invariant = invariant
        self.message = message
        self.step_index = step_index
        self.playthrough = playthrough


StepInvariant = Callable[[Step], object]


def invariant_name(invariant: Callable[..., object]) -> str:
    """A readable name for an invariant (its ``__name__``, else its ``repr``)."""
    name = getattr(invariant, "__name__", None)
    return name if isinstance(name, str) and name != "<lambda>" else repr(invariant)


# -- the driver ------------------------------------------------------------------------------


def _audience_of(rulebook: Rulebook, event: Mapping[str, Any]) -> str:
    audience = event.get("audience")
    if isinstance(audience, str):
        return audience
    default = rulebook.default_audience
    if default is None:
        raise ValueError(f"event {event!r} has no audience and the rulebook has several")
    return default


def play(
    rulebook: Rulebook,
    events: Iterable[Mapping[str, Any]],
    *,
    timezones: Mapping[str, str | None] | None = None,
    admin: bool = True,
    resume_at: int | None = None,
    resume_rulebook: Rulebook | None = None,
) -> Playthrough:
    """Apply ``events`` in order with the pure engine, from fresh buddies.

    Each ``(user_id, audience)`` gets a buddy from :func:`~buddyrules.new_buddy` (hatched at
    its first event, with the timezone given for the user in ``timezones``). With ``admin``
    the attentive admin awards ready manual badges and evolves ready buddies after every
    event. With ``resume_at=k``, every state is saved as JSON and loaded back before event
    ``k`` and the rest runs on ``resume_rulebook`` (e.g. an unpickled copy), as a process
    that stops and another that resumes would.

    An exception out of the engine is a bug (the engine must never raise on a valid event):
    it becomes an :class:`InvariantViolation` of ``engine_never_raises``.
    """
    tzs = dict(timezones or {})
    rb = rulebook
    history = tuple(dict(e) for e in events)
    states: dict[BuddyId, BuddyState] = {}
    earlier: dict[BuddyId, tuple[Step, ...]] = {}
    entries: list[Step | AdminStep] = []

    def partial() -> Playthrough:
        return Playthrough(rulebook, history, tuple(entries), dict(states), tzs)

    for index, event in enumerate(history):
        if resume_at is not None and index == resume_at:
            states = {
                k: BuddyState.model_validate_json(v.model_dump_json()) for k, v in states.items()
            }
            rb = resume_rulebook if resume_rulebook is not None else rb
        try:
            audience = _audience_of(rb, event)
            key = (str(event["user_id"]), audience)
            state = states.get(key)
            if state is None:
                state = new_buddy(
                    rb,
                    key[0],
                    audience,
                    timezone=tzs.get(key[0]),
                    hatched_at=parse_timestamp(event["occurred_at"]),
                )
            outcome = evaluate(rb, state, event)
        except Exception as exc:  # the engine must not raise on a valid event: report it
            raise InvariantViolation(
                "engine_never_raises",
                f"evaluate raised {type(exc).__name__}: {exc}",
                step_index=index,
                playthrough=partial(),
            ) from exc
        step = Step(
            rulebook=rb,
            index=index,
            event=event,
            before=state,
            after=outcome.state,
            effects=outcome.effects,
            outcome=outcome,
            earlier=earlier.get(key, ()),
        )
        entries.append(step)
        earlier[key] = (*step.earlier, step)
        states[key] = outcome.state
        if admin:
            _attentive_admin(rb, key, index, states, entries, outcome, partial)
    return partial()


def _attentive_admin(
    rb: Rulebook,
    key: BuddyId,
    index: int,
    states: dict[BuddyId, BuddyState],
    entries: list[Step | AdminStep],
    outcome: Outcome,
    partial: Callable[[], Playthrough],
) -> None:
    """Award every ready manual badge, then evolve while the next stage is ready."""
    evolution_ready = outcome.effects.evolution_ready
    for _ in range(len(rb.badges) + len(rb.stages) + 1):
        state = states[key]
        try:
            if state.badges_ready:
                badge = state.badges_ready[0]
                result = admin_award_badge(rb, state, badge)
                action, detail = "award_badge", badge
            elif evolution_ready and not rb.auto_evolve and state.stage < len(rb.stages):
                result = admin_evolve(rb, state)
                action, detail = "evolve", f"stage {state.stage + 1}"
            else:
                return
        except BuddyRulesError as exc:
            raise InvariantViolation(
                "admin_agrees_with_effects",
                f"the effects said it was ready, but the admin call was refused: {exc.message}",
                step_index=index,
                playthrough=partial(),
            ) from exc
        entries.append(AdminStep(index, action, detail, state, result.state, result.effects))
        states[key] = result.state
        evolution_ready = result.effects.evolution_ready


# -- step invariants -------------------------------------------------------------------------


def balances_never_negative(step: Step) -> None:
    """Coins and tokens never go below zero, and an event moves them only as its effects say.

    Events only credit coins; a token goes down only by the streak freezes the effects
    report (SPEC §4: balances go down only through admin spends, gate unlocks and freezes).
    """
    before, after, effects = step.before, step.after, step.effects
    if after.coins < 0:
        raise AssertionError(f"coin balance is negative: {after.coins}")
    if effects.coins < 0:
        raise AssertionError(f"effects report a negative coin credit: {effects.coins}")
    if after.coins != before.coins + effects.coins:
        raise AssertionError(
            f"coins went from {before.coins} to {after.coins}, "
            f"but the effects credit {effects.coins}"
        )
    credits = effects.token_amounts()
    debits: dict[str, int] = {}
    by_key = {s.key: s for s in step.rulebook.streaks}
    for change in effects.streaks:
        if change.get("change") == "frozen":
            streak = by_key.get(str(change.get("streak")))
            if streak is not None and streak.freeze_token is not None:
                used = int(change.get("freezes_used", 0))
                debits[streak.freeze_token] = debits.get(streak.freeze_token, 0) + used
    for token in sorted(set(before.tokens) | set(after.tokens) | set(credits)):
        was, now = before.tokens.get(token, 0), after.tokens.get(token, 0)
        if now < 0:
            raise AssertionError(f"token {token!r} balance is negative: {now}")
        expected = was + credits.get(token, 0) - debits.get(token, 0)
        if now != expected:
            raise AssertionError(
                f"token {token!r} went from {was} to {now}, but the effects credit "
                f"{credits.get(token, 0)} and freezes used {debits.get(token, 0)}"
            )


def _rule_credits(step: Step, currency: str, rule_key: str) -> int:
    reason = f"rule:{rule_key}"
    return sum(
        e.amount for e in step.outcome.ledger if e.currency == currency and e.reason == reason
    )


def caps_respected(step: Step) -> None:
    """No rule credits more than its ``daily_cap`` per local day or ``weekly_cap`` per ISO week,
    and no coin rule pays more times than its ``total_limit``.

    Days and weeks are local to the buddy's timezone (else the rulebook's), from
    :mod:`buddyrules.engine.periods`; credits are read from the ledger entries the engine wrote.
    """
    steps = step.buddy_steps
    day = step.day
    week = week_index(day)
    days = [s.day for s in steps]
    rules: list[tuple[str, str, str, int | None, int | None, int | None]] = [
        ("coin rule", "coins", r.key, r.daily_cap, r.weekly_cap, r.total_limit)
        for r in step.rulebook.coin_rules
    ]
    rules += [
        ("token rule", f"token:{r.token}", r.key, r.daily_cap, r.weekly_cap, None)
        for r in step.rulebook.token_rules
    ]
    for kind, currency, key, daily, weekly, total in rules:
        if daily is None and weekly is None and total is None:
            continue
        if _rule_credits(step, currency, key) <= 0:
            continue
        credits = [_rule_credits(s, currency, key) for s in steps]
        if daily is not None:
            used = sum(c for c, d in zip(credits, days, strict=True) if d == day)
            if used > daily:
                raise AssertionError(
                    f"{kind} {key!r} credited {used} on {day} ({step.zone.key}), "
                    f"above its daily_cap of {daily}"
                )
        if weekly is not None:
            used = sum(c for c, d in zip(credits, days, strict=True) if week_index(d) == week)
            if used > weekly:
                raise AssertionError(
                    f"{kind} {key!r} credited {used} in the ISO week of {day} ({step.zone.key}), "
                    f"above its weekly_cap of {weekly}"
                )
        if total is not None:
            times = sum(1 for c in credits if c > 0)
            if times > total:
                raise AssertionError(
                    f"{kind} {key!r} paid {times} times, above its total_limit {total}"
                )


def badges_awarded_at_most_once(step: Step) -> None:
    """A badge is awarded (or made ready) at most once per buddy and never revoked."""
    before, after, effects = step.before, step.after, step.effects
    if len(set(after.badges)) != len(after.badges):
        raise AssertionError(f"duplicate badges: {list(after.badges)}")
    lost = [b for b in before.badges if b not in after.badges]
    if lost:
        raise AssertionError(f"badges revoked by an event: {lost}")
    again = [b for b in effects.badges_awarded if b in before.badges]
    if again:
        raise AssertionError(f"badges awarded a second time: {again}")
    if len(set(effects.badges_awarded)) != len(effects.badges_awarded):
        raise AssertionError(f"badge awarded twice in one event: {list(effects.badges_awarded)}")
    expected = (*before.badges, *effects.badges_awarded)
    if after.badges != expected:
        raise AssertionError(
            f"badges changed from {list(before.badges)} to {list(after.badges)}, but the effects "
            f"award {list(effects.badges_awarded)}"
        )
    ready_again = [
        b for b in effects.badges_ready if b in before.badges_ready or b in before.badges
    ]
    if ready_again:
        raise AssertionError(f"badges made ready a second time: {ready_again}")
    both = [b for b in after.badges_ready if b in after.badges]
    if both:
        raise AssertionError(f"badges both ready and awarded: {both}")


def manual_badges_need_an_admin(step: Step) -> None:
    """A ``manual`` badge is never awarded by an event (only reported ready)."""
    manual = {b.key for b in step.rulebook.badges if b.mode == "manual"}
    awarded = [b for b in step.after.badges if b in manual and b not in step.before.badges]
    if awarded:
        raise AssertionError(
            f"manual badge(s) {awarded} awarded by a {step.event.get('type')!r} event "
            "without an admin call"
        )


def stage_in_range_and_monotonic(step: Step) -> None:
    """The stage stays within 1..number of stages, never goes back, and moves at most one
    stage per event (and not at all without ``auto_evolve``)."""
    stages = len(step.rulebook.stages)
    was, now = step.before.stage, step.after.stage
    if not 1 <= now <= max(stages, 1):
        raise AssertionError(f"stage {now} is outside 1..{stages}")
    if now < was:
        raise AssertionError(f"stage went backwards from {was} to {now}")
    if step.rulebook.auto_evolve:
        if now > was + 1:
            raise AssertionError(f"stage jumped from {was} to {now} in one event")
    else:
        if now != was:
            raise AssertionError(f"stage moved from {was} to {now} without auto_evolve or an admin")


def streaks_bounded_by_active_periods(step: Step) -> None:
    """A streak's count and best never exceed the number of periods with activity.

    Activity is an event of one of the streak's types; periods are local to the buddy.
    """
    audience = step.after.audience
    for streak in step.rulebook.streaks:
        state = step.after.streaks.get(streak.key)
        if state is None:
            continue
        if not 0 <= state.count <= state.best:
            raise AssertionError(
                f"streak {streak.key!r}: count {state.count} is outside 0..best ({state.best})"
            )
        if streak.audience is not None and streak.audience != audience:
            active = 0
        else:
            active = len(
                {
                    period_index(streak.period, s.day)
                    for s in step.buddy_steps
                    if s.event["type"] in streak.events
                }
            )
        if state.best > active:
            raise AssertionError(
                f"streak {streak.key!r} reached {state.best} but the buddy was active in only "
                f"{active} {streak.period} period(s)"
            )


def _fingerprint(outcome: Outcome) -> str:
    return json.dumps(
        {
            "state": outcome.state.model_dump_json(),
            "effects": outcome.effects.to_wire(),
            "ledger": [[e.currency, e.amount, e.balance_after, e.reason] for e in outcome.ledger],
            "notifications": [[n.type, n.payload] for n in outcome.notifications],
        },
        default=str,
    )


def deterministic(step: Step) -> None:
    """Evaluating the same event on the same state again gives byte-identical output."""
    again = evaluate(step.rulebook, step.before, step.event)
    first, second = _fingerprint(step.outcome), _fingerprint(again)
    if first != second:
        raise AssertionError(
            "evaluating the same event on the same state twice gave different results:\n"
            f"  first:  {first[:400]}\n  second: {second[:400]}"
        )


def no_evaluation_problems(step: Step) -> None:
    """No rule's condition or amount failed to evaluate (opt-in: a missing or mistyped
    property is legal at run time, but a rulebook may want to rule it out)."""
    problems = [f"{p.get('rule')}: {p.get('reason')}" for p in step.effects.problems]
    if problems:
        raise AssertionError("evaluation problems: " + "; ".join(problems))


#: The built-in step invariants, run by ``check_rulebook`` on every step.
STEP_INVARIANTS: tuple[StepInvariant, ...] = (
    balances_never_negative,
    caps_respected,
    badges_awarded_at_most_once,
    manual_badges_need_an_admin,
    stage_in_range_and_monotonic,
    streaks_bounded_by_active_periods,
    deterministic,
)


def run_step_invariants(
    playthrough: Playthrough, invariants: Sequence[StepInvariant] = STEP_INVARIANTS
) -> None:
    """Run step invariants on every event step; raise :class:`InvariantViolation` on the first
    one that fails (an ``AssertionError``, ``False``, or any other exception it raises)."""
    for step in playthrough.steps:
        for invariant in invariants:
            name = invariant_name(invariant)
            try:
                result = invariant(step)
            except AssertionError as exc:
                message = str(exc) or "assertion failed"
                raise InvariantViolation(
                    name, message, step_index=step.index, playthrough=playthrough
                ) from exc
            except Exception as exc:
                raise InvariantViolation(
                    name,
                    f"the invariant raised {type(exc).__name__}: {exc}",
                    step_index=step.index,
                    playthrough=playthrough,
                ) from exc
            if result is False:
                raise InvariantViolation(
                    name, "returned False", step_index=step.index, playthrough=playthrough
                )
    for entry in playthrough.admin_steps:
        _check_admin_step(entry, playthrough)


def _check_admin_step(entry: AdminStep, playthrough: Playthrough) -> None:
    """Admin actions keep the state invariants too (stage, balances, badges)."""
    was, now = entry.before, entry.after
    problems: list[str] = []
    if now.stage < was.stage or now.stage > max(len(playthrough.rulebook.stages), 1):
        problems.append(f"stage moved from {was.stage} to {now.stage}")
    if now.coins < 0 or any(v < 0 for v in now.tokens.values()):
        problems.append("a balance went negative")
    if len(set(now.badges)) != len(now.badges) or not set(was.badges) <= set(now.badges):
        problems.append(f"badges changed from {list(was.badges)} to {list(now.badges)}")
    if problems:
        raise InvariantViolation(
            "admin_actions_keep_invariants",
            f"admin {entry.action} ({entry.detail}): " + "; ".join(problems),
            step_index=entry.after_index,
            playthrough=playthrough,
        )


# -- whole-history invariants ----------------------------------------------------------------


def _entry_signature(entry: Step | AdminStep) -> str:
    return json.dumps(
        [entry.after.model_dump_json(), entry.effects.to_wire(include_trace=False)], default=str
    )


def split_resume_equivalent(
    rulebook: Rulebook,
    events: Sequence[Mapping[str, Any]],
    *,
    at: int,
    timezones: Mapping[str, str | None] | None = None,
    admin: bool = True,
    resume_rulebook: Rulebook | None = None,
    baseline: Playthrough | None = None,
) -> None:
    """Playing a history straight through equals stopping before event ``at``, saving every
    buddy as JSON, loading them back (and switching to ``resume_rulebook``, e.g. an unpickled
    copy of the rulebook) and playing the rest. Raises :class:`InvariantViolation`."""
    straight = baseline or play(rulebook, events, timezones=timezones, admin=admin)
    resumed = play(
        rulebook,
        events,
        timezones=timezones,
        admin=admin,
        resume_at=at,
        resume_rulebook=resume_rulebook,
    )
    name = "split_resume_equivalent"
    for a, b in zip(straight.entries, resumed.entries, strict=False):
        if _entry_signature(a) != _entry_signature(b):
            index = a.index if isinstance(a, Step) else a.after_index
            raise InvariantViolation(
                name,
                f"resuming before event #{at} from saved states changed the result of event "
                f"#{index}:\n  straight: {_entry_signature(a)[:400]}\n"
                f"  resumed:  {_entry_signature(b)[:400]}",
                step_index=index,
                playthrough=straight,
            )
    if len(straight.entries) != len(resumed.entries):
        raise InvariantViolation(
            name,
            f"resuming before event #{at} changed the admin actions taken "
            f"({len(straight.entries)} entries straight, {len(resumed.entries)} resumed)",
            playthrough=straight,
        )


def _wire_without_replay(effects: Effects) -> str:
    data = effects.to_wire(include_trace=False)
    data.pop("replayed", None)
    return json.dumps(data, default=str)


def replay_is_idempotent(
    rulebook: Rulebook,
    events: Sequence[Mapping[str, Any]],
    *,
    timezones: Mapping[str, str | None] | None = None,
    core: Playthrough | None = None,
) -> None:
    """Send a history through an :class:`~buddyrules.service.Engine` (in-memory store) twice.

    The first pass must give the same effects as the pure engine (``core``: the history as
    played by :func:`play`, computed without admin actions when not given; events of a buddy
    after an admin action of ``core`` are not compared, since the Engine run has none). The
    second pass must replay every event (``replayed``, the stored effects) and change
    nothing: states, ledger and quota stay as they were. Raises :class:`InvariantViolation`.
    """
    from buddyrules.service import Engine
    from buddyrules.storage.memory import MemoryStore

    name = "replay_is_idempotent"
    tzs = dict(timezones or {})
    core = core or play(rulebook, events, timezones=tzs, admin=False)
    if not events:
        return
    start = parse_timestamp(events[0]["occurred_at"])
    engine = Engine(store=MemoryStore(), clock=lambda: start)
    engine.publish(rulebook)

    def fail(message: str, index: int | None = None) -> InvariantViolation:
        return InvariantViolation(name, message, step_index=index, playthrough=core)

    def send(index: int) -> Effects:
        try:
            return engine.send(dict(events[index]))
        except Exception as exc:  # a valid event must be accepted: report, with the history
            raise fail(f"Engine.send raised {type(exc).__name__}: {exc}", index) from exc

    hatched: set[BuddyId] = set()
    for index, event in enumerate(events):
        key = (str(event["user_id"]), _audience_of(rulebook, event))
        if key not in hatched:
            hatched.add(key)
            try:
                engine.hatch(key[0], key[1], timezone=tzs.get(key[0]))
            except Exception as exc:
                raise fail(f"Engine.hatch raised {type(exc).__name__}: {exc}", index) from exc

    first = [send(i) for i in range(len(events))]
    administered: set[str] = set()
    for entry in core.entries:
        if isinstance(entry, AdminStep):
            administered.add(f"{entry.after.user_id}/{entry.after.audience}")
            continue
        step, effects = entry, first[entry.index]
        if f"{step.after.user_id}/{step.after.audience}" in administered:
            continue
        if _wire_without_replay(effects) != _wire_without_replay(step.effects):
            raise fail(
                "Engine.send and the pure evaluate disagree:\n"
                f"  Engine.send: {_wire_without_replay(effects)[:400]}\n"
                f"  evaluate:    {_wire_without_replay(step.effects)[:400]}",
                step.index,
            )
    states = [s.model_dump_json() for s in engine.export_states()]
    ledger = len(engine.ledger())
    quota = engine.quota_used()
    for index, effects in enumerate(first):
        again = send(index)
        if not again.replayed:
            raise fail("sending the same event id again was not reported as a replay", index)
        if _wire_without_replay(again) != _wire_without_replay(effects):
            raise fail(
                "the replay returned different effects:\n"
                f"  first:  {_wire_without_replay(effects)[:400]}\n"
                f"  replay: {_wire_without_replay(again)[:400]}",
                index,
            )
    if [s.model_dump_json() for s in engine.export_states()] != states:
        raise fail("sending the history a second time changed buddy states")
    if len(engine.ledger()) != ledger:
        raise fail("sending the history a second time wrote ledger entries")
    if engine.quota_used() != quota:
        raise fail("sending the history a second time used quota")


#: The whole-history invariants ``check_rulebook`` runs on every history, by name.
HISTORY_INVARIANTS: tuple[str, ...] = ("split_resume_equivalent", "replay_is_idempotent")
