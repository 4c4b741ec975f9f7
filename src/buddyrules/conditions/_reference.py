"""The reference semantics: the same expression evaluated by simpleeval.

Configuration (SPEC §5), all on this module's own subclass and operator table, so
simpleeval's module globals are never changed:

* ``SimpleEval`` (not ``EvalWithCompoundTypes``: comprehensions and dict displays are not in
  the language), plus handlers for list, tuple and set displays;
* ``**`` limited to 1,000 for base and exponent, like ``safe_power`` with ``MAX_POWER = 1000``;
* ``*`` and ``+`` are simpleeval's ``safe_mult`` and ``safe_add`` (100,000 items), with
  ``sized * sized`` refused before ``safe_mult`` runs (its length check would otherwise build
  ``right * len(left)``) and int products limited to 100,000 bits;
* ``%`` refuses string formatting; bitwise operators are absent;
* dot access and subscripts read mapping keys only (never Python attributes), and a counter
  never seen reads 0;
* ``event_count(module_finished)`` is rewritten to ``event_count("module_finished")``;
* the same function set as the fast evaluator.

The expression is first checked by the same structural checker as the fast evaluator
(without a rulebook's symbols), so both accept exactly the same language.
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Mapping
from typing import Any, Final

import simpleeval

from ._compiler import check_source
from ._model import MAX_INT_BITS, MAX_POWER, EvalFailure, ExpressionError
from ._runtime import failure_reason, guarded_round, skill_level_of, streak_count_of

__all__ = ["ReferenceProgram", "reference_evaluate"]


def _power(base: Any, exponent: Any) -> Any:
    # simpleeval's safe_power reads its module-global MAX_POWER; this is the same rule at 1000.
    if abs(base) > MAX_POWER or abs(exponent) > MAX_POWER:
        raise simpleeval.NumberTooHigh(f"exponent or base above {MAX_POWER}")
    return base**exponent


def _multiply(left: Any, right: Any) -> Any:
    if hasattr(left, "__len__") and hasattr(right, "__len__"):
        raise TypeError(f"can't multiply {type(left).__name__} by {type(right).__name__}")
    result = simpleeval.safe_mult(left, right)
    if isinstance(result, int) and result.bit_length() > MAX_INT_BITS:
        raise simpleeval.NumberTooHigh(f"integer wider than {MAX_INT_BITS} bits")
    return result


def _modulo(left: Any, right: Any) -> Any:
    if isinstance(left, str):
        raise simpleeval.FeatureNotAvailable("string formatting with % is not supported")
    return left % right


_KEPT_OPERATORS: Final = (
    ast.Sub,
    ast.Div,
    ast.FloorDiv,
    ast.Eq,
    ast.NotEq,
    ast.Gt,
    ast.Lt,
    ast.GtE,
    ast.LtE,
    ast.Not,
    ast.USub,
    ast.UAdd,
    ast.In,
    ast.NotIn,
    ast.Is,
    ast.IsNot,
)
_OPERATORS: Final[dict[type[ast.AST], Callable[..., Any]]] = {
    **{kind: simpleeval.DEFAULT_OPERATORS[kind] for kind in _KEPT_OPERATORS},
    ast.Add: simpleeval.safe_add,
    ast.Mult: _multiply,
    ast.Mod: _modulo,
    ast.Pow: _power,
}
# Nodes simpleeval would accept but the language does not (the checker rejects them first;
# removing them as well keeps this evaluator safe on its own).
_REMOVED_NODES: Final = (
    ast.JoinedStr,
    ast.FormattedValue,
    ast.Slice,
    ast.Assign,
    ast.AugAssign,
    ast.Import,
)


def _functions(ns: Mapping[str, Any]) -> dict[str, Callable[..., Any]]:
    # Looked up at call time so that a namespace missing a key fails inside the evaluation.
    return {
        "event_count": lambda key: ns["counters"].get(key, 0),
        "has_badge": lambda key: key in ns["badges"],
        "skill_level": lambda key: skill_level_of(ns["skills"], key),
        "token": lambda key: ns["tokens"].get(key, 0),
        "streak": lambda key: streak_count_of(ns["streaks"], key),
        "min": min,
        "max": max,
        "abs": abs,
        "round": guarded_round,
        "len": len,
    }


class _Evaluator(simpleeval.SimpleEval):  # type: ignore[misc]  # simpleeval is untyped
    def __init__(self, ns: Mapping[str, Any]) -> None:
        super().__init__(operators=_OPERATORS, functions=_functions(ns), names=ns)
        for node in _REMOVED_NODES:
            self.nodes.pop(node, None)
        self.nodes[ast.List] = self._eval_list
        self.nodes[ast.Tuple] = self._eval_tuple
        self.nodes[ast.Set] = self._eval_set

    def _eval_list(self, node: ast.List) -> list[Any]:
        return [self._eval(item) for item in node.elts]

    def _eval_tuple(self, node: ast.Tuple) -> tuple[Any, ...]:
        return tuple(self._eval(item) for item in node.elts)

    def _eval_set(self, node: ast.Set) -> set[Any]:
        return {self._eval(item) for item in node.elts}

    def _read_key(self, base_node: ast.expr, base: Any, key: Any) -> Any:
        if not isinstance(base, Mapping):
            raise TypeError(f"cannot read {key!r} of a {type(base).__name__}")
        if isinstance(base_node, ast.Name) and base_node.id == "counters":
            return base.get(key, 0)
        return base[key]

    def _eval_attribute(self, node: ast.Attribute) -> Any:
        if node.attr.startswith("_"):
            raise simpleeval.FeatureNotAvailable(f"attribute {node.attr!r} is not allowed")
        return self._read_key(node.value, self._eval(node.value), node.attr)

    def _eval_subscript(self, node: ast.Subscript) -> Any:
        base = self._eval(node.value)
        return self._read_key(node.value, base, self._eval(node.slice))


class _BareEventTypes(ast.NodeTransformer):
    """``event_count(module_finished)`` -> ``event_count("module_finished")``."""

    def visit_Call(self, node: ast.Call) -> ast.AST:
        self.generic_visit(node)
        if (
            isinstance(node.func, ast.Name)
            and node.func.id == "event_count"
            and len(node.args) == 1
            and isinstance(node.args[0], ast.Name)
        ):
            node.args[0] = ast.copy_location(ast.Constant(value=node.args[0].id), node.args[0])
        return node


class ReferenceProgram:
    """One expression, checked and parsed once, evaluated by simpleeval on demand.

    Raises ExpressionError like :func:`compile_expression` (declared keys are not checked).
    """

    def __init__(self, source: str) -> None:
        parsed = check_source(source)
        self.source = source
        self._tree: ast.expr = _BareEventTypes().visit(parsed.tree)

    def evaluate(self, ns: Mapping[str, Any]) -> Any:
        """The value of the expression, or an EvalFailure (never raises)."""
        try:
            return _Evaluator(ns).eval(self.source, previously_parsed=self._tree)
        except Exception as error:  # every failure becomes a value, by contract
            return EvalFailure(_reason(error))


def _reason(error: Exception) -> str:
    if isinstance(error, simpleeval.InvalidExpression):
        return str(error)[:200]
    return failure_reason(error)


def reference_evaluate(source: str, ns: dict[str, Any]) -> Any:
    """The same expression evaluated by simpleeval (the reference semantics, SPEC §5).

    Slow (it walks the tree on every call); used by the differential tests and available to
    users who want to double-check a result. Returns the value or an :class:`EvalFailure`;
    an expression the language rejects gives an EvalFailure starting with
    ``"invalid expression: "``.
    """
    try:
        program = ReferenceProgram(source)
    except ExpressionError as error:
        return EvalFailure(f"invalid expression: {error}")
    return program.evaluate(ns)
