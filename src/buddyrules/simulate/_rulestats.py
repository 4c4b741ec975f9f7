"""Per-rule statistics (fired, granted, clipped): what a trace says of each rule's grant.

What a coin or token rule credited is in the ledger (reason ``rule:<key>``). Whether a
grant was clipped, and what a skill rule credited, is recorded per event: by the event plans
during a replay (``turn.grants``, see :mod:`buddyrules.engine.plans`), or, with
``exact_rule_stats``, read from an ``explain=True`` trace by :func:`grants_from_trace`. The
two are the same records (``tests/engine/test_engine_replay.py``).

Clipping counts grants reduced by a daily or weekly cap, a token's ``max_balance`` or a
skill's ``max_value``; a coin rule whose ``total_limit`` is used up is not "clipped" (it no
longer applies).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["Grant", "grants_from_trace", "recorded_grants"]

# (tag "kind:key", credited, clipped)
Grant = tuple[str, int, bool]


def grants_from_trace(trace: Sequence[Mapping[str, Any]]) -> list[Grant]:
    """Each matched rule's credit and clipping, read from an ``explain=True`` trace."""
    out: list[Grant] = []
    for entry in trace:
        kind = entry.get("kind")
        if kind not in ("coin_rule", "skill_rule", "token_rule") or "credited" not in entry:
            continue
        credited = int(entry["credited"])
        grant = int(entry.get("amount") or 0)
        reason = str(entry.get("reason") or "")
        clipped = grant > credited and not reason.startswith("total limit")
        out.append((f"{kind}:{entry['rule']}", credited, clipped))
    return out


def recorded_grants(trace: Sequence[Mapping[str, Any]]) -> list[Grant]:
    """What an event plan records in ``turn.grants``, read from a trace instead: the grants
    that were clipped, and each skill rule's credit (per-rule statistics need no more)."""
    return [
        (tag, got, clipped)
        for tag, got, clipped in grants_from_trace(trace)
        if clipped or (got and tag.startswith("skill_rule:"))
    ]
