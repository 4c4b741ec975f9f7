"""Check an expression once and compile it once into a plain Python function.

The checker walks the user's syntax tree (already known to be at most 64 levels deep) and
builds a second tree that reads the namespace directly: ``props.score`` becomes
``ns["props"]["score"]``, ``counters.x`` becomes ``ns["counters"].get("x", 0)``, and the few
operators that can exhaust memory or CPU become calls to guards, but only where the operand
types are not known at compile time to be small numbers. That tree is wrapped in
``try: return <expr> / except Exception: return <failure>`` and compiled with no builtins,
so an evaluation costs about what a hand-written lambda costs and never raises.

Dot access always compiles to a subscript with a string key. On a dict that reads the key;
on anything else (a string, a list, a number) Python raises TypeError, which becomes an
EvalFailure: no Python attribute or method is ever reachable.
"""

from __future__ import annotations

import ast
import copy
import enum
import json
import math
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal, NoReturn

from ._model import MAX_INT_BITS, MAX_POWER, EvalFailure, ExpressionError, Symbols
from ._runtime import (
    failure_reason,
    guarded_add,
    guarded_mod,
    guarded_mul,
    guarded_pow,
    guarded_round,
    short_repr,
    skill_level_of,
    streak_count_of,
)
from ._source import ParsedSource, parse_source

__all__ = ["HELPERS", "NAMES", "Expression", "amount_value", "check_source", "compile_expression"]

#: Function name -> (fewest, most) positional arguments; ``None`` means no upper bound.
_ARITY: Final[dict[str, tuple[int, int | None]]] = {
    "event_count": (1, 1),
    "has_badge": (1, 1),
    "skill_level": (1, 1),
    "token": (1, 1),
    "streak": (1, 1),
    "min": (1, None),
    "max": (1, None),
    "abs": (1, 1),
    "round": (1, 2),
    "len": (1, 1),
}
_EVENT_FIELDS: Final = ("type", "audience", "user_id", "occurred_at", "properties")
_SKILL_FIELDS: Final = ("value", "level")
_STREAK_FIELDS: Final = ("count", "best")
_MISSING: Final = "<missing>"

# Upper bound on the bits of an int whose origin is the buddy's state (balances, counts).
_STATE_BITS: Final = 64
# Any float, or an int made from one by round(), fits in this many bits.
_FLOAT_BITS: Final = 1024
# A successful guarded ** has |base|, |exponent| <= MAX_POWER, so its result is bounded too.
_POWER_BITS: Final = MAX_POWER.bit_length() * MAX_POWER

_BINARY_SYMBOLS: Final[dict[type[ast.operator], str]] = {
    ast.Add: "+",
    ast.Sub: "-",
    ast.Mult: "*",
    ast.Div: "/",
    ast.FloorDiv: "//",
    ast.Mod: "%",
    ast.Pow: "**",
    ast.BitAnd: "&",
    ast.BitOr: "|",
    ast.BitXor: "^",
    ast.LShift: "<<",
    ast.RShift: ">>",
    ast.MatMult: "@",
}
_ALLOWED_BINARY: Final = frozenset(
    {ast.Add, ast.Sub, ast.Mult, ast.Div, ast.FloorDiv, ast.Mod, ast.Pow}
)
_ALLOWED_COMPARE: Final = frozenset(
    {ast.Eq, ast.NotEq, ast.Lt, ast.LtE, ast.Gt, ast.GtE, ast.In, ast.NotIn, ast.Is, ast.IsNot}
)
_REJECTED: Final[dict[type[ast.AST], str]] = {
    ast.Lambda: "lambda is not allowed",
    ast.ListComp: "comprehensions are not allowed",
    ast.SetComp: "comprehensions are not allowed",
    ast.DictComp: "comprehensions are not allowed",
    ast.GeneratorExp: "comprehensions are not allowed",
    ast.NamedExpr: "assignment (:=) is not allowed",
    ast.JoinedStr: "f-strings are not allowed",
    ast.FormattedValue: "f-strings are not allowed",
    ast.Starred: "* unpacking is not allowed",
    ast.Slice: "slices are not supported",
    ast.Dict: "dict literals are not supported",
    ast.Await: "'await' is not allowed",
    ast.Yield: "'yield' is not allowed",
    ast.YieldFrom: "'yield' is not allowed",
}


class _Shape(enum.Enum):
    """What a name or a dotted path refers to, as far as the checker knows."""

    EVENT = "event"
    PROPS = "properties"
    JSON = "property value"
    TOKENS = "tokens"
    SKILLS = "skills"
    SKILL = "skill"
    STREAKS = "streaks"
    STREAK = "streak"
    COUNTERS = "counters"
    BADGES = "badges"
    NUMBER = "number"
    STRING = "string"


_ROOT_SHAPES: Final[dict[str, _Shape]] = {
    "event": _Shape.EVENT,
    "props": _Shape.PROPS,
    "coins": _Shape.NUMBER,
    "tokens": _Shape.TOKENS,
    "skills": _Shape.SKILLS,
    "badges": _Shape.BADGES,
    "streaks": _Shape.STREAKS,
    "counters": _Shape.COUNTERS,
    "stage": _Shape.NUMBER,
    "audience": _Shape.STRING,
}
#: The names an expression may use.
NAMES: Final = frozenset(_ROOT_SHAPES)


@dataclass(frozen=True)
class _Info:
    """What the checker knows about a value at compile time.

    ``unsized``: if the evaluation succeeds, the value has no length (a number, a bool or
    None), so it cannot be repeated or joined into a long sequence. ``bits``: an upper bound
    on the bit width of the value when it is an int, or None when unknown. ``kind`` is
    ``number``, ``bool``, ``str``, ``none``, ``collection`` or ``any``.
    """

    unsized: bool
    bits: int | None
    kind: str


_ANY: Final = _Info(False, None, "any")
_BOOL: Final = _Info(True, 1, "bool")
_STATE_NUMBER: Final = _Info(True, _STATE_BITS, "number")
_COLLECTION: Final = _Info(False, None, "collection")
_STRING: Final = _Info(False, None, "str")


def _shape_info(shape: _Shape) -> _Info:
    if shape is _Shape.NUMBER:
        return _STATE_NUMBER
    if shape is _Shape.STRING:
        return _STRING
    if shape is _Shape.JSON:
        return _ANY
    return _COLLECTION


def _join(infos: list[_Info]) -> _Info:
    """The info of a value that is one of several (``or``, ``if``/``else``, ``max``)."""
    unsized = all(info.unsized for info in infos)
    bits_known = [info.bits for info in infos if info.bits is not None]
    bits = max(bits_known) if unsized and len(bits_known) == len(infos) else None
    kinds = {info.kind for info in infos}
    return _Info(unsized, bits, kinds.pop() if len(kinds) == 1 else "any")


def render_path(path: tuple[str, ...]) -> str:
    """``("props", "my-key")`` -> ``props["my-key"]``; identifier keys use dots."""
    parts = [path[0]]
    for key in path[1:]:
        parts.append(f".{key}" if key.isidentifier() else f"[{json.dumps(key)}]")
    return "".join(parts)


def _ns(name: str) -> ast.expr:
    return _subscript(ast.Name(id="ns", ctx=ast.Load()), name)


def _subscript(value: ast.expr, key: str) -> ast.expr:
    return ast.Subscript(value=value, slice=ast.Constant(value=key), ctx=ast.Load())


def _get(mapping: ast.expr, key: ast.expr, default: int) -> ast.expr:
    return ast.Call(
        func=ast.Attribute(value=mapping, attr="get", ctx=ast.Load()),
        args=[key, ast.Constant(value=default)],
        keywords=[],
    )


def _call(helper: str, args: list[ast.expr]) -> ast.expr:
    return ast.Call(func=ast.Name(id=helper, ctx=ast.Load()), args=args, keywords=[])


def _literal_number(node: ast.expr) -> int | float | None:
    """The value of a numeric literal such as ``3``, ``-2.5`` or ``+1``; else None."""
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        value: int | float = node.value  # type: ignore[assignment]  # narrowed just above
        return value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        inner = _literal_number(node.operand)
        if inner is not None:
            return -inner if isinstance(node.op, ast.USub) else inner
    return None


def _is_singleton(node: ast.expr) -> bool:
    return isinstance(node, ast.Constant) and (
        node.value is None or node.value is True or node.value is False
    )


class _Checker:
    """Validates a parsed expression and builds the fast tree; records the paths it reads.

    With ``symbols=None`` the structure is still checked but declared keys are not (used by
    the reference evaluator and when unpickling an already checked expression).
    """

    def __init__(self, parsed: ParsedSource, symbols: Symbols | None) -> None:
        self._parsed = parsed
        self._symbols = symbols
        self._reads: list[tuple[tuple[int, int], tuple[str, ...]]] = []

    def reads(self) -> tuple[tuple[str, ...], ...]:
        """The paths read, in source order, without repeats."""
        seen: dict[tuple[str, ...], None] = {}
        for _, path in sorted(self._reads, key=lambda item: item[0]):
            seen.setdefault(path, None)
        return tuple(seen)

    # -- helpers ---------------------------------------------------------------------------

    def _fail(self, message: str, node: ast.AST) -> NoReturn:
        raise self._parsed.error(message, node)

    def _read(self, node: ast.AST, path: tuple[str, ...]) -> None:
        position = (getattr(node, "lineno", 1), getattr(node, "col_offset", 0))
        self._reads.append((position, path))

    def _declared(self, kind: str, key: str, node: ast.AST) -> None:
        if self._symbols is None:
            return
        declared: frozenset[str] = {
            "token": self._symbols.tokens,
            "skill": self._symbols.skills,
            "streak": self._symbols.streaks,
            "badge": self._symbols.badges,
            "event type": self._symbols.event_types,
        }[kind]
        if key not in declared:
            message = f"unknown {kind} {key!r}"
            if isinstance(node, ast.Attribute):
                raise self._parsed.attribute_error(message, node)
            self._fail(message, node)

    # -- dispatch --------------------------------------------------------------------------

    def visit(self, node: ast.expr) -> tuple[ast.expr, _Info]:
        """Check ``node`` and return its fast form and what is known about its value."""
        if isinstance(node, ast.Constant):
            return self._constant(node)
        if isinstance(node, ast.Name):
            return self._name(node)
        if isinstance(node, ast.Attribute | ast.Subscript):
            return self._path(node)
        if isinstance(node, ast.BinOp):
            return self._binary(node)
        if isinstance(node, ast.UnaryOp):
            return self._unary(node)
        if isinstance(node, ast.BoolOp):
            return self._boolean(node)
        if isinstance(node, ast.Compare):
            return self._compare(node)
        if isinstance(node, ast.IfExp):
            return self._conditional(node)
        if isinstance(node, ast.Call):
            return self._function(node)
        if isinstance(node, ast.List | ast.Tuple | ast.Set):
            return self._display(node)
        self._fail(_REJECTED.get(type(node), f"{type(node).__name__} is not allowed"), node)

    # -- leaves ----------------------------------------------------------------------------

    def _constant(self, node: ast.Constant) -> tuple[ast.expr, _Info]:
        value = node.value
        if value is None:
            info = _Info(True, 0, "none")
        elif isinstance(value, bool):
            info = _BOOL
        elif isinstance(value, int):
            info = _Info(True, max(value.bit_length(), 1), "number")
        elif isinstance(value, float):
            info = _Info(True, _FLOAT_BITS, "number")
        elif isinstance(value, str):
            info = _STRING
        elif isinstance(value, complex):
            self._fail("complex numbers are not supported", node)
        elif isinstance(value, bytes):
            self._fail("bytes literals are not supported", node)
        else:
            self._fail(f"{short_repr(value)} is not allowed", node)
        return ast.Constant(value=value), info

    def _name(self, node: ast.Name) -> tuple[ast.expr, _Info]:
        self._check_root(node)
        self._read(node, (node.id,))
        return _ns(node.id), _shape_info(_ROOT_SHAPES[node.id])

    def _check_root(self, node: ast.Name) -> None:
        if node.id in NAMES:
            return
        if node.id in _ARITY:
            self._fail(f"{node.id!r} is a function; call it, as in {node.id}(...)", node)
        self._fail(f"unknown name {node.id!r}", node)

    # -- dotted paths and subscripts -------------------------------------------------------

    def _path(self, node: ast.Attribute | ast.Subscript) -> tuple[ast.expr, _Info]:
        chain: list[ast.Attribute | ast.Subscript] = []
        current: ast.expr = node
        while isinstance(current, ast.Attribute | ast.Subscript):
            chain.append(current)
            current = current.value
        chain.reverse()
        # Report a forbidden attribute before anything else: it is the likeliest intent.
        for link in chain:
            if isinstance(link, ast.Attribute) and link.attr.startswith("_"):
                raise self._parsed.attribute_error(
                    "attributes starting with '_' are not allowed", link
                )
        steps: list[tuple[str, ast.AST]] = [
            (link.attr, link)
            if isinstance(link, ast.Attribute)
            else (self._subscript_key(link), link.slice)
            for link in chain
        ]
        if not isinstance(current, ast.Name):
            first = steps[0][1]
            message = "'.' and '[...]' may only follow a name such as props or event"
            if isinstance(first, ast.Attribute):
                raise self._parsed.attribute_error(message, first)
            self._fail(message, first)
        self._check_root(current)
        shape = _ROOT_SHAPES[current.id]
        code = _ns(current.id)
        path: tuple[str, ...] = (current.id,)
        for key, step in steps:
            shape, code, path = self._step(shape, code, path, key, step)
        self._read(node, path)
        return code, _shape_info(shape)

    def _subscript_key(self, node: ast.Subscript) -> str:
        key = node.slice
        if isinstance(key, ast.Slice):
            self._fail("slices are not supported", key)
        if isinstance(key, ast.Constant) and isinstance(key.value, str):
            return key.value
        self._fail('subscript keys must be string literals, as in props["my-key"]', key)

    def _step(
        self, shape: _Shape, code: ast.expr, path: tuple[str, ...], key: str, node: ast.AST
    ) -> tuple[_Shape, ast.expr, tuple[str, ...]]:
        where = render_path(path)
        if shape in (_Shape.PROPS, _Shape.JSON):
            return _Shape.JSON, _subscript(code, key), (*path, key)
        if shape is _Shape.EVENT:
            if key not in _EVENT_FIELDS:
                self._step_error(
                    f"unknown event field {key!r} (event has {', '.join(_EVENT_FIELDS)})", node
                )
            if key == "properties":
                # event.properties is props; one spelling in reads keeps traces readable.
                return _Shape.PROPS, _subscript(code, key), ("props",)
            return _Shape.STRING, _subscript(code, key), (*path, key)
        if shape is _Shape.TOKENS:
            self._declared("token", key, node)
            return _Shape.NUMBER, _subscript(code, key), (*path, key)
        if shape is _Shape.SKILLS:
            self._declared("skill", key, node)
            return _Shape.SKILL, _subscript(code, key), (*path, key)
        if shape is _Shape.STREAKS:
            self._declared("streak", key, node)
            return _Shape.STREAK, _subscript(code, key), (*path, key)
        if shape is _Shape.COUNTERS:
            self._declared("event type", key, node)
            # A type never seen has no counter yet; it reads as 0.
            return _Shape.NUMBER, _get(code, ast.Constant(value=key), 0), (*path, key)
        if shape is _Shape.SKILL:
            if key not in _SKILL_FIELDS:
                self._step_error(f"a skill has .value and .level, not {key!r}", node)
            return _Shape.NUMBER, _subscript(code, key), (*path, key)
        if shape is _Shape.STREAK:
            if key not in _STREAK_FIELDS:
                self._step_error(f"a streak has .count and .best, not {key!r}", node)
            return _Shape.NUMBER, _subscript(code, key), (*path, key)
        if shape is _Shape.BADGES:
            self._step_error(
                'badges is a set of badge keys: write "key" in badges or has_badge("key")', node
            )
        self._step_error(f"{where} is a {shape.value} and has no field {key!r}", node)

    def _step_error(self, message: str, node: ast.AST) -> NoReturn:
        if isinstance(node, ast.Attribute):
            raise self._parsed.attribute_error(message, node)
        self._fail(message, node)

    # -- operators -------------------------------------------------------------------------

    def _binary(self, node: ast.BinOp) -> tuple[ast.expr, _Info]:
        operator = type(node.op)
        if operator not in _ALLOWED_BINARY:
            symbol = _BINARY_SYMBOLS.get(operator, "?")
            raise self._parsed.operator_error(
                f"operator {symbol!r} is not supported", node.left, symbol
            )
        left, left_info = self.visit(node.left)
        right, right_info = self.visit(node.right)
        both_unsized = left_info.unsized and right_info.unsized
        plain = ast.BinOp(left=left, op=operator(), right=right)
        if operator is ast.Add or operator is ast.Sub:
            if left_info.bits is not None and right_info.bits is not None:
                bits: int | None = max(left_info.bits, right_info.bits) + 1
            else:
                bits = None
            info = _Info(both_unsized, bits, "number" if both_unsized else "any")
            # simpleeval's length check on + applies only when both sides have a length.
            if operator is ast.Add and not (left_info.unsized or right_info.unsized):
                return _call("_add", [left, right]), info
            return plain, info
        if operator is ast.Mult:
            if (
                left_info.bits is not None
                and right_info.bits is not None
                and left_info.bits + right_info.bits <= MAX_INT_BITS
            ):
                return plain, _Info(True, left_info.bits + right_info.bits, "number")
            # The guard caps int products at MAX_INT_BITS, so that bound is known afterwards.
            info = _Info(True, MAX_INT_BITS, "number") if both_unsized else _ANY
            return _call("_mul", [left, right]), info
        if operator is ast.Pow:
            base = _literal_number(node.left)
            exponent = _literal_number(node.right)
            info = _Info(True, _POWER_BITS, "number")
            if (
                base is not None
                and exponent is not None
                and abs(base) <= MAX_POWER
                and abs(exponent) <= MAX_POWER
            ):
                return plain, info
            return _call("_pow", [left, right]), info
        if operator is ast.Div:
            return plain, _Info(True, _FLOAT_BITS, "number")
        if operator is ast.FloorDiv:
            bits = None if left_info.bits is None else max(left_info.bits + 1, _FLOAT_BITS)
            return plain, _Info(True, bits, "number")
        # Modulo: only numbers get here without the guard, which refuses string formatting.
        bits = None if right_info.bits is None else max(right_info.bits, _FLOAT_BITS)
        if left_info.unsized:
            return plain, _Info(True, bits, "number")
        return _call("_mod", [left, right]), _Info(True, bits, "number")

    def _unary(self, node: ast.UnaryOp) -> tuple[ast.expr, _Info]:
        if isinstance(node.op, ast.Invert):
            self._fail("operator '~' is not supported", node)
        operand, info = self.visit(node.operand)
        code = ast.UnaryOp(op=type(node.op)(), operand=operand)
        if isinstance(node.op, ast.Not):
            return code, _BOOL
        # Unary minus and plus succeed only on numbers.
        return code, _Info(True, info.bits if info.unsized else None, "number")

    def _boolean(self, node: ast.BoolOp) -> tuple[ast.expr, _Info]:
        values = [self.visit(value) for value in node.values]
        code = ast.BoolOp(op=type(node.op)(), values=[value for value, _ in values])
        return code, _join([info for _, info in values])

    def _conditional(self, node: ast.IfExp) -> tuple[ast.expr, _Info]:
        body, body_info = self.visit(node.body)
        test, _ = self.visit(node.test)
        orelse, orelse_info = self.visit(node.orelse)
        return ast.IfExp(test=test, body=body, orelse=orelse), _join([body_info, orelse_info])

    def _compare(self, node: ast.Compare) -> tuple[ast.expr, _Info]:
        left, _ = self.visit(node.left)
        operands = [node.left, *node.comparators]
        operators: list[ast.cmpop] = []
        comparators: list[ast.expr] = []
        for index, (operator, comparator) in enumerate(
            zip(node.ops, node.comparators, strict=True)
        ):
            before = operands[index]
            if type(operator) not in _ALLOWED_COMPARE:
                self._fail(f"comparison {type(operator).__name__} is not supported", comparator)
            if isinstance(operator, ast.Is | ast.IsNot) and not (
                _is_singleton(before) or _is_singleton(comparator)
            ):
                self._fail("'is' may only compare with None, True or False; use ==", comparator)
            if (
                isinstance(operator, ast.In | ast.NotIn)
                and isinstance(comparator, ast.Name)
                and comparator.id == "badges"
                and isinstance(before, ast.Constant)
                and isinstance(before.value, str)
            ):
                self._declared("badge", before.value, before)
            code, _ = self.visit(comparator)
            operators.append(type(operator)())
            comparators.append(code)
        return ast.Compare(left=left, ops=operators, comparators=comparators), _BOOL

    def _display(self, node: ast.List | ast.Tuple | ast.Set) -> tuple[ast.expr, _Info]:
        items: list[ast.expr] = []
        for element in node.elts:
            if isinstance(element, ast.Starred):
                self._fail("* unpacking is not allowed", element)
            number = _literal_number(element)
            if number is not None:
                items.append(ast.Constant(value=number))
                continue
            if isinstance(element, ast.Constant) and (
                element.value is None or isinstance(element.value, str | bool)
            ):
                items.append(ast.Constant(value=element.value))
                continue
            # Literal items only: nested containers built at run time (``[[0] * 99999] *
            # 99999``) would make comparisons cost billions of steps.
            self._fail(
                "list, tuple and set items must be literals (numbers, strings, True, False, None)",
                element,
            )
        if isinstance(node, ast.List):
            return ast.List(elts=items, ctx=ast.Load()), _COLLECTION
        if isinstance(node, ast.Tuple):
            return ast.Tuple(elts=items, ctx=ast.Load()), _COLLECTION
        return ast.Set(elts=items), _COLLECTION

    # -- functions -------------------------------------------------------------------------

    def _function(self, node: ast.Call) -> tuple[ast.expr, _Info]:
        function = node.func
        if isinstance(function, ast.Attribute):
            message = (
                "attributes starting with '_' are not allowed"
                if function.attr.startswith("_")
                else "methods cannot be called; only the built-in functions are available"
            )
            raise self._parsed.attribute_error(message, function)
        if not isinstance(function, ast.Name):
            self._fail("only the built-in functions can be called", function)
        name = function.id
        if name not in _ARITY:
            if name in NAMES:
                self._fail(f"{name!r} is not a function", function)
            self._fail(f"unknown function {name!r}", function)
        for argument in node.args:
            if isinstance(argument, ast.Starred):
                self._fail("* unpacking is not allowed", argument)
        if node.keywords:
            self._fail("keyword arguments are not allowed", node.keywords[0])
        fewest, most = _ARITY[name]
        count = len(node.args)
        if count < fewest or (most is not None and count > most):
            expected = (
                f"exactly {fewest}"
                if fewest == most
                else (f"{fewest} or {most}" if most is not None else f"at least {fewest}")
            )
            plural = "" if expected in ("exactly 1", "at least 1") else "s"
            self._fail(f"{name}() takes {expected} argument{plural} ({count} given)", node)
        if name in ("event_count", "has_badge", "skill_level", "token", "streak"):
            return self._state_function(name, node)
        arguments = [self.visit(argument) for argument in node.args]
        codes = [code for code, _ in arguments]
        infos = [info for _, info in arguments]
        if name == "len":
            return _call("_len", codes), _STATE_NUMBER
        if name == "abs":
            return _call("_abs", codes), _Info(True, infos[0].bits, "number")
        if name == "round":
            bits = infos[0].bits
            return _call("_round", codes), _Info(
                True, None if bits is None else max(bits + 4, _FLOAT_BITS), "number"
            )
        helper = "_min" if name == "min" else "_max"
        # With one argument the result is an item of an iterable: nothing is known about it.
        return _call(helper, codes), (_join(infos) if len(infos) > 1 else _ANY)

    def _state_function(self, name: str, node: ast.Call) -> tuple[ast.expr, _Info]:
        argument = node.args[0]
        key: str | None = None
        if isinstance(argument, ast.Constant) and isinstance(argument.value, str):
            key = argument.value
        elif name == "event_count" and isinstance(argument, ast.Name):
            # event_count(module_finished): a bare name is the event type itself.
            key = argument.id
        if key is None:
            dynamic, _ = self.visit(argument)
            return self._dynamic_state_function(name, node, dynamic)
        if name == "event_count":
            self._declared("event type", key, argument)
            self._read(node, ("counters", key))
            counters = _ns("counters")
            return _get(counters, ast.Constant(value=key), 0), _STATE_NUMBER
        if name == "has_badge":
            self._declared("badge", key, argument)
            self._read(node, ("badges",))
            test = ast.Compare(
                left=ast.Constant(value=key), ops=[ast.In()], comparators=[_ns("badges")]
            )
            return test, _BOOL
        if name == "token":
            self._declared("token", key, argument)
            self._read(node, ("tokens", key))
            return _get(_ns("tokens"), ast.Constant(value=key), 0), _STATE_NUMBER
        kind, mapping, field, helper = (
            ("skill", "skills", "level", "_skill_level")
            if name == "skill_level"
            else ("streak", "streaks", "count", "_streak")
        )
        self._declared(kind, key, argument)
        self._read(node, (mapping, key, field))
        if self._symbols is None:
            # Undeclared keys read 0 through the helper; only declared keys can be inlined.
            return _call(helper, [_ns(mapping), ast.Constant(value=key)]), _STATE_NUMBER
        return _subscript(_subscript(_ns(mapping), key), field), _STATE_NUMBER

    def _dynamic_state_function(
        self, name: str, node: ast.Call, key: ast.expr
    ) -> tuple[ast.expr, _Info]:
        if name == "event_count":
            self._read(node, ("counters",))
            return _get(_ns("counters"), key, 0), _STATE_NUMBER
        if name == "has_badge":
            self._read(node, ("badges",))
            return ast.Compare(left=key, ops=[ast.In()], comparators=[_ns("badges")]), _BOOL
        if name == "token":
            self._read(node, ("tokens",))
            return _get(_ns("tokens"), key, 0), _STATE_NUMBER
        if name == "skill_level":
            self._read(node, ("skills",))
            return _call("_skill_level", [_ns("skills"), key]), _STATE_NUMBER
        self._read(node, ("streaks",))
        return _call("_streak", [_ns("streaks"), key]), _STATE_NUMBER


def check_source(source: str) -> ParsedSource:
    """Parse and structurally check ``source`` without a rulebook's symbols.

    Used by the reference evaluator so that both evaluators accept the same language.
    """
    parsed = parse_source(source)
    _Checker(parsed, None).visit(parsed.tree)
    return parsed


# The compiled module. ``_EXPR`` is replaced by the checked expression; user names never
# become Python names (they all become ``ns[...]`` reads), so nothing can clash with it.
_TEMPLATE: Final = ast.parse(
    """
def _evaluate(ns):
    try:
        return _EXPR
    except _Exception as _error:
        return _failure(_error)

def _test(ns):
    try:
        if _EXPR:
            return (True, None)
        return (False, None)
    except _Exception as _error:
        return (False, _reason(_error))
""",
    mode="exec",
)


def _failure(error: BaseException) -> EvalFailure:
    return EvalFailure(failure_reason(error))


def amount_value(value: Any) -> tuple[int, str | None]:
    """An evaluated amount as a grant: ``(floor of the number, None)`` or ``(0, reason)``.

    A negative number, a bool, None, a string, a collection, NaN, an infinity or an
    :class:`EvalFailure` gives 0 and says why (see :meth:`Expression.amount`).
    """
    if type(value) is EvalFailure:
        return 0, value.reason
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0, f"amount is not a number: {short_repr(value)}"
    if isinstance(value, float):
        if math.isnan(value):
            return 0, "amount is not a number: nan"
        if math.isinf(value):
            return 0, f"amount is infinite: {value}"
        whole = math.floor(value)
    else:
        whole = int(value)
    if whole < 0:
        return 0, f"negative amount {short_repr(value)}"
    return whole, None


_GLOBALS: Final[dict[str, Any]] = {
    # No builtins at all: the compiled code only calls the helpers below.
    "__builtins__": {},
    "_Exception": Exception,
    "_failure": _failure,
    "_reason": failure_reason,
    "_add": guarded_add,
    "_mul": guarded_mul,
    "_pow": guarded_pow,
    "_mod": guarded_mod,
    "_round": guarded_round,
    "_min": min,
    "_max": max,
    "_abs": abs,
    "_len": len,
    "_skill_level": skill_level_of,
    "_streak": streak_count_of,
}

#: The names compiled expressions call, for code that inlines an expression's tree (see
#: :attr:`Expression.tree`): the same objects under the same names, builtins excluded.
HELPERS: Final[Mapping[str, Any]] = {k: v for k, v in _GLOBALS.items() if k != "__builtins__"}


class _Substitute(ast.NodeTransformer):
    def __init__(self, expression: ast.expr) -> None:
        self._expression = expression

    def visit_Name(self, node: ast.Name) -> ast.expr:
        if node.id == "_EXPR":
            return copy.deepcopy(self._expression)
        return node


Namespace = Mapping[str, Any]


def _build(
    source: str, code: ast.expr
) -> tuple[Callable[[Namespace], Any], Callable[[Namespace], tuple[bool, str | None]]]:
    module = _Substitute(code).visit(copy.deepcopy(_TEMPLATE))
    ast.fix_missing_locations(module)
    label = source if len(source) <= 60 else source[:57] + "..."
    try:
        with warnings.catch_warnings():
            # `(1) is None` is legal here; CPython's "is with a literal" hint is noise.
            warnings.simplefilter("ignore")
            compiled = compile(module, f"<buddyrules expression {label!r}>", "exec")
    except (RecursionError, MemoryError, ValueError, SyntaxError) as error:
        raise ExpressionError(f"expression too complex to compile ({error})", 1) from None
    namespace = dict(_GLOBALS)
    exec(compiled, namespace)  # the code was generated above from a checked tree
    evaluate: Callable[[Namespace], Any] = namespace["_evaluate"]
    test: Callable[[Namespace], tuple[bool, str | None]] = namespace["_test"]
    return evaluate, test


def _read_path(ns: Namespace, path: tuple[str, ...]) -> Any:
    value: Any = ns
    for index, key in enumerate(path):
        if not isinstance(value, Mapping):
            return _MISSING
        if index == 1 and path[0] == "counters":
            value = value.get(key, 0)
            continue
        if key not in value:
            return _MISSING
        value = value[key]
    if isinstance(value, set | frozenset):
        # Traces are serialised as JSON, which has no sets.
        try:
            return sorted(value)
        except TypeError:
            return list(value)
    return value


class Expression:
    """A checked, compiled expression. Immutable, thread-safe, picklable.

    Attributes:
        source: the expression as written.
        kind: ``"condition"`` or ``"amount"``.
        reads: the paths the expression reads, in source order and without repeats, e.g.
            ``("props.score", "streaks.daily_lesson.count", "counters.lesson_completed",
            "badges", "coins")``. ``event.properties.x`` is listed as ``props.x``; keys that
            are not identifiers use brackets: ``props["my-key"]``.
        evaluate: ``evaluate(ns)`` returns the value of the expression, or an
            :class:`EvalFailure` (never raises).
        test: ``test(ns)`` returns ``(passed, reason)``: ``passed`` is true when the value
            is truthy and nothing failed; ``reason`` is the failure reason or None.
        tree: the checked expression as the compiled functions evaluate it (a syntax tree
            that reads only ``ns[...]`` and calls only the names in :data:`HELPERS`), for
            code generators that inline it (``engine/plans.py``). Do not mutate it.

    ``evaluate`` and ``test`` are the compiled functions themselves (stored on the
    instance, not methods) so that a call costs one Python frame.
    """

    __slots__ = ("_paths", "evaluate", "kind", "reads", "source", "test", "tree")

    source: str
    kind: str
    reads: tuple[str, ...]
    evaluate: Callable[[Namespace], Any]
    test: Callable[[Namespace], tuple[bool, str | None]]
    tree: ast.expr
    _paths: tuple[tuple[str, tuple[str, ...]], ...]

    def __init__(
        self,
        source: str,
        kind: str,
        paths: tuple[tuple[str, ...], ...],
        evaluate: Callable[[Namespace], Any],
        test: Callable[[Namespace], tuple[bool, str | None]],
        tree: ast.expr,
    ) -> None:
        rendered = tuple((render_path(path), path) for path in paths)
        set_ = object.__setattr__
        set_(self, "source", source)
        set_(self, "kind", kind)
        set_(self, "_paths", rendered)
        set_(self, "reads", tuple(text for text, _ in rendered))
        set_(self, "evaluate", evaluate)
        set_(self, "test", test)
        set_(self, "tree", tree)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("Expression is immutable")

    def __delattr__(self, name: str) -> None:
        raise AttributeError("Expression is immutable")

    def amount(self, ns: Namespace) -> tuple[int, str | None]:
        """Evaluate as a grant amount: ``(floor of the number, None)`` or ``(0, reason)``.

        A negative number, a bool, None, a string, a collection, NaN, an infinity or a
        failed evaluation gives 0 and says why.
        """
        return amount_value(self.evaluate(ns))

    @property
    def read_paths(self) -> tuple[tuple[str, ...], ...]:
        """The paths in ``reads`` as key tuples, e.g. ``("skills", "grammar", "level")``."""
        return tuple(path for _, path in self._paths)

    def read_values(self, ns: Namespace) -> dict[str, Any]:
        """For explain traces: each path in ``reads`` -> its value, or ``"<missing>"``.

        Counters never seen read 0, as in the expression; sets become sorted lists.
        """
        return {text: _read_path(ns, path) for text, path in self._paths}

    def __repr__(self) -> str:
        return f"Expression({self.source!r}, kind={self.kind!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Expression):
            return NotImplemented
        return (self.source, self.kind) == (other.source, other.kind)

    def __hash__(self) -> int:
        return hash((Expression, self.source, self.kind))

    def __reduce__(self) -> tuple[Callable[[str, str], Expression], tuple[str, str]]:
        # Compiled functions cannot be pickled; the source was checked already, so it is
        # recompiled on load (e.g. in a worker process) without the rulebook's symbols.
        return _restore, (self.source, self.kind)


def _restore(source: str, kind: str) -> Expression:
    return _compile(source, None, kind)


def _compile(source: str, symbols: Symbols | None, kind: str) -> Expression:
    parsed = parse_source(source)
    checker = _Checker(parsed, symbols)
    code, info = checker.visit(parsed.tree)
    if kind == "amount" and info.kind in ("bool", "str", "none", "collection"):
        kind_name = {"bool": "a boolean", "str": "a string", "none": "None"}.get(
            info.kind, "a collection"
        )
        raise parsed.error(
            f"an amount must be a number, but this expression gives {kind_name}", parsed.tree
        )
    evaluate, test = _build(source, code)
    return Expression(source, kind, checker.reads(), evaluate, test, code)


def compile_expression(
    source: str, symbols: Symbols, *, kind: Literal["condition", "amount"] = "condition"
) -> Expression:
    """Parse, check and compile ``source`` once; raise ExpressionError on any problem.

    ``symbols`` lists what the rulebook declares; a reference to anything else (a token,
    skill, streak, badge or event type) is an error with the column of that reference.
    ``kind="amount"`` additionally rejects expressions that can only give a non-number.
    """
    if kind not in ("condition", "amount"):
        raise ValueError(f"kind must be 'condition' or 'amount', not {kind!r}")
    if not isinstance(symbols, Symbols):
        raise TypeError(f"symbols must be a Symbols, not {type(symbols).__name__}")
    return _compile(source, symbols, kind)
