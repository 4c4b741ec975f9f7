"""Badges: award (auto) or report ready (manual), repeated to a fixpoint (SPEC §3 step 5).

A badge awarded now pays its reward, which can make another badge's condition true, so the
pass repeats until nothing changes; it is bounded by the number of badges because each pass
that continues awards or readies at least one badge, and each happens at most once.
"""

from __future__ import annotations

from typing import Any

from buddyrules.engine.turn import Turn

__all__ = ["evaluate_badges"]


def evaluate_badges(turn: Turn, audience: str, *, record_problems: bool = True) -> None:
    """Award or ready every badge whose prerequisites and condition now hold."""
    badges = turn.rulebook.badges
    awarded = turn.badges  # the live set: awards in this pass are seen at once
    ns = turn.ns
    explain = turn.explain
    traced: dict[str, dict[str, Any]] = {}
    reported: set[str] = set()  # a failing condition is reported once, not once per pass
    for _ in range(len(badges) + 1):
        changed = False
        for badge in badges:
            key = badge.key
            if key in awarded or (badge.mode == "manual" and key in turn.ready):
                if explain and key not in traced:
                    traced[key] = {
                        "kind": "badge",
                        "rule": key,
                        "fired": False,
                        "reason": "already awarded" if key in awarded else "already ready",
                    }
                continue
            when = badge.when
            entry: dict[str, Any] | None = None
            if explain:
                entry = {"kind": "badge", "rule": key, "fired": False, "reason": None}
                traced[key] = entry
            if badge.audience is not None and badge.audience != audience:
                if entry is not None:
                    entry["reason"] = f"audience mismatch (badge is for {badge.audience!r})"
                continue
            if when is None:
                if entry is not None:
                    entry["reason"] = "no condition (awarded by a reward or an admin)"
                continue
            if badge.requires:
                missing = [r for r in badge.requires if r not in awarded]
                if missing:
                    if entry is not None:
                        entry["reason"] = f"prerequisite missing: {', '.join(missing)}"
                    continue
            ok, problem = when.test(ns)
            if entry is not None:
                entry["reads"] = when.read_values(ns)
            if problem is not None:
                if record_problems and key not in reported:
                    reported.add(key)
                    turn.problem(key, f"condition: {problem}")
                if entry is not None:
                    entry["reason"] = f"evaluation problem: {problem}"
                continue
            if not ok:
                if entry is not None:
                    entry["reason"] = "condition false"
                continue
            if badge.mode == "manual":
                turn.mark_ready(key)
                if entry is not None:
                    entry["fired"] = True
                    entry["reason"] = "ready (awaiting an admin award)"
            else:
                turn.award_badge(key, "condition")
                if entry is not None:
                    entry["fired"] = True
            changed = True
        if not changed:
            break
    if explain:
        turn.trace.extend(traced.values())
