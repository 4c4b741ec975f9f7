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
    traced: dict[str, dict[str, Any]] = {}
    for _ in range(len(badges) + 1):
        changed = False
        for badge in badges:
            key = badge.key
            if key in turn.badges or (badge.mode == "manual" and key in turn.ready):
                if turn.explain and key not in traced:
                    traced[key] = {
                        "kind": "badge",
                        "rule": key,
                        "fired": False,
                        "reason": "already awarded" if key in turn.badges else "already ready",
                    }
                continue
            entry: dict[str, Any] | None = None
            if turn.explain:
                entry = {"kind": "badge", "rule": key, "fired": False, "reason": None}
                traced[key] = entry
            if badge.audience is not None and badge.audience != audience:
                if entry is not None:
                    entry["reason"] = f"audience mismatch (badge is for {badge.audience!r})"
                continue
            if badge.when is None:
                if entry is not None:
                    entry["reason"] = "no condition (awarded by a reward or an admin)"
                continue
            missing = [r for r in badge.requires if r not in turn.badges]
            if missing:
                if entry is not None:
                    entry["reason"] = f"prerequisite missing: {', '.join(missing)}"
                continue
            ok, problem = badge.when.test(turn.ns)
            if entry is not None:
                entry["reads"] = badge.when.read_values(turn.ns)
            if problem is not None:
                if record_problems:
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
    if turn.explain:
        turn.trace.extend(traced.values())
