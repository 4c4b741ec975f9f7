"""One shard of a simulation: validate its lines, replay its users, tally the outcome.

This runs in a worker (a process, a thread, a Dask worker) or inline. A task carries only
plain data, the rulebook documents and the shard's lines, so it pickles cheaply; each worker
compiles a rulebook once and keeps it for later shards.
"""

from __future__ import annotations

import gc
import heapq
import time
from array import array
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from buddyrules.engine.evaluate import evaluate, new_buddy
from buddyrules.engine.replay import BuddyReplay
from buddyrules.errors import ValidationFailed
from buddyrules.events import Event
from buddyrules.rulebook import Rulebook, load_rulebook
from buddyrules.simulate._errors import SimulationInputError
from buddyrules.simulate._gc import paused_gc
from buddyrules.simulate._inputs import ROW_FIELDS, BadLine, Payload, loads
from buddyrules.simulate._rulestats import Grant, recorded_grants
from buddyrules.simulate._tally import BuddyOutcome, Tally
from buddyrules.state import BuddyState

__all__ = [
    "DAY_US",
    "ShardResult",
    "ShardTask",
    "epoch_us",
    "remember_rulebook",
    "run_shard",
]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)
#: Microseconds in a day: ``epoch_us // DAY_US`` is the UTC day number.
DAY_US = 86_400_000_000
_CACHE_SIZE = 16
_RULEBOOKS: dict[str, Rulebook] = {}


def epoch_us(instant: datetime) -> int:
    """Microseconds since the Unix epoch (exact; sorts like the instants)."""
    return (instant - _EPOCH) // _US


def remember_rulebook(rulebook: Rulebook) -> None:
    """Seed this process's cache, so inline and thread workers reuse the caller's rulebook."""
    if rulebook.version not in _RULEBOOKS:
        _remember(rulebook)


def _remember(rulebook: Rulebook) -> Rulebook:
    while len(_RULEBOOKS) >= _CACHE_SIZE:
        _RULEBOOKS.pop(next(iter(_RULEBOOKS)))
    _RULEBOOKS[rulebook.version] = rulebook
    return rulebook


def _rulebook(version: str, document: Mapping[str, Any]) -> Rulebook:
    rulebook = _RULEBOOKS.get(version)
    if rulebook is None:
        rulebook = load_rulebook(document)
        if rulebook.version != version:
            raise SimulationInputError(
                f"rulebook {version} recompiled as {rulebook.version} in a worker",
                {"version": version},
            )
        rulebook = _remember(rulebook)
    return rulebook


@dataclass(frozen=True, slots=True)
class ShardTask:
    """Everything a worker needs for one shard (plain, picklable data)."""

    index: int
    rulebooks: tuple[tuple[str, dict[str, Any]], ...]  # (version, document)
    items: list[tuple[int, Payload]]  # (line, payload) in input order
    initial_states: list[BuddyState]
    on_bad_line: str
    validate_only: bool
    exact_rule_stats: bool
    # Raw JSONL lines travel packed: one bytes object (lines joined by b"\n") and their
    # line numbers, which pickle at memory speed instead of one object per line.
    packed: bytes = b""
    packed_lines: array[int] = field(default_factory=lambda: array("q"))

    @property
    def size(self) -> int:
        """How many lines the shard holds."""
        return len(self.items) + len(self.packed_lines)

    def lines(self) -> Iterator[tuple[int, Payload]]:
        """Every (line, payload) of the shard, in input order."""
        if self.packed_lines:
            packed = zip(self.packed_lines, self.packed.split(b"\n"), strict=True)
            if not self.items:
                yield from packed
                return
            yield from heapq.merge(packed, self.items, key=lambda item: item[0])
        else:
            yield from self.items


@dataclass(slots=True)
class ShardResult:
    """What a shard sends back: its bad lines and one tally per rulebook."""

    index: int
    events: int
    bad: list[BadLine] = field(default_factory=list)
    duplicates: int = 0
    tallies: list[Tally] = field(default_factory=list)
    replayed: bool = False
    seconds: float = 0.0


class _Bad(Exception):
    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def _decode(payload: Payload) -> Event:
    """Turn a shipped payload into a validated Event (raises :class:`_Bad`)."""
    if isinstance(payload, bytes):
        data = loads(payload)
    elif isinstance(payload, dict):
        data = payload
    elif payload[0] == "event":
        _, user_id, type_, event_id, audience, props, occurred_at = payload
        if occurred_at is not None and (
            not isinstance(occurred_at, datetime) or occurred_at.utcoffset() is None
        ):
            raise _Bad("validation_failed", "occurred_at: must be a timezone-aware datetime")
        return Event(
            user_id=user_id,
            type=type_,
            event_id=event_id,
            audience=audience,
            properties=props,
            occurred_at=occurred_at,
        )
    else:
        data = {k: v for k, v in zip(ROW_FIELDS, payload[1:], strict=True) if v is not None}
        props = data.get("properties")
        if isinstance(props, str):
            try:
                data["properties"] = loads(props)
            except ValueError as exc:
                raise _Bad("invalid_json", f"properties: not valid JSON: {exc}") from None
    try:
        return Event.from_dict(data)
    except ValidationFailed as exc:
        raise _Bad(exc.code, exc.message) from None


def _same_payload(a: Event, b: Event) -> bool:
    return (
        a.type == b.type
        and a.audience == b.audience
        and a.occurred_at == b.occurred_at
        and a.properties == b.properties
    )


def _admit(rulebook: Rulebook, event: Event) -> tuple[str | None, str, str]:
    """The buddy audience under ``rulebook``, or None with the rejection code and reason."""
    audience = event.audience if event.audience is not None else rulebook.default_audience
    if audience is None:
        return None, "missing_audience", "audience is required: the rulebook configures several"
    if audience not in rulebook.audiences:
        return None, "unknown_audience", f"unknown audience {audience!r}"
    if not rulebook.is_registered(audience, event.type):
        return (
            None,
            "event_type_not_registered",
            f"event type {event.type!r} is not registered for audience {audience!r}",
        )
    return audience, "", ""


# Per rulebook: the buddy audience (None if rejected) and rejection code; then the reason
# when every rulebook rejects the event (a bad line), else None.
_Gate = tuple[tuple[str | None, ...], tuple[str, ...], str | None]


def _gate(books: list[Rulebook], event: Event) -> _Gate:
    """Admission of an (audience, type) pair under each rulebook (cached per shard)."""
    audiences: list[str | None] = []
    codes: list[str] = []
    first_reason: str | None = None
    for rulebook in books:
        audience, code, reason = _admit(rulebook, event)
        audiences.append(audience)
        codes.append(code)
        if audience is None and first_reason is None:
            first_reason = reason
    if any(a is not None for a in audiences):
        first_reason = None
    return tuple(audiences), tuple(codes), first_reason


def run_shard(task: ShardTask) -> ShardResult:
    """Validate, replay and tally one shard. Module-level so that executors can pickle it."""
    started = time.perf_counter()
    books = [_rulebook(version, doc) for version, doc in task.rulebooks]
    result = ShardResult(task.index, task.size)
    result.tallies = [Tally() for _ in books]
    initial = {(s.user_id, s.audience): s for s in task.initial_states}
    # The shard's events are built, grouped and then frozen with the collector paused: were
    # it re-enabled before the freeze, its first collection would traverse all of them.
    with paused_gc():
        valid, counts = _validate(task, books, result)
        if task.validate_only or (result.bad and task.on_bad_line == "stop"):
            result.seconds = time.perf_counter() - started
            return result
        groups = _group(valid, counts, len(books))
        del valid
        gc.freeze()
    try:
        for i, (rulebook, tally) in enumerate(zip(books, result.tallies, strict=True)):
            for audiences, per_type in counts.items():
                if audiences[i] is not None:
                    for event_type, n in per_type.items():
                        tally.by_type[event_type] = tally.by_type.get(event_type, 0) + n
            _replay(rulebook, groups[i], initial, tally, exact=task.exact_rule_stats)
    finally:
        gc.unfreeze()
    result.replayed = True
    result.seconds = time.perf_counter() - started
    return result


_Groups = dict[tuple[str, str], list[tuple[int, Event]]]


def _group(
    valid: list[tuple[int, int, Event, tuple[str | None, ...]]],
    counts: Mapping[tuple[str | None, ...], Mapping[str, int]],
    books: int,
) -> list[_Groups]:
    """Per rulebook: each buddy's (instant, event) pairs in replay order.

    What each rulebook admits is decided per (audience, type) gate. When every gate gives
    every rulebook the same buddy audience (the usual case), one grouping serves them all.
    """
    uniform = all(len(set(audiences)) == 1 for audiences in counts)
    groups: list[_Groups] = []
    for i in range(books):
        if uniform and groups:
            groups.append(groups[0])
            continue
        by_buddy: _Groups = {}
        for ts, _, event, audiences in valid:
            audience = audiences[i]
            if audience is not None:
                bucket = by_buddy.get((event.user_id, audience))
                if bucket is None:
                    by_buddy[(event.user_id, audience)] = [(ts, event)]
                else:
                    bucket.append((ts, event))
        groups.append(by_buddy)
    return groups


def _validate(
    task: ShardTask, books: list[Rulebook], result: ShardResult
) -> tuple[
    list[tuple[int, int, Event, tuple[str | None, ...]]],
    dict[tuple[str | None, ...], dict[str, int]],
]:
    """Decode and check every line; return the valid ones sorted by (instant, line), and
    how many valid events of each type each admission (audience per rulebook) let in."""
    tallies = result.tallies
    seen: dict[tuple[str, str], tuple[Event, int]] = {}
    gates: dict[tuple[str | None, str], _Gate] = {}
    # (utc microseconds, line, event, audience per rulebook or None)
    valid: list[tuple[int, int, Event, tuple[str | None, ...]]] = []
    counts: dict[tuple[str | None, ...], dict[str, int]] = {}
    for line, payload in task.lines():
        try:
            event = _decode(payload)
        except _Bad as bad:
            result.bad.append(BadLine(line, bad.code, bad.reason))
            continue
        if event.occurred_at is None:
            result.bad.append(
                BadLine(
                    line,
                    "validation_failed",
                    "occurred_at: required to replay an event (the log must say when)",
                )
            )
            continue
        gate_key = (event.audience, event.type)
        gate = gates.get(gate_key)
        if gate is None:
            gate = gates[gate_key] = _gate(books, event)
        audiences, codes, first_reason = gate
        if first_reason is not None:
            result.bad.append(BadLine(line, codes[0], first_reason))
            continue
        if event.event_id is not None:
            key = (event.user_id, event.event_id)
            previous = seen.get(key)
            if previous is not None:
                if _same_payload(previous[0], event):
                    result.duplicates += 1
                else:
                    result.bad.append(
                        BadLine(
                            line,
                            "idempotency_key_conflict",
                            f"event_id {event.event_id!r} was used on line {previous[1]} "
                            "with a different payload",
                        )
                    )
                continue
            seen[key] = (event, line)
        if None in audiences:
            for tally, audience, code in zip(tallies, audiences, codes, strict=True):
                if audience is None:
                    tally.rejected[code] = tally.rejected.get(code, 0) + 1
        valid.append((epoch_us(event.occurred_at), line, event, audiences))
        per_type = counts.get(audiences)
        if per_type is None:
            per_type = counts[audiences] = {}
        per_type[event.type] = per_type.get(event.type, 0) + 1

    valid.sort()  # by (instant, line); lines are unique, so events are never compared
    return valid, counts


def _replay(
    rulebook: Rulebook,
    by_buddy: dict[tuple[str, str], list[tuple[int, Event]]],
    initial: dict[tuple[str, str], BuddyState],
    tally: Tally,
    *,
    exact: bool,
) -> None:
    """Replay each buddy's events in order and add what happened to ``tally``.

    Each buddy's events run on one :class:`~buddyrules.engine.replay.BuddyReplay`, whose
    plans record the grants per-rule statistics need (a clipped coin or token grant, a skill
    rule's credit). With ``exact`` every event is instead evaluated with ``explain=True``
    from the previous state and read from its trace: the reference the replay is tested
    against.
    """
    rules = tally.rules
    problems = tally.problems
    badges_awarded = tally.badges_awarded
    badges_ready = tally.badges_ready
    award_seconds = tally.award_seconds
    milestones = tally.milestones
    daily_coins = tally.daily_coins
    # Ledger totals by (currency, reason): [entries, amount]; split by source at the end.
    # Coins (most entries) are kept by reason alone, to build no key per entry.
    moved: dict[tuple[str, str], list[int]] = {}
    moved_coins: dict[str, list[int]] = {}
    daily_tokens: dict[tuple[int, str], int] = {}
    version = rulebook.version
    applied = 0
    traced = 0
    keys = list(by_buddy)
    keys.extend(k for k in initial if k not in by_buddy)
    for key in keys:
        user_id, audience = key
        events = by_buddy.get(key, [])
        start = initial.get(key)
        if start is None:
            state = new_buddy(rulebook, user_id, audience, hatched_at=events[0][1].occurred_at)
        elif start.rulebook_version != version:
            state = start.model_copy(update={"rulebook_version": version})
        else:
            state = start
        hatched_us = epoch_us(state.hatched_at) if state.hatched_at is not None else None
        coins_earned = 0
        replay = (
            None if exact else BuddyReplay(rulebook, state, record_grants=True, notifications=False)
        )
        grants: list[Grant] | None
        for ts, event in events:
            if replay is not None:
                turn = replay.apply(event)
                # A turn's rows: (currency, amount, balance_after, reason), as the entries.
                ledger: Sequence[tuple[str, int, int, str]] = turn.ledger
                coins = turn.coins_credited
                awarded: Sequence[str] = turn.awarded_now
                ready: Sequence[str] = turn.ready_now
                reached: Sequence[Mapping[str, Any]] = turn.milestones
                failed: Sequence[Mapping[str, Any]] = turn.problems
                grants = turn.grants
            else:
                out = evaluate(rulebook, state, event, explain=True)
                traced += 1
                effects = out.effects
                ledger = out.ledger
                coins = effects.coins
                awarded = effects.badges_awarded
                ready = effects.badges_ready
                reached = effects.streak_milestones
                failed = effects.problems
                grants = recorded_grants(out.trace or ())
                state = out.state
            day = ts // DAY_US
            for currency, amount, _, reason in ledger:
                if currency == "coins":
                    totals = moved_coins.get(reason)
                    if totals is None:
                        moved_coins[reason] = [1, amount]
                    else:
                        totals[0] += 1
                        totals[1] += amount
                    continue
                mk = (currency, reason)
                totals = moved.get(mk)
                if totals is None:
                    moved[mk] = [1, amount]
                else:
                    totals[0] += 1
                    totals[1] += amount
                if amount > 0:
                    dk = (day, currency)
                    daily_tokens[dk] = daily_tokens.get(dk, 0) + amount
            if coins:
                coins_earned += coins
                daily_coins[day] = daily_coins.get(day, 0) + coins
            if awarded:
                for badge in awarded:
                    badges_awarded[badge] = badges_awarded.get(badge, 0) + 1
                    if hatched_us is not None:
                        award_seconds.setdefault(badge, []).append((ts - hatched_us) / 1e6)
            if ready:
                for badge in ready:
                    badges_ready[badge] = badges_ready.get(badge, 0) + 1
            if reached:
                for m in reached:
                    ms = (str(m["streak"]), int(m["count"]))
                    milestones[ms] = milestones.get(ms, 0) + 1
            if failed:
                for p in failed:
                    rule = str(p.get("rule"))
                    problems[rule] = problems.get(rule, 0) + 1
            if grants:
                # Coin and token rules' credits are in the ledger totals; here: which grants
                # were clipped, and what each skill rule raised.
                for tag, got, was_clipped in grants:
                    counts = rules.get(tag)
                    if counts is None:
                        counts = rules[tag] = [0, 0, 0]
                    if was_clipped:
                        counts[2] += 1
                    if got and tag.startswith("skill_rule:"):
                        counts[0] += 1
                        counts[1] += got
        if replay is not None:
            state = replay.state()
        applied += len(events)
        tally.buddies.append(
            BuddyOutcome(
                user_id=user_id,
                audience=audience,
                events=len(events),
                coins_earned=coins_earned,
                coins=state.coins,
                badges=state.badges,
                badges_ready=state.badges_ready,
                stage=state.stage,
                ready_stage=max(state.stage, state.evolution_notified),
                from_initial_state=start is not None,
            )
        )
    tally.applied += applied
    tally.traced += traced
    for reason, totals in moved_coins.items():
        moved[("coins", reason)] = totals
    _settle_ledger(tally, moved, daily_tokens)


def _settle_ledger(
    tally: Tally, moved: dict[tuple[str, str], list[int]], daily: dict[tuple[int, str], int]
) -> None:
    """Split the ledger totals into rule credits, sources, spending and daily token inflow."""
    for (currency, reason), (entries, amount) in moved.items():
        source, _, rest = reason.partition(":")
        if currency == "coins":
            if amount > 0:
                tally.coins_by_source[source] = tally.coins_by_source.get(source, 0) + amount
            if source == "rule" and amount > 0:
                _credit(tally.rules, "coin_rule:" + rest, entries, amount)
            continue
        token = currency.removeprefix("token:")
        if amount > 0:
            per_source = tally.tokens_by_source.setdefault(source, {})
            per_source[token] = per_source.get(token, 0) + amount
            if source == "rule":
                _credit(tally.rules, "token_rule:" + rest, entries, amount)
        elif amount < 0:
            tally.tokens_spent[token] = tally.tokens_spent.get(token, 0) - amount
    for (day, currency), amount in daily.items():
        per_day = tally.daily_tokens.setdefault(day, {})
        token = currency.removeprefix("token:")
        per_day[token] = per_day.get(token, 0) + amount


def _credit(rules: dict[str, list[int]], tag: str, entries: int, amount: int) -> None:
    counts = rules.get(tag)
    if counts is None:
        counts = rules[tag] = [0, 0, 0]
    counts[0] += entries
    counts[1] += amount
