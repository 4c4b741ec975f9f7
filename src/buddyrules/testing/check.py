"""``check_rulebook``: property-based checking of a rulebook, and the ``buddyrules check`` glue.

:func:`check_rulebook` draws histories with Hypothesis (:func:`~buddyrules.testing.strategies.
scenarios`), plays each one through the pure engine (:func:`~buddyrules.testing.invariants.
play`) and checks every invariant on every step: the built-in ones
(:data:`~buddyrules.testing.invariants.STEP_INVARIANTS`, split/resume equivalence and
idempotent replay through an :class:`~buddyrules.service.Engine`) and your own. When one
breaks, Hypothesis shrinks the history to a minimal one and :class:`RulebookCheckFailed` (an
``AssertionError``) carries it, printed as a table. Otherwise the :class:`CheckReport` says
how many histories ran, which badges and stages no history reached (with the condition that
never held) and which evaluation problems were seen (with an event that caused each).

Runs are reproducible: without ``seed`` Hypothesis is derandomized (the same rulebook gives
the same histories every time); with ``seed`` the run is random but repeatable with that seed.
No example database is written.
"""

from __future__ import annotations

import json
import os
import pickle
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from hypothesis import HealthCheck, Phase, Verbosity, given, settings, target
from hypothesis import seed as hypothesis_seed

from buddyrules.errors import BuddyRulesError
from buddyrules.rulebook.compiled import Rulebook
from buddyrules.rulebook.load import load_rulebook
from buddyrules.testing.invariants import (
    STEP_INVARIANTS,
    AdminStep,
    InvariantViolation,
    Playthrough,
    Step,
    StepInvariant,
    invariant_name,
    no_evaluation_problems,
    play,
    replay_is_idempotent,
    run_step_invariants,
    split_resume_equivalent,
)
from buddyrules.testing.strategies import Scenario, scenarios

__all__ = [
    "CheckReport",
    "EvaluationProblem",
    "RulebookCheckFailed",
    "Unreached",
    "check_rulebook",
    "cli_check",
    "format_history",
]

RulebookSource = Rulebook | str | os.PathLike[str] | Mapping[str, Any]


@dataclass(frozen=True)
class Unreached:
    """A badge or stage that no generated history reached.

    Attributes:
        kind: ``"badge"`` or ``"stage"``.
        key: the badge key, or ``"2"``.. for a stage.
        name: the stage name (the badge key for a badge).
        condition: the ``when`` that never held (None when there is none).
        note: why, in words.
    """

    kind: str
    key: str
    name: str
    condition: str | None
    note: str

    def __str__(self) -> str:
        label = f"badge {self.key!r}" if self.kind == "badge" else f"stage {self.key} ({self.name})"
        return f"{label}: {self.note}"


@dataclass(frozen=True)
class EvaluationProblem:
    """A condition or amount that failed to evaluate (the rule then grants 0 / is false).

    Attributes:
        rule: the rule, badge or path key.
        reason: the first reason seen, e.g. ``"amount: negative amount -3"``.
        event: the simplest event seen causing it (wire shape).
        count: how many times it was seen (over all histories).
    """

    rule: str
    reason: str
    event: dict[str, Any]
    count: int

    def __str__(self) -> str:
        return (
            f"{self.rule}: {self.reason} ({self.count} time{'s' if self.count != 1 else ''}), "
            f"e.g. {json.dumps(self.event, sort_keys=False)}"
        )


@dataclass(frozen=True)
class CheckReport:
    """What a passing :func:`check_rulebook` run saw."""

    rulebook: str
    version: str
    histories: int
    events: int
    max_examples: int
    seed: int | None
    invariants: tuple[str, ...]
    unreached_badges: tuple[Unreached, ...] = ()
    unreached_stages: tuple[Unreached, ...] = ()
    problems: tuple[EvaluationProblem, ...] = ()
    skipped: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        """Always True: a failing check raises :class:`RulebookCheckFailed` instead."""
        return True

    def summary(self) -> str:
        """A few lines for a terminal."""
        lines = [
            f"rulebook {self.rulebook!r} (version {self.version}): all invariants hold over "
            f"{self.histories} histories ({self.events} events)",
            "invariants: " + ", ".join(self.invariants),
        ]
        lines += [f"skipped: {s}" for s in self.skipped]
        unreached = (*self.unreached_badges, *self.unreached_stages)
        if unreached:
            lines.append("never reached by any generated history:")
            lines += [f"  {u}" for u in unreached]
        if self.problems:
            lines.append("evaluation problems seen (the condition is false, the amount 0):")
            lines += [f"  {p}" for p in self.problems]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()

    def to_dict(self) -> dict[str, Any]:
        """A JSON-compatible mapping."""
        return {
            "rulebook": self.rulebook,
            "version": self.version,
            "histories": self.histories,
            "events": self.events,
            "max_examples": self.max_examples,
            "seed": self.seed,
            "invariants": list(self.invariants),
            "unreached_badges": [u.__dict__ for u in self.unreached_badges],
            "unreached_stages": [u.__dict__ for u in self.unreached_stages],
            "problems": [p.__dict__ for p in self.problems],
            "skipped": list(self.skipped),
        }


class RulebookCheckFailed(AssertionError):
    """An invariant broke; carries the minimal failing history Hypothesis shrank to.

    Attributes:
        rulebook: the rulebook's name.
        invariant: the name of the invariant that broke.
        message: what it said.
        events: the minimal failing history (wire-shaped dicts).
        timezones: the buddies' own timezones in that history (None: the rulebook's).
        step_index: the event it broke at (None for a whole-history invariant).
        table: the history as a readable table, with the effects of every event.
    """

    def __init__(
        self,
        rulebook: str,
        invariant: str,
        message: str,
        events: Sequence[Mapping[str, Any]],
        timezones: Mapping[str, str | None],
        step_index: int | None,
        table: str,
        seed: int | None = None,
    ) -> None:
        self.rulebook = rulebook
        self.invariant = invariant
        self.message = message
        self.events = [dict(e) for e in events]
        self.timezones = dict(timezones)
        self.step_index = step_index
        self.table = table
        self.seed = seed
        super().__init__(self._render())

    def _render(self) -> str:
        where = f" at event #{self.step_index}" if self.step_index is not None else ""
        zones = {u: z for u, z in self.timezones.items() if z}
        lines = [
            f"rulebook {self.rulebook!r} breaks invariant `{self.invariant}`{where}:",
            *(f"  {line}" for line in self.message.splitlines()),
            "",
            f"Minimal failing history ({len(self.events)} event"
            f"{'s' if len(self.events) != 1 else ''}, shrunk by Hypothesis):",
            self.table,
        ]
        if zones:
            lines.append(
                "buddy timezones: " + ", ".join(f"{u}: {z}" for u, z in sorted(zones.items()))
            )
        if self.seed is not None:
            lines.append(f"reproduce with seed={self.seed}")
        lines.append("events (JSON lines):")
        lines += [json.dumps(e) for e in self.events]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self._render()


# -- the history table -----------------------------------------------------------------------


def _effects_summary(entry: Step | AdminStep) -> str:
    e = entry.effects
    parts: list[str] = []
    if e.coins:
        parts.append(f"+{e.coins} coins")
    if e.tokens:
        parts.append("tokens " + ", ".join(e.tokens))
    for skill in e.skills:
        parts.append(f"{skill.get('skill')} {skill.get('delta', 0):+}")
    for change in e.streaks:
        kind = change.get("change")
        if kind == "ticked":
            parts.append(f"{change.get('streak')} streak {change.get('count')}")
        elif kind == "burned":
            parts.append(f"{change.get('streak')} streak burned")
        elif kind == "frozen":
            parts.append(f"{change.get('streak')} froze {change.get('freezes_used')}")
    for m in e.streak_milestones:
        parts.append(f"milestone {m.get('streak')}:{m.get('count')}")
    if e.badges_awarded:
        parts.append("badges " + ", ".join(e.badges_awarded))
    if e.badges_ready:
        parts.append("ready " + ", ".join(e.badges_ready))
    if e.evolved_to is not None:
        parts.append(f"evolved to stage {e.evolved_to}")
    elif e.evolution_ready:
        parts.append("evolution ready")
    for p in e.problems:
        parts.append(f"problem {p.get('rule')}: {p.get('reason')}")
    if not parts and e.debug_reason:
        parts.append(f"({e.debug_reason})")
    balance = f"[coins {entry.after.coins}, stage {entry.after.stage}]"
    return "; ".join([*parts, balance])


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for r, row in enumerate(rows):
        line = "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip()
        lines.append(line)
        if r == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def format_history(playthrough: Playthrough, *, mark: int | None = None) -> str:
    """A played history as a text table: time, user, type, properties, effects summary.

    Admin actions of the attentive admin appear as their own rows; ``mark`` puts an arrow on
    the row of that event index.
    """
    rows = [["", "#", "occurred_at", "user", "type", "properties", "effects"]]
    for entry in playthrough.entries:
        if isinstance(entry, Step):
            ev = entry.event
            rows.append(
                [
                    "->" if entry.index == mark else "",
                    str(entry.index),
                    str(ev.get("occurred_at", "")),
                    str(ev.get("user_id", "")),
                    str(ev.get("type", "")),
                    json.dumps(ev.get("properties", {})),
                    _effects_summary(entry),
                ]
            )
        else:
            rows.append(
                [
                    "",
                    "",
                    "",
                    entry.user_id,
                    f"admin {entry.action} {entry.detail}",
                    "",
                    _effects_summary(entry),
                ]
            )
    played = {e.index for e in playthrough.entries if isinstance(e, Step)}
    for index, ev in enumerate(playthrough.events):
        if index not in played:
            rows.append(
                [
                    "",
                    str(index),
                    str(ev.get("occurred_at", "")),
                    str(ev.get("user_id", "")),
                    str(ev.get("type", "")),
                    json.dumps(ev.get("properties", {})),
                    "(not reached)",
                ]
            )
    return _table(rows)


# -- what a run saw --------------------------------------------------------------------------


_NUMBER = re.compile(r"-?\d+(\.\d+)?(e-?\d+)?")


@dataclass
class _Stats:
    histories: int = 0
    events: int = 0
    badges: set[str] = field(default_factory=set)
    stage: int = 1
    problems: dict[tuple[str, str], tuple[str, dict[str, Any], int]] = field(default_factory=dict)

    def record(self, pt: Playthrough) -> None:
        self.histories += 1
        progress = max(
            (len(s.badges) + len(s.badges_ready) + s.stage for s in pt.states.values()), default=0
        )
        # Steer generation towards histories that get further (Hypothesis's target phase).
        target(float(progress), label="badges and stage of the furthest buddy")
        self.events += len(pt.steps)
        for entry in pt.entries:
            after = entry.after
            self.badges.update(after.badges)
            self.badges.update(after.badges_ready)
            stage = after.stage + (1 if entry.effects.evolution_ready else 0)
            self.stage = max(self.stage, stage)
            if isinstance(entry, Step):
                for p in entry.effects.problems:
                    rule, reason = str(p.get("rule")), str(p.get("reason"))
                    key = (rule, _NUMBER.sub("#", reason))
                    seen = self.problems.get(key)
                    if seen is None:
                        self.problems[key] = (reason, entry.event, 1)
                    else:
                        first, event, count = seen
                        simpler = len(json.dumps(entry.event)) < len(json.dumps(event))
                        self.problems[key] = (
                            reason if simpler else first,
                            entry.event if simpler else event,
                            count + 1,
                        )


def _unreached(rulebook: Rulebook, stats: _Stats) -> tuple[tuple[Unreached, ...], ...]:
    rewarded: dict[str, list[str]] = {}
    for s in rulebook.streaks:
        for count, reward in s.milestones:
            if reward.badge:
                rewarded.setdefault(reward.badge, []).append(f"streak {s.key} milestone {count}")
        if s.tick_reward.badge:
            rewarded.setdefault(s.tick_reward.badge, []).append(f"streak {s.key} tick")
    for b in rulebook.badges:
        if b.reward.badge:
            rewarded.setdefault(b.reward.badge, []).append(f"badge {b.key}")
    for p in rulebook.paths:
        for step in p.steps:
            if step.reward.badge:
                rewarded.setdefault(step.reward.badge, []).append(f"path step {p.key}/{step.key}")
    badges: list[Unreached] = []
    for b in rulebook.badges:
        if b.key in stats.badges:
            continue
        missing = [r for r in b.requires if r not in stats.badges]
        source = b.when.source if b.when is not None else None
        notes: list[str] = []
        if missing:
            notes.append(f"requires {', '.join(missing)}, never reached")
        if source is not None and not missing:
            notes.append(f"its condition never held: `{source}`")
        elif source is not None:
            notes.append(f"condition `{source}`")
        if source is None:
            notes.append("no `when`: only a reward or an admin awards it")
        if b.key in rewarded:
            notes.append("awarded by " + ", ".join(rewarded[b.key]) + ", never paid")
        badges.append(Unreached("badge", b.key, b.key, source, "; ".join(notes)))
    stages: list[Unreached] = []
    for stage in rulebook.stages[stats.stage :]:
        source = stage.when.source if stage.when is not None else None
        stages.append(
            Unreached(
                "stage",
                str(stage.number),
                stage.name,
                source,
                f"its condition never held: `{source}`"
                if stage.number == stats.stage + 1
                else f"stage {stats.stage + 1} was never reached (condition `{source}`)",
            )
        )
    return tuple(badges), tuple(stages)


def _problems(stats: _Stats) -> tuple[EvaluationProblem, ...]:
    return tuple(
        EvaluationProblem(rule, reason, event, count)
        for (rule, _), (reason, event, count) in sorted(stats.problems.items())
    )


# -- the check -------------------------------------------------------------------------------


def _replay_available(rulebook: Rulebook) -> str | None:
    """None when idempotent replay can run; else why it is skipped."""
    try:
        from buddyrules.service import Engine
        from buddyrules.storage.memory import MemoryStore
    except ImportError as exc:  # the service is optional for the pure checks
        return f"replay_is_idempotent (the Engine is not available: {exc})"
    try:
        Engine(store=MemoryStore()).publish(rulebook)
    except BuddyRulesError as exc:
        return f"replay_is_idempotent (the Engine refuses to publish the rulebook: {exc.message})"
    return None


def _resume_copy(rulebook: Rulebook) -> Rulebook:
    """An unpickled copy, as a worker process that resumes would get."""
    copy: Rulebook = pickle.loads(pickle.dumps(rulebook))
    return copy


def check_rulebook(
    rulebook: RulebookSource,
    *,
    max_examples: int = 100,
    invariants: Sequence[StepInvariant] = (),
    seed: int | None = None,
    users: int | Sequence[str] = 2,
    days: int = 90,
    max_events: int = 40,
    admin: bool = True,
    timezones: bool = True,
    fail_on_problems: bool = False,
) -> CheckReport:
    """Check a rulebook's invariants over generated histories.

    Args:
        rulebook: a compiled :class:`~buddyrules.Rulebook`, a file path or a mapping.
        max_examples: how many histories Hypothesis generates (at most).
        invariants: your own step invariants (callables taking a
            :class:`~buddyrules.testing.invariants.Step`, failing by raising
            ``AssertionError`` or returning ``False``), run after the built-in ones.
        seed: None for a derandomized (fixed) run; an int for a random run reproducible
            with that seed.
        users, days, max_events: the shape of each history (see
            :func:`~buddyrules.testing.strategies.histories`).
        admin: play an attentive admin who awards ready manual badges and evolves ready
            buddies (so that every badge and stage is reachable).
        timezones: give some buddies their own timezone (see
            :data:`~buddyrules.testing.strategies.OTHER_TIMEZONES`).
        fail_on_problems: treat any evaluation problem as a failure (shrunk like the
            others) instead of reporting it.

    Returns:
        a :class:`CheckReport` when every invariant holds.

    Raises:
        RulebookCheckFailed: an invariant broke; it carries the minimal failing history.
        RulebookError: the rulebook does not load.
    """
    __tracebackhide__ = True  # pytest: show the failing history, not this function
    rb = load_rulebook(rulebook)
    if max_examples < 1:
        raise ValueError("max_examples must be at least 1")
    step_invariants: list[StepInvariant] = [*STEP_INVARIANTS]
    if fail_on_problems:
        step_invariants.append(no_evaluation_problems)
    step_invariants += list(invariants)
    skipped: list[str] = []
    replay_skip = _replay_available(rb)
    if replay_skip is not None:
        skipped.append(replay_skip)
    names = [invariant_name(i) for i in step_invariants]
    names.append("split_resume_equivalent")
    if replay_skip is None:
        names.append("replay_is_idempotent")
    names.append("engine_never_raises")
    resume_rb = _resume_copy(rb)
    stats = _Stats()

    def check_one(scenario: Scenario) -> None:
        try:
            pt = play(rb, scenario.events, timezones=scenario.timezones, admin=admin)
            run_step_invariants(pt, step_invariants)
            split_resume_equivalent(
                rb,
                scenario.events,
                at=scenario.split_at,
                timezones=scenario.timezones,
                admin=admin,
                resume_rulebook=resume_rb,
                baseline=pt,
            )
            if replay_skip is None:
                replay_is_idempotent(
                    rb,
                    scenario.events,
                    timezones=scenario.timezones,
                    core=pt,
                )
        except InvariantViolation as violation:
            raise _failure(rb, scenario, violation, admin, seed) from None
        stats.record(pt)

    test = given(scenarios(rb, users=users, days=days, max_events=max_events, timezones=timezones))(
        check_one
    )
    test = settings(
        max_examples=max_examples,
        derandomize=seed is None,
        database=None,
        deadline=None,
        print_blob=False,
        report_multiple_bugs=False,
        verbosity=Verbosity.quiet,
        suppress_health_check=list(HealthCheck),
        phases=(Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink),
    )(test)
    if seed is not None:
        test = hypothesis_seed(seed)(test)
    try:
        test()
    except RulebookCheckFailed as failure:
        # Hypothesis adds notes (the falsifying example); the message already has it all.
        if hasattr(failure, "__notes__"):
            del failure.__notes__
        raise failure.with_traceback(None) from None
    badges, stages = _unreached(rb, stats)
    return CheckReport(
        rulebook=rb.name,
        version=rb.version,
        histories=stats.histories,
        events=stats.events,
        max_examples=max_examples,
        seed=seed,
        invariants=tuple(names),
        unreached_badges=badges,
        unreached_stages=stages,
        problems=_problems(stats),
        skipped=tuple(skipped),
    )


def _failure(
    rb: Rulebook,
    scenario: Scenario,
    violation: InvariantViolation,
    admin: bool,
    seed: int | None,
) -> RulebookCheckFailed:
    pt = violation.playthrough
    if pt is None:
        pt = play(rb, scenario.events, timezones=scenario.timezones, admin=admin)
    return RulebookCheckFailed(
        rulebook=rb.name,
        invariant=violation.invariant,
        message=violation.message,
        events=scenario.events,
        timezones=scenario.timezones,
        step_index=violation.step_index,
        table=format_history(pt, mark=violation.step_index),
        seed=seed,
    )


# -- CLI glue --------------------------------------------------------------------------------


def cli_check(
    paths: Sequence[str | os.PathLike[str]],
    *,
    examples: int = 100,
    seed: int | None = None,
    fail_on_problems: bool = False,
    echo: Callable[..., None] | None = None,
) -> int:
    """What ``buddyrules check RULES...`` does; returns the exit code.

    Prints, for each rulebook, ``all invariants hold over N histories`` and the report (exit
    0), or the shrunk counterexample as a table with the invariant it broke (exit 1). A
    rulebook that does not load also exits 1, with its problems. With
    ``fail_on_problems``, an expression that cannot be evaluated on some generated event is a
    failure too (invariant ``no_evaluation_problems``).
    """
    if echo is None:
        import click

        echo = click.echo
    code = 0
    for path in paths:
        try:
            report = check_rulebook(
                path, max_examples=examples, seed=seed, fail_on_problems=fail_on_problems
            )
        except RulebookCheckFailed as failure:
            echo(f"{os.fspath(path)}: FAILED")
            echo(str(failure))
            code = 1
            continue
        except BuddyRulesError as exc:
            echo(f"{os.fspath(path)}: cannot load: {exc.message}")
            code = 1
            continue
        echo(f"{os.fspath(path)}: {report.summary()}")
    return code
