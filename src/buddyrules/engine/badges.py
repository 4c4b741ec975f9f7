"""Badges: award (auto) or report ready (manual), repeated to a fixpoint (SPEC §3 step 5).

A badge awarded now pays its reward, which can make another badge's condition true, so the
pass repeats until nothing changes; it is bounded by the number of badges because each pass
that continues awards or readies at least one badge, and each happens at most once.
"""

from __future__ import annotations

from typing import Any

from buddyrules.engine.turn import Turn
from buddyrules.rulebook.compiled import Badge

__all__ = ["evaluate_badges"]


def evaluate_badges(turn: Turn, audience: str, *, record_problems: bool = True) -> None:
    """Award or ready every badge whose prerequisites and condition now hold."""
    if turn.dirty is not None:
        _incremental_passes(turn, audience, record_problems)
        return
    badges = turn.rulebook.badges
    traced: dict[str, dict[str, Any]] | None = {} if turn.explain else None
    reported: set[str] = set()  # a failing condition is reported once, not once per pass
    for _ in range(len(badges) + 1):
        changed = False
        for badge in badges:
            if _visit(turn, badge, audience, reported, record_problems, traced):
                changed = True
        if not changed:
            break
    if traced is not None:
        turn.trace.extend(traced.values())


def _incremental_passes(turn: Turn, audience: str, record_problems: bool) -> None:
    """The passes of :func:`evaluate_badges`, visiting only badges whose inputs changed.

    Exactly the badges a full pass would test with a different answer than last time: a
    full pass visits every badge in order, and a skipped one (no watched part it reads
    changed, see ``evaluate._changed_by_rules``) would not hold. After a badge pays a reward
    the changed parts grow, so the rest of the pass is looked up again.
    """
    index = turn.rulebook.dependencies
    badges = turn.rulebook.badges
    reported: set[str] = set()
    for _ in range(len(badges) + 1):
        changed = False
        dirty = turn.dirty
        assert dirty is not None
        todo = index.badges_to_test(dirty)
        i = 0
        while i < len(todo):
            position = todo[i]
            i += 1
            if _visit(turn, badges[position], audience, reported, record_problems, None):
                changed = True
                if turn.dirty != dirty:
                    dirty = turn.dirty
                    assert dirty is not None
                    todo = [p for p in index.badges_to_test(dirty) if p > position]
                    i = 0
        if not changed:
            break


def _visit(
    turn: Turn,
    badge: Badge,
    audience: str,
    reported: set[str],
    record_problems: bool,
    traced: dict[str, dict[str, Any]] | None,
) -> bool:
    """Test one badge; award it or make it ready. Returns whether anything changed."""
    key = badge.key
    awarded = turn.badges  # the live set: awards in this pass are seen at once
    if key in awarded or (badge.mode == "manual" and key in turn.ready):
        if traced is not None and key not in traced:
            traced[key] = {
                "kind": "badge",
                "rule": key,
                "fired": False,
                "reason": "already awarded" if key in awarded else "already ready",
            }
        return False
    when = badge.when
    entry: dict[str, Any] | None = None
    if traced is not None:
        entry = {"kind": "badge", "rule": key, "fired": False, "reason": None}
        traced[key] = entry
    if badge.audience is not None and badge.audience != audience:
        if entry is not None:
            entry["reason"] = f"audience mismatch (badge is for {badge.audience!r})"
        return False
    if when is None:
        if entry is not None:
            entry["reason"] = "no condition (awarded by a reward or an admin)"
        return False
    if badge.requires:
        missing = [r for r in badge.requires if r not in awarded]
        if missing:
            if entry is not None:
                entry["reason"] = f"prerequisite missing: {', '.join(missing)}"
            return False
    ns = turn.ns
    ok, problem = when.test(ns)
    if entry is not None:
        entry["reads"] = when.read_values(ns)
    if problem is not None:
        if record_problems and key not in reported:
            reported.add(key)
            turn.problem(key, f"condition: {problem}")
        if entry is not None:
            entry["reason"] = f"evaluation problem: {problem}"
        return False
    if not ok:
        if entry is not None:
            entry["reason"] = "condition false"
        return False
    if badge.mode == "manual":
        turn.mark_ready(key)
        if entry is not None:
            entry["fired"] = True
            entry["reason"] = "ready (awaiting an admin award)"
    else:
        turn.award_badge(key, "condition")
        turn.note_rewards()
        if entry is not None:
            entry["fired"] = True
    return True
