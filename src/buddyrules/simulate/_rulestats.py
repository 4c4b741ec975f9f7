"""Per-rule statistics (fired, granted, clipped) without paying for a trace on every event.

What a rule credited is in the ledger (reason ``rule:<key>``; skill changes in the effects).
Whether a grant was clipped is only in the ``explain=True`` trace, which costs about a
quarter more per event. So each event is first evaluated without a trace and the clipping is
*decided* from what is known: a credit below the room left under the rule's caps cannot have
been clipped; a literal amount with no multiplier is the grant itself; a balance or skill
below its maximum after the event cannot have clipped anything. Only when that does not
decide (an expression amount that exactly filled a cap, a conditional rule at a full cap)
is the event evaluated again, from the same state, with ``explain=True`` and read from the
trace. Evaluation is pure, so the second run sees exactly what the first did; the test suite
checks this inference against tracing every event.

Clipping counts grants reduced by a daily or weekly cap, a token's ``max_balance`` or a
skill's ``max_value``; a coin rule whose ``total_limit`` is used up is not "clipped" (it no
longer applies).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

from buddyrules.engine.caps import clip_to_caps
from buddyrules.engine.context import EventContext
from buddyrules.engine.evaluate import buddy_zone
from buddyrules.engine.periods import local_date
from buddyrules.engine.turn import Turn
from buddyrules.events import Event
from buddyrules.rulebook.compiled import Rulebook
from buddyrules.state import BuddyState, RuleUsage

__all__ = ["Grant", "RuleProbes", "TypeProbe", "grants_from_trace"]

# (tag "kind:key", credited, clipped)
Grant = tuple[str, int, bool]
_ROOMY = 1 << 62


class _UsageView:
    """What :func:`clip_to_caps` reads from a turn: the rule usage before the event."""

    __slots__ = ("rule_usage",)

    def __init__(self, rule_usage: Mapping[str, RuleUsage]) -> None:
        self.rule_usage = rule_usage


def _room(
    rulebook: Rulebook,
    before: BuddyState,
    event: Event,
    audience: str,
    key: str,
    daily_cap: int | None,
    weekly_cap: int | None,
) -> int:
    """What a rule's caps let through before the event, by the engine's own cap logic."""
    occurred = cast(Any, event.occurred_at)
    day = local_date(occurred, buddy_zone(rulebook, before))
    ctx = EventContext.of(event.type, audience, occurred, day)
    view = cast(Turn, _UsageView(before.rule_usage))
    allowed, _ = clip_to_caps(view, key, _ROOMY, ctx, daily_cap=daily_cap, weekly_cap=weekly_cap)
    return allowed


def _below_caps(usage: RuleUsage | None, daily_cap: int | None, weekly_cap: int | None) -> bool:
    """Whether a rule that credited in this event stays below its caps afterwards."""
    if usage is None:
        return False
    return (daily_cap is None or usage.day_total < daily_cap) and (
        weekly_cap is None or usage.week_total < weekly_cap
    )


@dataclass(frozen=True, slots=True)
class _Coin:
    tag: str
    key: str
    reason: str  # the ledger reason of its credits
    audience: str | None
    literal: int | None  # the grant when it is known without evaluating (no multiplier)
    unconditional: bool
    daily_cap: int | None
    weekly_cap: int | None
    total_limit: int | None


@dataclass(frozen=True, slots=True)
class _Token:
    tag: str
    key: str
    reason: str
    token: str
    audience: str | None
    literal: int | None
    unconditional: bool
    daily_cap: int | None
    weekly_cap: int | None
    max_balance: int | None
    capped: bool


@dataclass(frozen=True, slots=True)
class _Skill:
    tag: str
    skill: str
    audience: str | None
    literal: int | None
    unconditional: bool
    max_value: int
    shared: bool  # another rule of this event type raises the same skill


@dataclass(frozen=True, slots=True)
class TypeProbe:
    """The rules one event type triggers, as the inference needs them."""

    coin: tuple[_Coin, ...]
    token: tuple[_Token, ...]
    skill: tuple[_Skill, ...]
    always_trace: bool
    skill_tags: Mapping[str, str]  # skill -> the tag of the one rule raising it here

    def clipped(
        self,
        rulebook: Rulebook,
        before: BuddyState,
        after: BuddyState,
        event: Event,
        audience: str,
        credits: Mapping[str, int],
        skill_deltas: Mapping[str, int],
    ) -> list[str] | None:
        """The tags of the rules whose grant was clipped, or None when a trace is needed.

        ``credits`` maps ledger reasons to what they credited in this event;
        ``skill_deltas`` maps skills to how much they grew.
        """
        if self.always_trace:
            return None
        for skill in skill_deltas:
            if skill not in self.skill_tags:
                return None  # raised by several rules (or none we know of): ask the trace
        out: list[str] = []
        for c in self.coin:
            if c.audience is not None and c.audience != audience:
                continue
            got = credits.get(c.reason, 0)
            if c.total_limit is not None:
                usage = before.rule_usage.get(c.key)
                if usage is not None and usage.times >= c.total_limit:
                    continue
            if c.literal is not None and (got > 0 or c.unconditional):
                # The grant is the literal amount: whatever it lacks was clipped.
                clipped = c.literal > got
            elif got > 0:
                # A credit is counted in the event's period, now the latest: if the totals
                # stay below the caps, the caps let all of the grant through.
                if _below_caps(after.rule_usage.get(c.key), c.daily_cap, c.weekly_cap):
                    clipped = False
                else:
                    return None
            elif _room(rulebook, before, event, audience, c.key, c.daily_cap, c.weekly_cap) > 0:
                clipped = False  # a matching positive grant would have credited something
            else:
                return None
            if clipped:
                out.append(c.tag)
        for s in self.skill:
            if s.audience is not None and s.audience != audience:
                continue
            got = skill_deltas.get(s.skill, 0)
            if not s.shared and s.literal is not None and (got > 0 or s.unconditional):
                clipped = s.literal > got
            elif after.skills.get(s.skill, 0) >= s.max_value:
                # Skills only grow during an event, so a value below the maximum after it
                # was below it when the rule ran; at the maximum, the trace decides.
                return None
            else:
                clipped = False
            if clipped:
                out.append(s.tag)
        for t in self.token:
            if t.audience is not None and t.audience != audience:
                continue
            got = credits.get(t.reason, 0)
            if t.literal is not None and (got > 0 or t.unconditional):
                clipped = t.literal > got
            else:
                # Token balances only grow after the streak step, so a balance below the
                # maximum after the event was below it when the rule ran.
                at_max = t.max_balance is not None and after.tokens.get(t.token, 0) >= t.max_balance
                if at_max:
                    return None
                if t.capped:
                    if got > 0:
                        if not _below_caps(after.rule_usage.get(t.key), t.daily_cap, t.weekly_cap):
                            return None
                    elif (
                        _room(rulebook, before, event, audience, t.key, t.daily_cap, t.weekly_cap)
                        <= 0
                    ):
                        return None
                clipped = False  # below the caps' room and the balance's maximum
            if clipped:
                out.append(t.tag)
        return out


class RuleProbes:
    """The :class:`TypeProbe` of every event type that triggers a coin, skill or token rule."""

    def __init__(self, rulebook: Rulebook) -> None:
        coin_keys = {r.key for r in rulebook.coin_rules}
        token_keys = {r.key for r in rulebook.token_rules}
        # Caps are counted per rule key: a coin and a token rule sharing a key share usage,
        # which the inference cannot untangle, so such event types are always traced.
        shared_usage = coin_keys & token_keys
        types = (
            set(rulebook.coin_rules_by_type)
            | set(rulebook.skill_rules_by_type)
            | set(rulebook.token_rules_by_type)
        )
        self.by_type: dict[str, TypeProbe] = {}
        for event_type in sorted(types):
            # Only a rule with a daily or weekly cap can be clipped (a used-up total limit is
            # not a clip); a token rule also by its token's max_balance; a skill rule always
            # (max_value), and its credit is found from the skill's change.
            coins = tuple(
                _Coin(
                    tag=f"coin_rule:{r.key}",
                    key=r.key,
                    reason=f"rule:{r.key}",
                    audience=r.audience,
                    literal=r.amount.literal
                    if r.amount.expr is None and not r.multipliers
                    else None,
                    unconditional=r.when is None,
                    daily_cap=r.daily_cap,
                    weekly_cap=r.weekly_cap,
                    total_limit=r.total_limit,
                )
                for r in rulebook.coin_rules_by_type.get(event_type, ())
                if r.daily_cap is not None or r.weekly_cap is not None
            )
            skill_rules = rulebook.skill_rules_by_type.get(event_type, ())
            per_skill: dict[str, int] = {}
            for r in skill_rules:
                per_skill[r.skill] = per_skill.get(r.skill, 0) + 1
            skills = tuple(
                _Skill(
                    tag=f"skill_rule:{r.key}",
                    skill=r.skill,
                    audience=r.audience,
                    literal=r.amount.literal if r.amount.expr is None else None,
                    unconditional=r.when is None,
                    max_value=rulebook.skills[r.skill].max_value,
                    shared=per_skill[r.skill] > 1,
                )
                for r in skill_rules
            )
            tokens = tuple(
                _Token(
                    tag=f"token_rule:{r.key}",
                    key=r.key,
                    reason=f"rule:{r.key}",
                    token=r.token,
                    audience=r.audience,
                    literal=r.amount.literal if r.amount.expr is None else None,
                    unconditional=r.when is None,
                    daily_cap=r.daily_cap,
                    weekly_cap=r.weekly_cap,
                    max_balance=rulebook.tokens[r.token].max_balance,
                    capped=r.daily_cap is not None or r.weekly_cap is not None,
                )
                for r in rulebook.token_rules_by_type.get(event_type, ())
                if r.daily_cap is not None
                or r.weekly_cap is not None
                or rulebook.tokens[r.token].max_balance is not None
            )
            always = any(
                r.key in shared_usage for r in rulebook.coin_rules_by_type.get(event_type, ())
            ) or any(
                r.key in shared_usage for r in rulebook.token_rules_by_type.get(event_type, ())
            )
            skill_tags = {s.skill: s.tag for s in skills if not s.shared}
            if coins or tokens or skills or always:
                self.by_type[event_type] = TypeProbe(coins, tokens, skills, always, skill_tags)


def grants_from_trace(trace: Sequence[Mapping[str, Any]]) -> list[Grant]:
    """Each matched rule's credit and clipping, read from an ``explain=True`` trace."""
    out: list[Grant] = []
    for entry in trace:
        kind = entry.get("kind")
        if kind not in ("coin_rule", "skill_rule", "token_rule") or "credited" not in entry:
            continue
        credited = int(entry["credited"])
        grant = int(entry.get("amount") or 0)
        reason = str(entry.get("reason") or "")
        clipped = grant > credited and not reason.startswith("total limit")
        out.append((f"{kind}:{entry['rule']}", credited, clipped))
    return out
