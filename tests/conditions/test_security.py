"""Sandbox escapes and resource exhaustion: each attempt is refused at load or fails fast.

The elapsed-time checks are resource bounds (an attack must not run for minutes or eat
gigabytes), not benchmarks: the limits are generous and the real times are microseconds.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from buddyrules.conditions import (
    EvalFailure,
    ExpressionError,
    compile_expression,
    reference_evaluate,
)

from .support import SYMBOLS, make_ns

# Seconds an attempt may take, at most, to be refused or to fail: far above the real cost.
BOUND = 5.0

REFUSED_AT_LOAD = [
    "().__class__.__bases__[0].__subclasses__()",
    "().__class__",
    "(1).__class__.__mro__",
    "''.__class__.__mro__[1].__subclasses__()",
    '__import__("os")',
    '__import__("os").system("echo hacked")',
    "__builtins__",
    "props.__class__",
    "props.__dict__",
    "event.__class__.__init__.__globals__",
    'props.__getitem__("score")',
    "min.__self__",
    '"{0.__class__}".format(props)',
    '"{}".format(props)',
    '"{0.__globals__}".format_map(props)',
    'props.get("score")',
    "props.keys()",
    "props.items.pop()",
    'f"{props}"',
    'f"{props.__class__}"',
    "lambda: 1",
    "(lambda: 1)()",
    "[x for x in props]",
    "{x: 1 for x in props}",
    "(x for x in props)",
    "(x := 1)",
    'getattr(props, "__class__")',
    'setattr(props, "x", 1)',
    'eval("1")',
    'exec("1")',
    'compile("1", "", "eval")',
    'open("/etc/passwd")',
    "type(props)",
    "globals()",
    "locals()",
    "vars()",
    "dir()",
    "print(1)",
    "breakpoint()",
    "help()",
    "input()",
    "ns",
    '_mul("a", 10**9)',
    "_Exception",
    "import os",
    "x = 1",
    "del props",
    "props.x; props.y",
    "props if 1 else __import__('os')",
    "1 if props else (lambda: 1)",
    "[*props]",
    "min(**props)",
    "min(props, key=len)",
    "props[1:2]",
    "props[props.x]",
    "{**props}",
    "a\x00b",
    "1" * 5000,
    "x" * 4001,
    "(" * 10_000 + ")" * 10_000,
    "(" * 1_999 + "1" + ")" * 1_999,
    "[" * 3_999,
    "not " * 10_000 + "True",
    "not " * 999 + "True",
    "-" * 10_000 + "1",
    "-" * 3_999 + "1",
    "+-" * 1_999 + "1",
    "2**" * 1_333 + "2",
    "1+" * 1_999 + "1",
    "1 if " * 300 + "1" + " else 1" * 300,
    "props" + ".a" * 1_997,
    "coins " + "< 1 " * 999,
]

FAILS_AT_RUN_TIME = [
    "9**9**9",
    "2**100000",
    "10**1001",
    "1001**1001",
    "(10**1000)**1000",
    "10.0**1000",
    '"a"*10**9',
    '"a"*100001',
    "[1]*10**7",
    "(1, 2)*10**7",
    '"ab"*50001',
    '("a"*100000)+("a"*100000)',
    "props.big_string * 2",
    "props.big_string + props.big_string",
    "props.big_list + props.big_list",
    "props.big_list * 2",
    "props.name * props.huge",
    "props.huge * props.name",
    "props.items * props.items",
    "round(5, -10**8)",
    "round(props.huge, -10**9)",
    '"%0999999999d" % 1',
    '"%s" % props',
    "props.name % props.items",
    "*".join(["(1000**1000)"] * 60),
    "*".join(["((1000**1000)*(1000**1000))"] * 30),
    " * ".join(["props.huge"] * 50),
    "props.format",
    "props.name.upper",
    "props.name.format",
    "props.items.append",
    "props.lesson.clear",
    'props["__class__"]',
    'props["__class__"]["__bases__"]',
    "event_count(props.items)",
    "event_count(props.lesson)",
    "has_badge(props.items)",
    "1/0",
    "coins % 0",
    "max(props.nothing)",
    "len(coins)",
]


def _attempt(source: str) -> Any:
    start = time.perf_counter()
    try:
        outcome: Any = compile_expression(source, SYMBOLS).evaluate(_hostile_ns())
    except ExpressionError as error:
        outcome = error
    assert time.perf_counter() - start < BOUND, source[:80]
    return outcome


def _hostile_ns() -> dict[str, Any]:
    props = {
        "name": "Ada",
        "items": [1, 2, 3],
        "lesson": {"level": "advanced"},
        "nothing": None,
        "huge": 10**4000,  # as big as JSON parsing allows by default
        "big_string": "x" * 60_000,
        "big_list": [0] * 60_000,
    }
    return make_ns(props=props)


@pytest.mark.parametrize("source", REFUSED_AT_LOAD, ids=lambda s: s[:40])
def test_escape_and_exhaustion_attempts_are_refused_at_load(source: str) -> None:
    outcome = _attempt(source)
    assert isinstance(outcome, ExpressionError), source[:80]
    assert outcome.column >= 1
    assert outcome.message


@pytest.mark.parametrize("source", FAILS_AT_RUN_TIME, ids=lambda s: s[:40])
def test_exhaustion_attempts_fail_fast_at_run_time(source: str) -> None:
    outcome = _attempt(source)
    assert isinstance(outcome, EvalFailure), (source[:80], outcome)


@pytest.mark.parametrize("source", REFUSED_AT_LOAD + FAILS_AT_RUN_TIME, ids=lambda s: s[:40])
def test_the_reference_evaluator_is_just_as_safe(source: str) -> None:
    start = time.perf_counter()
    outcome = reference_evaluate(source, _hostile_ns())
    assert time.perf_counter() - start < BOUND, source[:80]
    assert isinstance(outcome, EvalFailure), (source[:80], outcome)


def test_compiled_code_has_no_builtins() -> None:
    expression = compile_expression("coins > 1", SYMBOLS)
    assert expression.evaluate.__globals__["__builtins__"] == {}
    assert expression.test.__globals__["__builtins__"] == {}


def test_no_expression_result_is_a_python_callable_or_type() -> None:
    ns = _hostile_ns()
    for source in ("props", "event", "badges", "tokens", "skills", "streaks", "counters"):
        value = compile_expression(source, SYMBOLS).evaluate(ns)
        assert not callable(value), source
