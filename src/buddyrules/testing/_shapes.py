"""What a rulebook's expressions read from event properties, and the values worth trying.

The strategies in :mod:`buddyrules.testing.strategies` shape event properties from this
analysis: every ``props.<name>`` an expression reads (its ``reads``), how the expression uses
it (compared to a number, to a string, tested for truth, used in arithmetic), and the literals
it is compared against, so that generated values fall on both sides of every threshold.

The analysis walks the expression source with :mod:`ast`; the source already passed the
condition checker when the rulebook loaded, so it parses.
"""

from __future__ import annotations

import ast
import math
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal

from buddyrules.conditions import Expression
from buddyrules.rulebook.compiled import CoinRule, Rulebook, SkillRule, TokenRule

__all__ = ["PropertyShape", "expressions_by_type", "property_shapes"]

PropPath = tuple[str, ...]

_NUMERIC_CALLS = frozenset({"min", "max", "abs", "round"})
_READ_SEGMENT = re.compile(r'\.([A-Za-z_][A-Za-z0-9_]*)|\["((?:[^"\\]|\\.)*)"\]')


@dataclass(frozen=True, slots=True)
class PropertyShape:
    """How the rulebook uses one event property.

    Attributes:
        path: the property's path inside ``properties`` (``("score",)`` for ``props.score``).
        kinds: what the expressions do with it: ``"number"`` (compared to a number or used
            in arithmetic), ``"string"`` (compared to a string), ``"bool"`` (tested for
            truth), ``"null"`` (compared with ``is None``); empty when nothing tells.
        numbers: interesting numbers: the literals it is compared against, each with its
            neighbours on both sides (``0.9`` gives ``0.89, 0.9, 0.91``), and ``0, 1, -1``.
        strings: the string literals it is compared against.
        floats: whether a float literal appears next to it (values may be fractional).
    """

    path: PropPath
    kinds: frozenset[str]
    numbers: tuple[int | float, ...]
    strings: tuple[str, ...]
    floats: bool

    @property
    def name(self) -> str:
        """The dotted property name, e.g. ``"score"``."""
        return ".".join(self.path)


@dataclass
class _Acc:
    kinds: set[str] = field(default_factory=set)
    numbers: list[int | float] = field(default_factory=list)
    strings: list[str] = field(default_factory=list)
    floats: bool = False

    def number(self, value: int | float) -> None:
        self.kinds.add("number")
        if isinstance(value, float):
            self.floats = True
            if not math.isfinite(value):
                return
        if value not in self.numbers:
            self.numbers.append(value)

    def string(self, value: str) -> None:
        self.kinds.add("string")
        if value not in self.strings:
            self.strings.append(value)


def _chain(node: ast.AST) -> list[str] | None:
    """``props.a["b"].c`` -> ``["props", "a", "b", "c"]``; None for anything else."""
    parts: list[str] = []
    while True:
        if isinstance(node, ast.Attribute):
            parts.append(node.attr)
            node = node.value
        elif isinstance(node, ast.Subscript):
            key = node.slice
            if not (isinstance(key, ast.Constant) and isinstance(key.value, str)):
                return None
            parts.append(key.value)
            node = node.value
        elif isinstance(node, ast.Name):
            parts.append(node.id)
            return parts[::-1]
        else:
            return None


def _prop_path(node: ast.AST) -> PropPath | None:
    chain = _chain(node)
    if chain is None:
        return None
    if chain[0] == "props" and len(chain) > 1:
        return tuple(chain[1:])
    if chain[:2] == ["event", "properties"] and len(chain) > 2:
        return tuple(chain[2:])
    return None


def _literals(node: ast.AST) -> list[object] | None:
    """The literal values of a constant or of a list/tuple/set display of constants."""
    if isinstance(node, ast.Constant):
        return [node.value]
    if (
        isinstance(node, ast.UnaryOp)
        and isinstance(node.op, ast.USub | ast.UAdd)
        and isinstance(node.operand, ast.Constant)
        and isinstance(node.operand.value, int | float)
        and not isinstance(node.operand.value, bool)
    ):
        value = node.operand.value
        return [-value if isinstance(node.op, ast.USub) else value]
    if isinstance(node, ast.List | ast.Tuple | ast.Set):
        out: list[object] = []
        for element in node.elts:
            inner = _literals(element)
            if inner is None:
                return None
            out.extend(inner)
        return out
    return None


class _Analyzer:
    """Collects property shapes from expression sources."""

    def __init__(self) -> None:
        self.props: dict[PropPath, _Acc] = {}

    def acc(self, path: PropPath) -> _Acc:
        found = self.props.get(path)
        if found is None:
            found = self.props[path] = _Acc()
        return found

    def record_literal(self, path: PropPath, value: object) -> None:
        acc = self.acc(path)
        if isinstance(value, bool):
            acc.kinds.add("bool")
        elif isinstance(value, int | float):
            acc.number(value)
        elif isinstance(value, str):
            acc.string(value)
        elif value is None:
            acc.kinds.add("null")

    def visit(self, tree: ast.AST, *, truth: bool = False) -> None:
        path = _prop_path(tree)
        if path is not None:
            acc = self.acc(path)
            if truth:
                acc.kinds.add("bool")
            # Intermediate segments of a nested path are containers, not values to shape.
            return
        if isinstance(tree, ast.BoolOp):
            for value in tree.values:
                self.visit(value, truth=True)
        elif isinstance(tree, ast.UnaryOp):
            if isinstance(tree.op, ast.Not):
                self.visit(tree.operand, truth=True)
            else:
                self.numeric(tree.operand)
                self.visit(tree.operand)
        elif isinstance(tree, ast.IfExp):
            self.visit(tree.test, truth=True)
            self.visit(tree.body, truth=truth)
            self.visit(tree.orelse, truth=truth)
        elif isinstance(tree, ast.BinOp):
            self.binop(tree)
        elif isinstance(tree, ast.Compare):
            self.compare(tree)
        elif isinstance(tree, ast.Call):
            func = tree.func.id if isinstance(tree.func, ast.Name) else ""
            literal_args = [
                v
                for a in tree.args
                for v in (_literals(a) or [])
                if isinstance(v, int | float) and not isinstance(v, bool)
            ]
            for arg in tree.args:
                if func in _NUMERIC_CALLS:
                    self.numeric(arg)
                    arg_path = _prop_path(arg)
                    if arg_path is not None and func in ("min", "max"):
                        for v in literal_args:
                            self.acc(arg_path).number(v)
                elif func == "len":
                    arg_path = _prop_path(arg)
                    if arg_path is not None:
                        self.acc(arg_path).kinds.add("string")
                self.visit(arg)
        else:
            for child in ast.iter_child_nodes(tree):
                self.visit(child)

    def numeric(self, node: ast.AST) -> None:
        path = _prop_path(node)
        if path is not None:
            self.acc(path).kinds.add("number")

    def binop(self, node: ast.BinOp) -> None:
        for side, other in ((node.left, node.right), (node.right, node.left)):
            path = _prop_path(side)
            if path is None:
                continue
            acc = self.acc(path)
            lits = _literals(other)
            if lits and isinstance(lits[0], str):
                acc.string(lits[0])
                continue
            acc.kinds.add("number")
            if not lits or not isinstance(lits[0], int | float) or isinstance(lits[0], bool):
                continue
            # Thresholds where the result changes sign or reaches 1: ``props.minutes - 30``,
            # ``15 + props.x``, ``props.amount // 10``. (Zero, where ``100 // props.n``
            # fails, is always tried.)
            literal = lits[0]
            if isinstance(node.op, ast.Sub):
                acc.number(literal)
            elif isinstance(node.op, ast.Add):
                acc.number(-literal)
            elif isinstance(node.op, ast.FloorDiv | ast.Div | ast.Mod) and side is node.left:
                acc.number(literal)
        self.visit(node.left)
        self.visit(node.right)

    def compare(self, node: ast.Compare) -> None:
        operands = [node.left, *node.comparators]
        for i, op in enumerate(node.ops):
            left, right = operands[i], operands[i + 1]
            for side, other, reverse in ((left, right, False), (right, left, True)):
                path = _prop_path(side)
                if path is None:
                    continue
                lits = _literals(other)
                membership = isinstance(op, ast.In | ast.NotIn)
                if lits is not None:
                    if membership and reverse:
                        # ``"x" in props.tags``: the property is a collection of strings.
                        self.acc(path).kinds.add("string")
                        for value in lits:
                            if isinstance(value, str):
                                self.acc(path).string(value)
                        continue
                    for value in lits:
                        self.record_literal(path, value)
                elif not membership and isinstance(op, ast.Lt | ast.LtE | ast.Gt | ast.GtE):
                    self.acc(path).kinds.add("number")
                else:
                    self.acc(path)
        for operand in operands:
            self.visit(operand)

    def add_source(self, source: str, *, condition: bool) -> None:
        try:
            tree = ast.parse(source.strip(), mode="eval").body
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            return
        if not condition:
            self.numeric(tree)  # an amount that is a bare property is a number
        self.visit(tree, truth=condition)

    def add_reads(self, reads: Iterable[str]) -> None:
        for text in reads:
            if not text.startswith("props"):
                continue
            segments = [a or b for a, b in _READ_SEGMENT.findall(text[len("props") :])]
            if segments:
                self.acc(tuple(segments))


def _step(value: float) -> float:
    """The neighbour distance for a float literal: one more decimal place (0.9 -> 0.01)."""
    exponent = Decimal(repr(value)).as_tuple().exponent
    places = -exponent if isinstance(exponent, int) and exponent < 0 else 0
    return float(10 ** -(places + 1))


def _neighbours(values: Iterable[int | float]) -> tuple[int | float, ...]:
    out: list[int | float] = []

    def add(v: int | float) -> None:
        if isinstance(v, float):
            v = round(v, 12)
        if v not in out:
            out.append(v)

    for v in values:
        add(v)
        if isinstance(v, float):
            step = _step(v)
            add(v - step)
            add(v + step)
        else:
            add(v - 1)
            add(v + 1)
    for v in (0, 1, -1):
        add(v)
    return tuple(out)


def _type_guard(tree: ast.AST) -> frozenset[str] | None:
    """Event types an expression is restricted to by ``event.type == "x" and ...``."""
    parts = tree.values if isinstance(tree, ast.BoolOp) and isinstance(tree.op, ast.And) else [tree]
    for part in parts:
        if not isinstance(part, ast.Compare) or len(part.ops) != 1:
            continue
        op, left, right = part.ops[0], part.left, part.comparators[0]
        if _chain(left) == ["event", "type"] and isinstance(op, ast.Eq | ast.In):
            lits = _literals(right)
        elif _chain(right) == ["event", "type"] and isinstance(op, ast.Eq):
            lits = _literals(left)
        else:
            continue
        if lits and all(isinstance(v, str) for v in lits):
            return frozenset(str(v) for v in lits)
    return None


def _global_expressions(rulebook: Rulebook) -> Iterator[Expression]:
    """Expressions evaluated on every event, whatever its type (badges, paths, stages)."""
    for badge in rulebook.badges:
        if badge.when is not None:
            yield badge.when
    for stage in rulebook.stages:
        if stage.when is not None:
            yield stage.when
    for path in rulebook.paths:
        for step in path.steps:
            for e in (step.unlock, step.completion):
                if e is not None:
                    yield e
            for sub in step.sub_steps:
                if sub.completion is not None:
                    yield sub.completion


def expressions_by_type(rulebook: Rulebook) -> dict[str, list[Expression]]:
    """Every expression that can read the properties of an event of each registered type.

    Rules bound to a type contribute to that type; badges, stages and path conditions are
    evaluated on every event, so they contribute to every type, unless they start with an
    ``event.type == "x"`` guard.
    """
    all_types = sorted(set().union(*rulebook.event_types.values()))
    out: dict[str, list[Expression]] = {t: [] for t in all_types}
    rules: list[CoinRule | SkillRule | TokenRule] = [
        *rulebook.coin_rules,
        *rulebook.skill_rules,
        *rulebook.token_rules,
    ]
    for rule in rules:
        bucket = out.setdefault(rule.event, [])
        if rule.when is not None:
            bucket.append(rule.when)
        if rule.amount.expr is not None:
            bucket.append(rule.amount.expr)
        if isinstance(rule, CoinRule):
            bucket.extend(cond for cond, _ in rule.multipliers)
    for expr in _global_expressions(rulebook):
        try:
            guard = _type_guard(ast.parse(expr.source.strip(), mode="eval").body)
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            guard = None
        for t in all_types if guard is None else sorted(guard):
            if t in out:
                out[t].append(expr)
    return out


def property_shapes(rulebook: Rulebook) -> dict[str, tuple[PropertyShape, ...]]:
    """The properties each registered event type should carry, with their shapes.

    The result maps every registered event type to the shapes of the properties that some
    expression can read on an event of that type (see :func:`expressions_by_type`), in the
    order they are first read.
    """
    out: dict[str, tuple[PropertyShape, ...]] = {}
    for event_type, exprs in expressions_by_type(rulebook).items():
        analyzer = _Analyzer()
        for expr in exprs:
            analyzer.add_reads(expr.reads)
            analyzer.add_source(expr.source, condition=expr.kind != "amount")
        paths = list(analyzer.props)
        # A nested path (props.a.b) wins over its prefix (props.a): the value is an object.
        keep = [p for p in paths if not any(q[: len(p)] == p and q != p for q in paths)]
        out[event_type] = tuple(
            PropertyShape(
                path=p,
                kinds=frozenset(analyzer.props[p].kinds),
                numbers=_neighbours(analyzer.props[p].numbers),
                strings=tuple(analyzer.props[p].strings),
                floats=analyzer.props[p].floats,
            )
            for p in keep
        )
    return out
