"""Differential tests: the compiled evaluator agrees with simpleeval, the reference semantics.

Expressions are generated from the grammar and run on generated namespaces. Both evaluators
must give the same value of the same type (NaN equal to NaN), or both fail.
"""

from __future__ import annotations

import math
from typing import Any

from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from buddyrules.conditions import (
    EvalFailure,
    Expression,
    ExpressionError,
    compile_expression,
    reference_evaluate,
)

from .grammar import EXPRESSIONS, JSON_VALUES, namespaces
from .support import SYMBOLS, make_ns, same_value

SETTINGS = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


def compiled(source: str) -> Expression:
    """Compile a generated expression; skip the few a rulebook would rightly refuse."""
    try:
        return compile_expression(source, SYMBOLS)
    except ExpressionError as error:
        # A generated string literal given to a state function or put on the left of
        # `in badges`, or a bare name given to event_count, names something undeclared.
        assert error.message.startswith(
            (
                "unknown badge",
                "unknown event type",
                "unknown skill",
                "unknown token",
                "unknown streak",
            )
        ), (source, error)
        assume(False)
        raise


@SETTINGS
@given(source=EXPRESSIONS, ns=namespaces())
@example(source="(props.s) * (2)", ns=make_ns(props={"s": "a" * 50_001}))
@example(source="(props.s) + (props.s)", ns=make_ns(props={"s": "a" * 50_000}))
@example(source="(2) ** (1000)", ns=make_ns())
@example(source="(1001) ** (2)", ns=make_ns())
@example(source="(-8) ** (0.5)", ns=make_ns())
@example(source="(props.n) * (props.n)", ns=make_ns(props={"n": 10**4000}))
@example(source="(True) * (props.s)", ns=make_ns(props={"s": "ab"}))
@example(source="(props.items) * (props.items)", ns=make_ns(props={"items": [0] * 50_000}))
@example(source="((1e999) - (1e999)) == (props.n)", ns=make_ns(props={"n": math.nan}))
@example(source="counters.items + counters.get", ns=make_ns())
@example(source="event_count(items) if props.flag else (props.s) % (2)", ns=make_ns())
def test_compiled_evaluation_agrees_with_simpleeval(source: str, ns: dict[str, Any]) -> None:
    expression = compiled(source)
    fast = expression.evaluate(ns)
    reference = reference_evaluate(source, ns)
    assert same_value(fast, reference), f"{source!r}: compiled {fast!r}, simpleeval {reference!r}"


@SETTINGS
@given(source=EXPRESSIONS, ns=namespaces())
def test_test_and_amount_agree_with_evaluate(source: str, ns: dict[str, Any]) -> None:
    expression = compiled(source)
    value = expression.evaluate(ns)
    passed, reason = expression.test(ns)
    if isinstance(value, EvalFailure):
        assert (passed, reason) == (False, value.reason)
    else:
        assert (passed, reason) == (bool(value), None)

    granted, problem = expression.amount(ns)
    assert type(granted) is int and granted >= 0
    usable = (
        not isinstance(value, EvalFailure | bool)
        and isinstance(value, int | float)
        and math.isfinite(value)
        and value >= 0
    )
    if usable:
        assert (granted, problem) == (math.floor(value), None)
    else:
        assert granted == 0 and problem


@SETTINGS
@given(source=EXPRESSIONS, ns=namespaces())
def test_read_values_cover_reads(source: str, ns: dict[str, Any]) -> None:
    expression = compiled(source)
    values = expression.read_values(ns)
    assert tuple(values) == expression.reads
    assert len(set(expression.reads)) == len(expression.reads)


GARBAGE_NAMESPACES = st.dictionaries(
    st.sampled_from(
        ["event", "props", "coins", "tokens", "skills", "badges", "streaks", "counters", "stage"]
    ),
    st.one_of(JSON_VALUES, st.dictionaries(st.text(max_size=3), JSON_VALUES, max_size=3)),
)


@SETTINGS
@given(source=EXPRESSIONS, ns=GARBAGE_NAMESPACES)
def test_nothing_raises_even_on_a_namespace_that_breaks_the_contract(
    source: str, ns: dict[str, Any]
) -> None:
    expression = compiled(source)
    expression.evaluate(ns)
    expression.test(ns)
    expression.amount(ns)
    expression.read_values(ns)
    reference_evaluate(source, ns)
