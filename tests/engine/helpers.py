"""Small builders shared by the engine tests: rulebooks from a few sections, a buddy driver."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import buddyrules as br
from buddyrules import BuddyState, Effects, Outcome, Rulebook

if TYPE_CHECKING:
    from .strategies import History

#: Monday 2 March 2026, noon UTC: the default start of every test history.
T0 = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)

BASE: dict[str, Any] = {
    "name": "engine-test",
    "timezone": "UTC",
    "audiences": ["student"],
    "event_types": {"student": ["lesson", "quiz", "login", "module", "other"]},
}


def make_rulebook(**sections: Any) -> Rulebook:
    """A rulebook with the base header (one audience, five event types) plus ``sections``."""
    doc = copy.deepcopy(BASE)
    doc.update(copy.deepcopy(sections))
    return br.load_rulebook(doc)


def at(days: float = 0, hours: float = 0) -> datetime:
    """``T0`` plus a number of days and hours."""
    return T0 + timedelta(days=days, hours=hours)


def utc(text: str) -> datetime:
    """Parse an ISO-8601 instant (with offset)."""
    return datetime.fromisoformat(text)


def event(
    type_: str, when: datetime, user: str = "u1", audience: str | None = None, **props: Any
) -> dict[str, Any]:
    """A wire-shaped event dict."""
    out: dict[str, Any] = {
        "user_id": user,
        "type": type_,
        "occurred_at": when.isoformat(),
        "properties": props,
    }
    if audience is not None:
        out["audience"] = audience
    return out


@dataclass
class Buddy:
    """Drives one buddy through events, keeping the latest state and outcome."""

    rulebook: Rulebook
    state: BuddyState
    outcomes: list[Outcome] = field(default_factory=list)

    @classmethod
    def hatch(cls, rulebook: Rulebook, user: str = "u1", **kwargs: Any) -> Buddy:
        return cls(rulebook, br.new_buddy(rulebook, user, **kwargs))

    @property
    def last(self) -> Outcome:
        return self.outcomes[-1]

    def send(self, type_: str, when: datetime, *, explain: bool = False, **props: Any) -> Effects:
        """Evaluate one event and keep the new state; return its effects."""
        outcome = br.evaluate(
            self.rulebook,
            self.state,
            event(type_, when, self.state.user_id, **props),
            explain=explain,
        )
        self.outcomes.append(outcome)
        self.state = outcome.state
        return outcome.effects

    def apply(self, outcome: Outcome) -> Outcome:
        """Keep the state of an outcome produced elsewhere (admin, advance)."""
        self.outcomes.append(outcome)
        self.state = outcome.state
        return outcome


def trace_entry(effects: Effects, rule: str, kind: str | None = None) -> dict[str, Any]:
    """The trace entry of one rule (the last one if a rule appears twice)."""
    assert effects.trace is not None, "evaluate with explain=True"
    found = [
        dict(e) for e in effects.trace if e["rule"] == rule and (kind is None or e["kind"] == kind)
    ]
    assert found, f"no trace entry for {rule!r}: {effects.trace}"
    return found[-1]


def replay_history(
    history: History, *, explain: bool = False, unsettled: bool = False
) -> tuple[BuddyState, list[Outcome]]:
    """Run a history's steps (events and ``advance``) from its hatched buddy.

    ``unsettled`` hands each step a copy of the state read back from JSON, which never
    counts as settled, so every badge and path condition is tested (no incremental passes).
    """
    state = history.hatch()
    outcomes = []
    for step in history.steps:
        if unsettled:
            state = BuddyState.model_validate_json(state.model_dump_json())
        if step.event is not None:
            outcome = br.evaluate(history.rulebook, state, step.event, explain=explain)
        else:
            outcome = br.advance(history.rulebook, state, step.at)
        outcomes.append(outcome)
        state = outcome.state
    return state, outcomes


def assert_same_outcomes(
    a: list[Outcome], b: list[Outcome], state_a: BuddyState, state_b: BuddyState
) -> None:
    """Two runs gave the same effects, problems, ledger, notifications and final state."""
    assert [json.dumps(o.effects.to_wire(include_trace=False)) for o in a] == [
        json.dumps(o.effects.to_wire(include_trace=False)) for o in b
    ]
    assert [o.effects.problems for o in a] == [o.effects.problems for o in b]
    # Every field but the trace (which Effects leaves out of ==): skills, paths...
    assert [o.effects for o in a] == [o.effects for o in b]
    assert [o.ledger for o in a] == [o.ledger for o in b]
    assert [o.notifications for o in a] == [o.notifications for o in b]
    assert state_a.model_dump_json() == state_b.model_dump_json()


@contextmanager
def incremental_always(rulebook: Rulebook) -> Iterator[None]:
    """Use incremental passes for ``rulebook`` even below ``MIN_SKIPPABLE`` conditions."""
    index = rulebook.dependencies
    before = index.worthwhile
    index.worthwhile = True
    try:
        yield
    finally:
        index.worthwhile = before
