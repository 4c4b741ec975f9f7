"""Run-time helpers: the guarded operators, the state functions and failure reasons.

The fast evaluator binds these into its compiled functions. The reference evaluator uses the
state functions too (they are the language's function set), but implements its own operator
guards on top of simpleeval's, so the differential tests compare two independent versions.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from ._model import MAX_INT_BITS, MAX_POWER, MAX_ROUND_DIGITS, MAX_SEQUENCE_LENGTH

__all__ = [
    "LimitExceeded",
    "failure_reason",
    "guarded_add",
    "guarded_mod",
    "guarded_mul",
    "guarded_pow",
    "guarded_round",
    "short_repr",
    "skill_level_of",
    "streak_count_of",
]

_MAX_MESSAGE = 200
# TypeError texts raised when a subscript (compiled dot access) meets a non-mapping.
_NOT_A_MAPPING = re.compile(
    r"^(?:(?P<indices>\w+) indices must be integers|'(?P<object>\w+)' object is not subscriptable)"
)
_TYPE_NAMES = {
    "string": "a string",
    "str": "a string",
    "int": "a number",
    "float": "a number",
    "bool": "a boolean",
    "NoneType": "None",
    "list": "a list",
    "tuple": "a tuple",
    "set": "a set",
    "frozenset": "a set",
}


class LimitExceeded(Exception):
    """A resource limit was crossed during one evaluation; it becomes an EvalFailure."""


def short_repr(value: object) -> str:
    """A bounded ``repr`` for messages: never huge, never raising."""
    try:
        text = repr(value)
    except ValueError:
        # int -> str refuses more than sys.get_int_max_str_digits() digits.
        return "a very large number"
    return text if len(text) <= 60 else text[:57] + "..."


def _too_long(total: object) -> LimitExceeded:
    return LimitExceeded(
        f"string or sequence of {total} items is longer than {MAX_SEQUENCE_LENGTH}"
    )


def guarded_add(left: Any, right: Any) -> Any:
    """``left + right``, failing when two sized operands would join above the length limit."""
    if hasattr(left, "__len__") and hasattr(right, "__len__"):
        total = len(left) + len(right)
        if total > MAX_SEQUENCE_LENGTH:
            raise _too_long(total)
    return left + right


def guarded_mul(left: Any, right: Any) -> Any:
    """``left * right`` with the repetition limit and the integer width limit."""
    if hasattr(left, "__len__"):
        if hasattr(right, "__len__"):
            # Python refuses sized * sized anyway; checking first avoids computing
            # ``right * len(left)``, which for two long lists is itself a huge list.
            raise TypeError(f"can't multiply {type(left).__name__} by {type(right).__name__}")
        total = right * len(left)
        if total > MAX_SEQUENCE_LENGTH:
            raise _too_long(total)
    elif hasattr(right, "__len__"):
        total = left * len(right)
        if total > MAX_SEQUENCE_LENGTH:
            raise _too_long(total)
    result = left * right
    if type(result) is int and result.bit_length() > MAX_INT_BITS:
        raise LimitExceeded(f"integer wider than {MAX_INT_BITS} bits")
    return result


def guarded_pow(base: Any, exponent: Any) -> Any:
    """``base ** exponent`` with simpleeval's rule: both must be at most MAX_POWER in size."""
    if abs(exponent) > MAX_POWER:
        raise LimitExceeded(f"exponent above {MAX_POWER}")
    if abs(base) > MAX_POWER:
        raise LimitExceeded(f"base of ** above {MAX_POWER}")
    return base**exponent


def guarded_mod(left: Any, right: Any) -> Any:
    """``left % right`` for numbers; string formatting is refused.

    ``"%0999999999d" % 1`` would build a gigabyte string, and formatting is not part of
    the language anyway.
    """
    if isinstance(left, str):
        raise LimitExceeded("string formatting with % is not supported")
    return left % right


def guarded_round(number: Any, ndigits: Any = None) -> Any:
    """Python's ``round`` with ``ndigits`` limited to MAX_ROUND_DIGITS in size."""
    if ndigits is None:
        return round(number)
    if isinstance(ndigits, int) and abs(ndigits) > MAX_ROUND_DIGITS:
        raise LimitExceeded(f"round() digits above {MAX_ROUND_DIGITS}")
    return round(number, ndigits)


def skill_level_of(skills: Mapping[str, Mapping[str, int]], key: Any) -> Any:
    """``skill_level(key)``: the level of a skill, 0 for an unknown key."""
    entry = skills.get(key)
    return 0 if entry is None else entry["level"]


def streak_count_of(streaks: Mapping[str, Mapping[str, int]], key: Any) -> Any:
    """``streak(key)``: the current count of a streak, 0 for an unknown key."""
    entry = streaks.get(key)
    return 0 if entry is None else entry["count"]


def _clip(text: str) -> str:
    return text if len(text) <= _MAX_MESSAGE else text[: _MAX_MESSAGE - 3] + "..."


def failure_reason(error: BaseException) -> str:
    """Turn an exception raised while evaluating into a short human reason."""
    if isinstance(error, LimitExceeded):
        return str(error)
    if isinstance(error, KeyError):
        key = error.args[0] if error.args else "?"
        return f"missing property {short_repr(key)}"
    if isinstance(error, ZeroDivisionError):
        return "division by zero"
    if isinstance(error, TypeError):
        message = str(error)
        # Dot access compiles to a subscript; say what happened in the language's terms.
        unreadable = _NOT_A_MAPPING.search(message)
        if unreadable is not None:
            kind = unreadable.group("indices") or unreadable.group("object")
            return f"cannot read a field of {_TYPE_NAMES.get(kind, 'a ' + kind)}"
        # Python says "between instances of 'str' and 'int'"; the shorter form reads better.
        return _clip("type mismatch: " + message.replace("instances of ", ""))
    if isinstance(error, OverflowError):
        return _clip(f"number too large: {error}")
    if isinstance(error, RecursionError):
        return "value nested too deeply"
    if isinstance(error, MemoryError):
        return "out of memory"
    if isinstance(error, ValueError):
        return _clip(f"invalid value: {error}")
    return _clip(f"{type(error).__name__}: {error}")
