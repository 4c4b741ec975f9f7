"""The compiled, immutable :class:`Rulebook` the engine runs.

Compiling checks every cross-reference and compiles every expression once, then indexes the
rules by event type so the cost of an event grows with the rules that can match it, not with
the size of the rulebook.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, tzinfo
from functools import cached_property
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from buddyrules.conditions import Expression, ExpressionError, Symbols, compile_expression
from buddyrules.errors import RulebookError
from buddyrules.rulebook._deps import DependencyIndex
from buddyrules.rulebook.schema import RewardSpec, RulebookSpec

__all__ = [
    "Amount",
    "Badge",
    "CoinRule",
    "Decay",
    "Gate",
    "Path",
    "Reward",
    "Rulebook",
    "Skill",
    "SkillRule",
    "Stage",
    "Step",
    "Streak",
    "SubStep",
    "Token",
    "TokenRule",
    "compile_rulebook",
]

Namespace = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Amount:
    """An amount: a literal integer or a compiled expression."""

    literal: int | None
    expr: Expression | None
    source: str | int

    def resolve(self, ns: Namespace) -> tuple[int, str | None]:
        """Return ``(amount, problem)``; a failed or negative expression gives 0 and a problem."""
        if self.expr is None:
            return (self.literal or 0), None
        return self.expr.amount(ns)


@dataclass(frozen=True, slots=True)
class Reward:
    """Coins, token credits and an optional badge paid together."""

    coins: int = 0
    tokens: tuple[tuple[str, int], ...] = ()
    badge: str | None = None

    @property
    def is_empty(self) -> bool:
        """True when the reward pays nothing."""
        return not self.coins and not any(a for _, a in self.tokens) and self.badge is None


@dataclass(frozen=True, slots=True)
class Skill:
    """A skill definition."""

    key: str
    max_value: int
    points_per_level: int
    max_level: int

    def level_of(self, value: int) -> int:
        """The level for a skill value: ``min(max_level, value // points_per_level)``."""
        return min(self.max_level, value // self.points_per_level)


@dataclass(frozen=True, slots=True)
class Token:
    """A token definition."""

    key: str
    kind: str
    max_balance: int | None

    @property
    def spendable(self) -> bool:
        """Primary tokens are spendable; progression tokens are earn-only."""
        return self.kind == "primary"


@dataclass(frozen=True, slots=True)
class CoinRule:
    """A compiled coin rule."""

    key: str
    path: str
    event: str
    amount: Amount
    when: Expression | None
    audience: str | None
    multipliers: tuple[tuple[Expression, float | int], ...]
    daily_cap: int | None
    weekly_cap: int | None
    total_limit: int | None
    #: Whether the rule has a period cap or a total limit (its credits are counted).
    limited: bool = field(init=False, repr=False, compare=False)
    #: The ledger reason of its credits, ``"rule:<key>"``.
    reason: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Derived once here, not per event (frozen: set through object.__setattr__).
        limited = (
            self.daily_cap is not None
            or self.weekly_cap is not None
            or self.total_limit is not None
        )
        object.__setattr__(self, "limited", limited)
        object.__setattr__(self, "reason", f"rule:{self.key}")


@dataclass(frozen=True, slots=True)
class SkillRule:
    """A compiled skill rule."""

    key: str
    path: str
    event: str
    skill: str
    amount: Amount
    when: Expression | None
    audience: str | None


@dataclass(frozen=True, slots=True)
class TokenRule:
    """A compiled token rule."""

    key: str
    path: str
    event: str
    token: str
    amount: Amount
    when: Expression | None
    audience: str | None
    daily_cap: int | None
    weekly_cap: int | None
    #: Whether the rule has a period cap (its credits are counted).
    limited: bool = field(init=False, repr=False, compare=False)
    #: The ledger reason of its credits, ``"rule:<key>"``.
    reason: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "limited", self.daily_cap is not None or self.weekly_cap is not None
        )
        object.__setattr__(self, "reason", f"rule:{self.key}")


@dataclass(frozen=True, slots=True)
class Streak:
    """A compiled streak."""

    key: str
    path: str
    events: frozenset[str]
    period: str
    audience: str | None
    tick_reward: Reward
    freeze_token: str | None
    milestones: tuple[tuple[int, Reward], ...]


@dataclass(frozen=True, slots=True)
class Badge:
    """A compiled badge."""

    key: str
    path: str
    mode: str
    when: Expression | None
    reward: Reward
    requires: tuple[str, ...]
    hidden: bool
    audience: str | None


@dataclass(frozen=True, slots=True)
class Stage:
    """An evolution stage (numbered from 1)."""

    number: int
    name: str
    when: Expression | None


@dataclass(frozen=True, slots=True)
class SubStep:
    """A compiled path sub-step."""

    key: str
    completion: Expression | None
    allow_manual_complete: bool
    ref: str = ""  # "step/sub_step", as kept in PathState.sub_steps_done


@dataclass(frozen=True, slots=True)
class Step:
    """A compiled path step."""

    key: str
    path: str
    unlock: Expression | None
    completion: Expression | None
    reward: Reward
    sub_steps: tuple[SubStep, ...]


@dataclass(frozen=True, slots=True)
class Path:
    """A compiled learning path."""

    key: str
    audience: str | None
    steps: tuple[Step, ...]


@dataclass(frozen=True, slots=True)
class Gate:
    """A gate unlocked once by spending a primary token."""

    key: str
    token: str
    cost: int


@dataclass(frozen=True, slots=True)
class Decay:
    """A time-based skill decay rule."""

    key: str
    skill: str
    cadence: str
    amount: int
    floor: int
    grace_days: int
    apply_only_above: int | None


def _canonical_json(data: Any) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


@dataclass(frozen=True, eq=False)
class Rulebook:
    """An immutable, compiled rulebook version.

    Build one with :func:`buddyrules.load_rulebook`. ``version`` is a content hash: the same
    content gives the same version whatever the file format or key order.
    """

    spec: RulebookSpec
    version: str
    timezone: str
    tz: ZoneInfo
    audiences: tuple[str, ...]
    event_types: Mapping[str, frozenset[str]]
    skills: Mapping[str, Skill]
    tokens: Mapping[str, Token]
    coin_rules: tuple[CoinRule, ...]
    skill_rules: tuple[SkillRule, ...]
    token_rules: tuple[TokenRule, ...]
    streaks: tuple[Streak, ...]
    badges: tuple[Badge, ...]
    stages: tuple[Stage, ...]
    auto_evolve: bool
    paths: tuple[Path, ...]
    gates: Mapping[str, Gate]
    decay: tuple[Decay, ...]
    symbols: Symbols
    # Indexes by event type: the engine only looks at rules that can match.
    coin_rules_by_type: Mapping[str, tuple[CoinRule, ...]] = field(repr=False)
    skill_rules_by_type: Mapping[str, tuple[SkillRule, ...]] = field(repr=False)
    token_rules_by_type: Mapping[str, tuple[TokenRule, ...]] = field(repr=False)
    streaks_by_type: Mapping[str, tuple[Streak, ...]] = field(repr=False)

    @property
    def name(self) -> str:
        """The rulebook's name."""
        return self.spec.name

    @property
    def auto_hatch(self) -> bool:
        """Whether an event for a user without a buddy hatches one first."""
        return self.spec.auto_hatch

    @cached_property
    def period_tz(self) -> tzinfo:
        """The zone the engine converts instants to: ``tz``, or ``datetime.UTC`` for UTC.

        The same local dates either way; converting an instant that is already in
        ``datetime.UTC`` (as parsed events are) to ``datetime.UTC`` is free.
        """
        if self.tz.key in ("UTC", "Etc/UTC", "Etc/Universal", "Etc/Zulu", "Universal", "Zulu"):
            return UTC
        return self.tz

    @cached_property
    def badges_by_key(self) -> Mapping[str, Badge]:
        """Badges by key."""
        return {b.key: b for b in self.badges}

    @cached_property
    def token_zeros(self) -> Mapping[str, int]:
        """Every declared token at 0 (the base of the ``tokens`` name conditions read)."""
        return dict.fromkeys(self.tokens, 0)

    @cached_property
    def expressions(self) -> tuple[Expression, ...]:
        """Every compiled expression of the rulebook (conditions and amounts)."""
        found: list[Expression | None] = []
        for rule in self.coin_rules:
            found += [rule.when, rule.amount.expr, *(cond for cond, _ in rule.multipliers)]
        for srule in self.skill_rules:
            found += [srule.when, srule.amount.expr]
        for trule in self.token_rules:
            found += [trule.when, trule.amount.expr]
        found += [badge.when for badge in self.badges]
        found += [stage.when for stage in self.stages]
        for path in self.paths:
            for step in path.steps:
                found += [step.unlock, step.completion]
                found += [sub.completion for sub in step.sub_steps]
        return tuple(e for e in found if e is not None)

    @cached_property
    def reads_event_time(self) -> bool:
        """Whether any expression can read ``event.occurred_at`` (or the whole ``event``).

        The engine renders the event time as text for the condition namespace only when
        something can read it. ``Expression.reads`` lists every namespace path an
        expression reads, so a rulebook whose expressions never read the time cannot tell.
        """
        untimed = ("event.type", "event.audience", "event.user_id", "props")
        return any(
            read.startswith("event") and not read.startswith(untimed)
            for expression in self.expressions
            for read in expression.reads
        )

    @cached_property
    def skill_levels(self) -> tuple[tuple[str, int, int], ...]:
        """``(key, points_per_level, max_level)`` per skill, in rulebook order."""
        return tuple((s.key, s.points_per_level, s.max_level) for s in self.skills.values())

    @cached_property
    def streak_keys(self) -> tuple[str, ...]:
        """Streak keys in rulebook order."""
        return tuple(s.key for s in self.streaks)

    @cached_property
    def namespace_skills(self) -> tuple[tuple[str, int, int], ...]:
        """:attr:`skill_levels` of the skills some expression reads (the hot path).

        The engine puts only these in the condition namespace; every skill when an
        expression reads ``skills`` as a whole or by a computed key.
        """
        read = self._keys_read("skills")
        return tuple(item for item in self.skill_levels if read is None or item[0] in read)

    @cached_property
    def namespace_streaks(self) -> tuple[str, ...]:
        """:attr:`streak_keys` of the streaks some expression reads (all if one reads the
        whole ``streaks``): the ones the engine puts in the condition namespace."""
        read = self._keys_read("streaks")
        return tuple(key for key in self.streak_keys if read is None or key in read)

    def _keys_read(self, root: str) -> frozenset[str] | None:
        """The keys under ``root`` that expressions read, or None when one reads it whole."""
        keys: set[str] = set()
        for expression in self.expressions:
            for path in expression.read_paths:
                if path[0] == root:
                    if len(path) < 2:
                        return None
                    keys.add(path[1])
        return frozenset(keys)

    @cached_property
    def dependencies(self) -> DependencyIndex:
        """Which state parts each badge and path condition reads (incremental passes)."""
        return DependencyIndex(self)

    @property
    def default_audience(self) -> str | None:
        """The only audience when there is exactly one, else ``None``."""
        return self.audiences[0] if len(self.audiences) == 1 else None

    def is_registered(self, audience: str, event_type: str) -> bool:
        """Whether ``event_type`` is registered for ``audience``."""
        types = self.event_types.get(audience)
        return types is not None and event_type in types

    def to_dict(self) -> dict[str, Any]:
        """The rulebook as a plain JSON-compatible mapping (loadable again)."""
        return self.spec.model_dump(mode="json", exclude_none=True)

    def to_json(self) -> str:
        """The canonical JSON text of the rulebook (what ``version`` hashes)."""
        return _canonical_json(self.spec.model_dump(mode="json"))

    def __reduce__(self) -> tuple[Callable[..., Rulebook], tuple[Any, ...]]:
        # Compiled expressions hold code objects; pickling recompiles from the spec, so a
        # rulebook can be shipped to worker processes.
        return (_rebuild, (self.spec.model_dump(mode="json"),))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Rulebook) and other.version == self.version

    def __hash__(self) -> int:
        return hash(self.version)

    def __repr__(self) -> str:
        return f"Rulebook(name={self.name!r}, version={self.version!r})"


def _rebuild(data: dict[str, Any]) -> Rulebook:
    return compile_rulebook(RulebookSpec.model_validate(data))


class _Problems:
    """Collects every problem found, so the author sees them all at once."""

    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []

    def add(self, path: str, message: str, column: int | None = None) -> None:
        self.items.append({"path": path, "message": message, "column": column})


def _index(rules: Iterable[Any], attr: str = "event") -> dict[str, tuple[Any, ...]]:
    out: dict[str, list[Any]] = {}
    for rule in rules:
        out.setdefault(getattr(rule, attr), []).append(rule)
    return {k: tuple(v) for k, v in out.items()}


def compile_rulebook(spec: RulebookSpec) -> Rulebook:
    """Check cross-references, compile every expression and index the rules.

    Raises :class:`RulebookError` listing every problem found.
    """
    problems = _Problems()
    p = problems.add

    try:
        tz = ZoneInfo(spec.timezone)
    except (ZoneInfoNotFoundError, ValueError):
        p("timezone", f"unknown IANA timezone {spec.timezone!r}")
        tz = ZoneInfo("UTC")

    audiences = tuple(spec.audiences)
    if len(set(audiences)) != len(audiences):
        p("audiences", "audiences must be unique")
    event_types: dict[str, frozenset[str]] = {}
    for aud, types in spec.event_types.items():
        if aud not in audiences:
            p(f"event_types.{aud}", f"audience {aud!r} is not listed in audiences")
        event_types[aud] = frozenset(types)
    for aud in audiences:
        if aud not in spec.event_types:
            p("event_types", f"audience {aud!r} has no registered event types")
    all_types = frozenset().union(*event_types.values()) if event_types else frozenset()

    def unique(section: str, keys: list[str]) -> None:
        seen: set[str] = set()
        for i, k in enumerate(keys):
            if k in seen:
                p(f"{section}[{i}].key", f"duplicate key {k!r}")
            seen.add(k)

    skills = {
        s.key: Skill(s.key, s.max_value, s.points_per_level, s.max_level) for s in spec.skills
    }
    unique("skills", [s.key for s in spec.skills])
    tokens = {t.key: Token(t.key, t.kind, t.max_balance) for t in spec.tokens}
    unique("tokens", [t.key for t in spec.tokens])
    badge_keys = [b.key for b in spec.badges]
    unique("badges", badge_keys)
    streak_keys = [s.key for s in spec.streaks]
    unique("streaks", streak_keys)
    unique("gates", [g.key for g in spec.gates])
    unique("paths", [pt.key for pt in spec.paths])

    symbols = Symbols(
        skills=frozenset(skills),
        tokens=frozenset(tokens),
        streaks=frozenset(streak_keys),
        badges=frozenset(badge_keys),
        event_types=all_types,
    )

    def expr(path: str, source: str | None, kind: str = "condition") -> Expression | None:
        if source is None:
            return None
        try:
            return compile_expression(source, symbols, kind=kind)  # type: ignore[arg-type]
        except ExpressionError as exc:
            p(path, exc.message, exc.column)
            return None

    def amount(path: str, source: int | str) -> Amount:
        if isinstance(source, int):
            if source < 0:
                p(path, "amount must not be negative (rules only grant)")
            return Amount(source, None, source)
        return Amount(None, expr(path, source, "amount"), source)

    def audience_of(path: str, audience: str | None) -> None:
        if audience is not None and audience not in audiences:
            p(f"{path}.audience", f"unknown audience {audience!r}")

    def event_ok(path: str, event: str, audience: str | None) -> None:
        if audience is not None and audience in event_types:
            if event not in event_types[audience]:
                p(path, f"event type {event!r} is not registered for audience {audience!r}")
        elif event not in all_types:
            p(path, f"event type {event!r} is not registered for any audience")

    def reward(path: str, spec_reward: RewardSpec | None) -> Reward:
        if spec_reward is None:
            return Reward()
        for k in spec_reward.tokens:
            if k not in tokens:
                p(f"{path}.tokens.{k}", f"unknown token {k!r}")
        if spec_reward.badge is not None and spec_reward.badge not in symbols.badges:
            p(f"{path}.badge", f"unknown badge {spec_reward.badge!r}")
        return Reward(spec_reward.coins, tuple(spec_reward.tokens.items()), spec_reward.badge)

    coin_rules: list[CoinRule] = []
    for i, r in enumerate(spec.coin_rules):
        path = f"coin_rules[{i}]"
        audience_of(path, r.audience)
        event_ok(f"{path}.event", r.event, r.audience)
        mults: list[tuple[Expression, float | int]] = []
        for j, m in enumerate(r.multiplier):
            e = expr(f"{path}.multiplier[{j}].when", m.when)
            if e is not None:
                mults.append((e, m.factor))
        coin_rules.append(
            CoinRule(
                key=r.key or path,
                path=path,
                event=r.event,
                amount=amount(f"{path}.amount", r.amount),
                when=expr(f"{path}.when", r.when),
                audience=r.audience,
                multipliers=tuple(mults),
                daily_cap=r.daily_cap,
                weekly_cap=r.weekly_cap,
                total_limit=r.total_limit,
            )
        )
    unique("coin_rules", [r.key for r in coin_rules])

    skill_rules: list[SkillRule] = []
    for i, sr in enumerate(spec.skill_rules):
        path = f"skill_rules[{i}]"
        audience_of(path, sr.audience)
        event_ok(f"{path}.event", sr.event, sr.audience)
        if sr.skill not in skills:
            p(f"{path}.skill", f"unknown skill {sr.skill!r}")
        skill_rules.append(
            SkillRule(
                key=sr.key or path,
                path=path,
                event=sr.event,
                skill=sr.skill,
                amount=amount(f"{path}.amount", sr.amount),
                when=expr(f"{path}.when", sr.when),
                audience=sr.audience,
            )
        )
    unique("skill_rules", [r.key for r in skill_rules])

    token_rules: list[TokenRule] = []
    for i, tr in enumerate(spec.token_rules):
        path = f"token_rules[{i}]"
        audience_of(path, tr.audience)
        event_ok(f"{path}.event", tr.event, tr.audience)
        if tr.token not in tokens:
            p(f"{path}.token", f"unknown token {tr.token!r}")
        token_rules.append(
            TokenRule(
                key=tr.key or path,
                path=path,
                event=tr.event,
                token=tr.token,
                amount=amount(f"{path}.amount", tr.amount),
                when=expr(f"{path}.when", tr.when),
                audience=tr.audience,
                daily_cap=tr.daily_cap,
                weekly_cap=tr.weekly_cap,
            )
        )
    unique("token_rules", [r.key for r in token_rules])
    # Cap and limit usage is kept per rule key, so a key must name one rule across the
    # three rule sections (a coin rule and a token rule sharing a key would share caps).
    first_section: dict[str, str] = {}
    for section, keys in (
        ("coin_rules", [r.key for r in coin_rules]),
        ("skill_rules", [r.key for r in skill_rules]),
        ("token_rules", [r.key for r in token_rules]),
    ):
        for i, k in enumerate(keys):
            other = first_section.setdefault(k, section)
            if other != section:
                p(f"{section}[{i}].key", f"rule key {k!r} is already used in {other}")

    streaks: list[Streak] = []
    for i, st in enumerate(spec.streaks):
        path = f"streaks[{i}]"
        audience_of(path, st.audience)
        for j, ev in enumerate(st.events):
            event_ok(f"{path}.events[{j}]", ev, st.audience)
        if st.freeze_token is not None and st.freeze_token not in tokens:
            p(f"{path}.freeze_token", f"unknown token {st.freeze_token!r}")
        counts = [m.count for m in st.milestones]
        if len(set(counts)) != len(counts):
            p(f"{path}.milestones", "milestone counts must be unique")
        milestones = (
            tuple(
                sorted(
                    (m.count, reward(f"{path}.milestones[{j}].reward", m.reward))
                    for j, m in enumerate(st.milestones)
                )
            )
            if len(set(counts)) == len(counts)
            else ()
        )
        streaks.append(
            Streak(
                key=st.key,
                path=path,
                events=frozenset(st.events),
                period=st.period,
                audience=st.audience,
                tick_reward=reward(f"{path}.tick_reward", st.tick_reward),
                freeze_token=st.freeze_token,
                milestones=milestones,
            )
        )

    badges: list[Badge] = []
    for i, b in enumerate(spec.badges):
        path = f"badges[{i}]"
        audience_of(path, b.audience)
        for j, req in enumerate(b.requires):
            if req not in symbols.badges:
                p(f"{path}.requires[{j}]", f"unknown badge {req!r}")
            elif req == b.key:
                p(f"{path}.requires[{j}]", f"badge {b.key!r} requires itself")
        badges.append(
            Badge(
                key=b.key,
                path=path,
                mode=b.mode,
                when=expr(f"{path}.when", b.when),
                reward=reward(f"{path}.reward", b.reward),
                requires=tuple(b.requires),
                hidden=b.hidden,
                audience=b.audience,
            )
        )
    cycle = _find_cycle({b.key: list(b.requires) for b in spec.badges})
    if cycle:
        p("badges", "prerequisite cycle: " + " -> ".join(cycle))

    stages: list[Stage] = []
    for i, sg in enumerate(spec.evolution.stages):
        path = f"evolution.stages[{i}]"
        if i == 0 and sg.when is not None:
            p(f"{path}.when", "stage 1 is where every buddy starts; it takes no `when`")
        if i > 0 and sg.when is None:
            p(f"{path}.when", "every stage after the first needs a `when`")
        stages.append(Stage(i + 1, sg.name, expr(f"{path}.when", sg.when) if i else None))

    paths: list[Path] = []
    for i, pt in enumerate(spec.paths):
        ppath = f"paths[{i}]"
        audience_of(ppath, pt.audience)
        unique(f"{ppath}.steps", [s.key for s in pt.steps])
        steps: list[Step] = []
        for j, sp in enumerate(pt.steps):
            spath = f"{ppath}.steps[{j}]"
            unique(f"{spath}.sub_steps", [s.key for s in sp.sub_steps])
            subs = tuple(
                SubStep(
                    key=ss.key,
                    completion=expr(
                        f"{spath}.sub_steps[{k}].completion_condition", ss.completion_condition
                    ),
                    allow_manual_complete=ss.allow_manual_complete,
                    ref=f"{sp.key}/{ss.key}",
                )
                for k, ss in enumerate(sp.sub_steps)
            )
            steps.append(
                Step(
                    key=sp.key,
                    path=spath,
                    unlock=expr(f"{spath}.unlock_condition", sp.unlock_condition),
                    completion=expr(f"{spath}.completion_condition", sp.completion_condition),
                    reward=reward(f"{spath}.reward", sp.reward),
                    sub_steps=subs,
                )
            )
        paths.append(Path(pt.key, pt.audience, tuple(steps)))

    gates: dict[str, Gate] = {}
    for i, g in enumerate(spec.gates):
        tok = tokens.get(g.token)
        if tok is None:
            p(f"gates[{i}].token", f"unknown token {g.token!r}")
        elif not tok.spendable:
            p(f"gates[{i}].token", f"gate token {g.token!r} must be a primary (spendable) token")
        gates[g.key] = Gate(g.key, g.token, g.cost)

    decay: list[Decay] = []
    for i, d in enumerate(spec.decay):
        if d.skill not in skills:
            p(f"decay[{i}].skill", f"unknown skill {d.skill!r}")
        decay.append(
            Decay(
                key=d.key or f"decay[{i}]",
                skill=d.skill,
                cadence=d.cadence,
                amount=d.amount,
                floor=d.floor,
                grace_days=d.grace_days,
                apply_only_above=d.apply_only_above,
            )
        )
    unique("decay", [d.key for d in decay])

    if problems.items:
        raise RulebookError(problems.items)

    version = hashlib.sha256(
        _canonical_json(spec.model_dump(mode="json")).encode("utf-8")
    ).hexdigest()[:16]
    return Rulebook(
        spec=spec,
        version=version,
        timezone=spec.timezone,
        tz=tz,
        audiences=audiences,
        event_types=event_types,
        skills=skills,
        tokens=tokens,
        coin_rules=tuple(coin_rules),
        skill_rules=tuple(skill_rules),
        token_rules=tuple(token_rules),
        streaks=tuple(streaks),
        badges=tuple(badges),
        stages=tuple(stages),
        auto_evolve=spec.evolution.auto_evolve,
        paths=tuple(paths),
        gates=gates,
        decay=tuple(decay),
        symbols=symbols,
        coin_rules_by_type=_index(coin_rules),
        skill_rules_by_type=_index(skill_rules),
        token_rules_by_type=_index(token_rules),
        streaks_by_type=_streak_index(streaks),
    )


def _streak_index(streaks: list[Streak]) -> dict[str, tuple[Streak, ...]]:
    out: dict[str, list[Streak]] = {}
    for s in streaks:
        for ev in sorted(s.events):
            out.setdefault(ev, []).append(s)
    return {k: tuple(v) for k, v in out.items()}


def _find_cycle(graph: dict[str, list[str]]) -> list[str] | None:
    """Return one prerequisite cycle as a list of keys (first repeated at the end), or None."""
    white, grey, black = 0, 1, 2
    colour = dict.fromkeys(graph, white)
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        colour[node] = grey
        stack.append(node)
        for nxt in graph.get(node, []):
            if nxt not in colour or nxt == node:
                continue
            if colour[nxt] == grey:
                return [*stack[stack.index(nxt) :], nxt]
            if colour[nxt] == white:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        colour[node] = black
        return None

    for n in graph:
        if colour[n] == white:
            found = visit(n)
            if found:
                return found
    return None
