"""The condition language: check once, compile once, evaluate fast.

A condition (or an amount) is one expression in a safe subset of Python syntax (SPEC §5)::

    props.score >= 0.9 and event_count(lesson_completed) >= 10
    "first_lesson" in badges or streaks.daily_lesson.count >= 7
    coins * 2 + tokens.xp > 500

**Names**: ``event`` (``.type``, ``.audience``, ``.user_id``, ``.occurred_at``,
``.properties``), ``props`` (the event's properties), ``coins``, ``tokens.<key>``,
``skills.<key>.value|.level``, ``badges`` (a set of keys), ``streaks.<key>.count|.best``,
``counters.<event_type>`` (0 for a type never seen), ``stage`` and ``audience``.

**Functions**: ``event_count(type)`` (the type may be a bare name:
``event_count(module_finished)``), ``has_badge(key)``, ``skill_level(key)``, ``token(key)``,
``streak(key)``, ``min``, ``max``, ``abs``, ``round`` and ``len``. Positional arguments only.

**Syntax**: literals (numbers, strings, ``True``, ``False``, ``None``), list, tuple and set
displays of literals (for ``x in [...]``), ``and``/``or``/``not``, comparisons (chains too),
``in``/``not in``, ``is``/``is not`` against ``None``, ``True`` or ``False``, the arithmetic
operators ``+ - * / // % **`` and unary ``-``/``+``, ``x if c else y``, dot access and
subscripts with a string literal key (``props["my-key"]``).

Dot access on a mapping always reads its key (``counters.items`` is the counter of the
``items`` event type, ``props.get`` is a property named ``get``); on anything else it fails
at run time. It never reaches a Python attribute or method.

**Rejected when the rulebook loads** (:class:`ExpressionError`, with the column): syntax
errors, unknown names, functions, tokens, skills, streaks, badges and event types,
assignment, ``:=``, lambdas, comprehensions, f-strings, ``*`` unpacking, keyword arguments,
slices, dict displays, non-literal subscript keys, non-literal items in list displays,
bitwise operators, ``is`` against anything but None/True/False, attributes starting with
``_``, method calls, more than 4,000 characters, and nesting deeper than 64 levels (counted on
brackets, on runs of prefix operators, and on the syntax tree).

**At run time** a missing property, a type mismatch (including arithmetic or ordering with
``None``), a division by zero or a crossed limit makes the evaluation fail with an
:class:`EvalFailure` (a condition is then false and an amount 0). Limits: a ``**`` whose
exponent or base is above 1,000 in absolute value (as simpleeval's ``safe_power``), a string
or sequence built by ``*`` or ``+`` longer than 100,000 items, an integer product wider than
100,000 bits, ``round`` with more than 1,000 digits either way, and ``%`` string formatting.
Numbers follow Python's arithmetic, so ``0.57 * 100 >= 57`` is false.

simpleeval is the reference semantics: :func:`reference_evaluate` runs the same expression
through it and the test suite checks that both evaluators agree.
"""

from ._compiler import Expression, compile_expression
from ._model import EvalFailure, ExpressionError, Symbols
from ._reference import reference_evaluate

__all__ = [
    "EvalFailure",
    "Expression",
    "ExpressionError",
    "Symbols",
    "compile_expression",
    "reference_evaluate",
]
