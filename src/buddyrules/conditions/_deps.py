"""Which parts of a buddy's state a condition depends on, when that is all it depends on.

The engine re-tests badge and path conditions after every event. Most of them read a few
counters, balances or badges that the event did not touch, so their value cannot have
changed since they were last tested. :func:`state_deps` finds the conditions for which that
reasoning is exact: they read only the buddy's state (never the event, its properties or a
whole mapping), and they cannot fail at run time (so skipping one can never hide a reported
evaluation problem). For those it returns the state parts read, as dependency keys:

``"coins"``, ``"stage"``, ``"badges"``, ``"tokens.<key>"``, ``"skills.<key>"``,
``"streaks.<key>"`` and ``"counters.<event type>"``.

For every other condition it returns None, and the engine always tests it. The analysis is
deliberately narrow (comparisons, ``and``/``or``/``not``, state numbers and badge tests):
anything it does not recognise is treated as "always test", which is slower, never wrong.
"""

from __future__ import annotations

import ast

__all__ = ["state_deps"]

# Value kinds of the recognised sub-expressions. Ordering comparisons are only accepted
# between numbers (bools are ints), so none of them can raise a TypeError.
_NUM = "num"
_BOOL = "bool"
_STR = "str"
_NONE = "none"
_BADGES = "badges"
_ORDERABLE = frozenset({_NUM, _BOOL})


class _Unsafe(Exception):
    """The expression may read the event, a whole mapping, or fail: always test it."""


class _Walker:
    def __init__(self) -> None:
        self.deps: set[str] = set()

    def kind(self, node: ast.expr) -> str:
        if isinstance(node, ast.Constant):
            value = node.value
            if value is None:
                return _NONE
            if isinstance(value, bool):
                return _BOOL
            if isinstance(value, int | float):
                return _NUM
            if isinstance(value, str):
                return _STR
            raise _Unsafe
        if isinstance(node, ast.Name):
            if node.id in ("coins", "stage"):
                self.deps.add(node.id)
                return _NUM
            if node.id == "badges":
                self.deps.add("badges")
                return _BADGES
            if node.id == "audience":  # fixed for a buddy: nothing to depend on
                return _STR
            raise _Unsafe
        if isinstance(node, ast.Attribute | ast.Subscript):
            return self._path(node)
        if isinstance(node, ast.Call):
            return self._call(node)
        if isinstance(node, ast.UnaryOp):
            inner = self.kind(node.operand)
            if isinstance(node.op, ast.Not):
                return _BOOL
            if isinstance(node.op, ast.USub | ast.UAdd) and inner in _ORDERABLE:
                return _NUM
            raise _Unsafe
        if isinstance(node, ast.BoolOp):
            for operand in node.values:
                self.kind(operand)
            return _BOOL  # only its truth is used by a condition, never its value
        if isinstance(node, ast.Compare):
            self._compare(node)
            return _BOOL
        # Arithmetic (overflow guards can fail), conditional expressions, displays, ...
        raise _Unsafe

    def _path(self, node: ast.Attribute | ast.Subscript) -> str:
        keys: list[str] = []
        current: ast.expr = node
        while isinstance(current, ast.Attribute | ast.Subscript):
            if isinstance(current, ast.Attribute):
                keys.append(current.attr)
            elif isinstance(current.slice, ast.Constant) and isinstance(current.slice.value, str):
                keys.append(current.slice.value)
            else:
                raise _Unsafe
            current = current.value
        if not isinstance(current, ast.Name):
            raise _Unsafe
        keys.reverse()
        root = current.id
        if root in ("tokens", "counters") and len(keys) == 1:
            self.deps.add(f"{root}.{keys[0]}")
            return _NUM
        if root == "skills" and len(keys) == 2 and keys[1] in ("value", "level"):
            self.deps.add(f"skills.{keys[0]}")
            return _NUM
        if root == "streaks" and len(keys) == 2 and keys[1] in ("count", "best"):
            self.deps.add(f"streaks.{keys[0]}")
            return _NUM
        raise _Unsafe

    def _call(self, node: ast.Call) -> str:
        if not isinstance(node.func, ast.Name) or len(node.args) != 1 or node.keywords:
            raise _Unsafe
        name = node.func.id
        argument = node.args[0]
        if isinstance(argument, ast.Constant) and isinstance(argument.value, str):
            key = argument.value
        elif name == "event_count" and isinstance(argument, ast.Name):
            key = argument.id  # event_count(module_finished)
        else:
            raise _Unsafe
        if name == "event_count":
            self.deps.add(f"counters.{key}")
            return _NUM
        if name == "has_badge":
            self.deps.add("badges")
            return _BOOL
        if name == "token":
            self.deps.add(f"tokens.{key}")
            return _NUM
        if name == "skill_level":
            self.deps.add(f"skills.{key}")
            return _NUM
        if name == "streak":
            self.deps.add(f"streaks.{key}")
            return _NUM
        raise _Unsafe

    def _compare(self, node: ast.Compare) -> None:
        left = self.kind(node.left)
        for op, comparator in zip(node.ops, node.comparators, strict=True):
            right = self.kind(comparator)
            if isinstance(op, ast.Eq | ast.NotEq | ast.Is | ast.IsNot):
                pass  # never raises between these kinds
            elif isinstance(op, ast.Lt | ast.LtE | ast.Gt | ast.GtE):
                if left not in _ORDERABLE or right not in _ORDERABLE:
                    raise _Unsafe
            elif isinstance(op, ast.In | ast.NotIn):
                if right != _BADGES or left != _STR:
                    raise _Unsafe
            else:
                raise _Unsafe
            left = right


def state_deps(source: str) -> frozenset[str] | None:
    """The state parts a checked condition reads, or None if it must always be tested.

    ``source`` must already have passed the checker (the rulebook declared every key it
    names); this only decides whether the narrow, failure-free reasoning above applies.
    """
    try:
        tree = ast.parse(source.strip(), mode="eval")
    except SyntaxError:
        return None  # multi-line sources the checker accepts but a plain parse does not
    walker = _Walker()
    try:
        walker.kind(tree.body)
    except _Unsafe:
        return None
    return frozenset(walker.deps)
