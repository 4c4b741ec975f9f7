"""The value types shared by the checker, the fast evaluator and the reference evaluator."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

__all__ = [
    "MAX_DEPTH",
    "MAX_INT_BITS",
    "MAX_POWER",
    "MAX_ROUND_DIGITS",
    "MAX_SEQUENCE_LENGTH",
    "MAX_SOURCE_LENGTH",
    "EvalFailure",
    "ExpressionError",
    "Symbols",
]

#: Longest expression source accepted at load time (SPEC §5).
MAX_SOURCE_LENGTH = 4_000
#: Deepest nesting accepted at load time, counted both on brackets and on the syntax tree.
MAX_DEPTH = 64
#: Largest ``**`` exponent (and base, as in simpleeval's ``safe_power``) in absolute value.
MAX_POWER = 1_000
#: Longest string or sequence that ``*`` or ``+`` may build (simpleeval's MAX_STRING_LENGTH).
MAX_SEQUENCE_LENGTH = 100_000
#: Widest integer ``*`` may build. SPEC §5 is silent here; without a bound, a 4,000-character
#: product of ``1000**1000`` terms costs seconds of CPU, so a product wider than this fails.
MAX_INT_BITS = 100_000
#: Largest ``ndigits`` accepted by ``round``: ``round(5, -10**8)`` would compute ``10**10**8``.
MAX_ROUND_DIGITS = 1_000


def _frozen(values: Iterable[str]) -> frozenset[str]:
    # A lone string is almost certainly a mistake (it would become a set of characters).
    if isinstance(values, str):
        raise TypeError("expected a collection of names, got a single string")
    return frozenset(values)


@dataclass(frozen=True, init=False)
class Symbols:
    """What a rulebook declares; used to reject unknown references at load time.

    Each argument takes any iterable of names (a set, a list...) and is stored as a
    ``frozenset``. ``event_types`` holds every registered event type, whatever its audience.
    """

    skills: frozenset[str]
    tokens: frozenset[str]
    streaks: frozenset[str]
    badges: frozenset[str]
    event_types: frozenset[str]

    def __init__(
        self,
        skills: Iterable[str] = (),
        tokens: Iterable[str] = (),
        streaks: Iterable[str] = (),
        badges: Iterable[str] = (),
        event_types: Iterable[str] = (),
    ) -> None:
        # Frozen sets keep the value hashable and immutable whatever the caller held.
        object.__setattr__(self, "skills", _frozen(skills))
        object.__setattr__(self, "tokens", _frozen(tokens))
        object.__setattr__(self, "streaks", _frozen(streaks))
        object.__setattr__(self, "badges", _frozen(badges))
        object.__setattr__(self, "event_types", _frozen(event_types))


class ExpressionError(Exception):
    """A problem found while checking an expression at load time.

    Attributes:
        message: what is wrong, for a human (without the position).
        column: 1-based column, in characters, where the problem is.
        line: 1-based line of the source (1 for the usual single-line expression).
    """

    message: str
    column: int
    line: int

    def __init__(self, message: str, column: int, line: int = 1) -> None:
        super().__init__(message, column, line)
        self.message = message
        self.column = column
        self.line = line

    def __str__(self) -> str:
        where = (
            f"column {self.column}" if self.line == 1 else f"line {self.line}, column {self.column}"
        )
        return f"{self.message} (at {where})"


@dataclass(frozen=True, slots=True)
class EvalFailure:
    """Returned, never raised, when an evaluation fails at run time.

    ``reason`` is for humans and traces, e.g. ``"missing property 'score'"``,
    ``"type mismatch: '<' not supported between 'str' and 'int'"`` or
    ``"exponent above 1000"``. A failure is falsy, so ``if expr.evaluate(ns):`` treats it
    as a false condition, never as a true one.
    """

    reason: str

    def __bool__(self) -> bool:
        """Always False: a failed evaluation never counts as true."""
        return False
