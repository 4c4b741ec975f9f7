"""Conditions and amounts written into event plans, reading the turn instead of a namespace.

A compiled :class:`~buddyrules.conditions.Expression` reads a namespace dict: ``ns["coins"]``,
``ns["skills"]["grammar"]["level"]``, ``ns["streaks"]["daily"]["count"]``... ``evaluate``
used to build that namespace for every event (a dozen small dicts) and call each condition
through it. An event plan (:mod:`buddyrules.engine.plans`) can instead read the same values
where the turn keeps them, so :func:`inline_source` rewrites an expression's checked tree
(:attr:`Expression.tree`) into plan code:

=====================================  ================================================
namespace read                         plan code
=====================================  ================================================
``ns["props"]``                        ``props`` (the event's properties)
``ns["coins"]``, ``ns["stage"]``       ``turn.coins``, ``turn.stage``
``ns["tokens"]``, ``ns["counters"]``   ``turn.tokens``, ``turn.counters`` (live dicts)
``ns["badges"]``                       ``turn.badges`` (the live set)
``ns["audience"]``                     ``audience``
``ns["skills"][k]["value"]``           ``turn.skills.get(k, 0)``
``ns["skills"][k]["level"]``           ``_min(turn.skills.get(k, 0) // per_level, max_level)``
``ns["streaks"][k]["count"|"best"]``   ``_streak_of(turn.streaks, k).count`` / ``.best``
=====================================  ================================================

These are the values the namespace would hold at that moment (``Turn.build_namespace``
computes them the same way, and the mechanics keep it current). Any other read (``event``,
``skills`` or ``streaks`` as a whole, a computed key) is not rewritten: the expression is
then left to its compiled function and the plan builds the namespace for it.

The result is the checker's own tree, rendered by :func:`ast.unparse`: it holds only the
node types the checker admits, literals rendered as literals, and the names above or in
:data:`~buddyrules.conditions.HELPERS`. User text never becomes a Python name.
"""

from __future__ import annotations

import ast
import copy
from typing import Any

from buddyrules.conditions import Expression
from buddyrules.rulebook.compiled import Rulebook
from buddyrules.state import StreakState

__all__ = ["NO_STREAK", "inline_source", "streak_of"]

#: What an absent streak reads as (count 0, best 0), as in ``Turn.build_namespace``.
NO_STREAK = StreakState()


def streak_of(streaks: dict[str, StreakState], key: str) -> StreakState:
    """A streak's state, or :data:`NO_STREAK` if it never ticked (plan code calls this)."""
    state = streaks.get(key)
    return NO_STREAK if state is None else state


#: Namespace roots read as one plan expression each.
_ROOTS = {
    "props": "props",
    "coins": "turn.coins",
    "stage": "turn.stage",
    "tokens": "turn.tokens",
    "counters": "turn.counters",
    "badges": "turn.badges",
    "audience": "audience",
}


def _expr(source: str) -> ast.expr:
    node = ast.parse(source, mode="eval").body
    return node


def _root_key(node: ast.expr) -> str | None:
    """``"coins"`` for ``ns["coins"]``, else None."""
    if (
        isinstance(node, ast.Subscript)
        and isinstance(node.value, ast.Name)
        and node.value.id == "ns"
        and isinstance(node.slice, ast.Constant)
        and isinstance(node.slice.value, str)
    ):
        return node.slice.value
    return None


def _keyed(node: ast.expr, root: str) -> str | None:
    """``k`` for ``ns[root][k]`` with a literal string ``k``, else None."""
    if (
        isinstance(node, ast.Subscript)
        and _root_key(node.value) == root
        and isinstance(node.slice, ast.Constant)
        and isinstance(node.slice.value, str)
    ):
        return node.slice.value
    return None


class _Rewrite(ast.NodeTransformer):
    def __init__(self, rulebook: Rulebook) -> None:
        self.rulebook = rulebook
        self.complete = True  # False once a namespace read is left as it is

    def skill(self, key: str, field: str) -> ast.expr:
        value = f"turn.skills.get({key!r}, 0)"
        if field == "value":
            return _expr(value)
        skill = self.rulebook.skills[key]
        return _expr(f"_min({value} // {int(skill.points_per_level)}, {int(skill.max_level)})")

    def visit_Subscript(self, node: ast.Subscript) -> Any:
        if isinstance(node.slice, ast.Constant) and isinstance(node.slice.value, str):
            field = node.slice.value
            key = _keyed(node.value, "skills")
            if key is not None and key in self.rulebook.skills and field in ("value", "level"):
                return self.skill(key, field)
            key = _keyed(node.value, "streaks")
            if key is not None and key in self.rulebook.streak_keys and field in ("count", "best"):
                return _expr(f"_streak_of(turn.streaks, {key!r}).{field}")
            root = _root_key(node)
            if root is not None and root in _ROOTS:
                return _expr(_ROOTS[root])
        return self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> Any:
        # skill_level("k") / streak("k") as compiled without the rulebook's symbols (an
        # unpickled rulebook): the helper reads the namespace, 0 for an unknown key.
        if (
            isinstance(node.func, ast.Name)
            and node.func.id in ("_skill_level", "_streak")
            and len(node.args) == 2
            and isinstance(node.args[1], ast.Constant)
            and isinstance(node.args[1].value, str)
        ):
            key = node.args[1].value
            if node.func.id == "_skill_level" and _root_key(node.args[0]) == "skills":
                if key in self.rulebook.skills:
                    return self.skill(key, "level")
                return ast.Constant(value=0)
            if node.func.id == "_streak" and _root_key(node.args[0]) == "streaks":
                if key in self.rulebook.streak_keys:
                    return _expr(f"_streak_of(turn.streaks, {key!r}).count")
                return ast.Constant(value=0)
        return self.generic_visit(node)

    def visit_Name(self, node: ast.Name) -> Any:
        if node.id == "ns":
            self.complete = False  # a read no rule above covers: keep the namespace
        return node


def inline_source(rulebook: Rulebook, expression: Expression) -> str | None:
    """``expression`` as plan source reading the turn (see the module doc), or None when
    it reads something only the namespace holds."""
    rewrite = _Rewrite(rulebook)
    tree = rewrite.visit(copy.deepcopy(expression.tree))
    if not rewrite.complete:
        return None
    return ast.unparse(tree)
