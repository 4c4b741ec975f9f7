"""Evolution: readiness of the next stage and, with ``auto_evolve``, one stage per event."""

from __future__ import annotations

from typing import Any

from buddyrules.engine.turn import Turn

__all__ = ["evaluate_evolution", "evolve_now", "next_stage_ready"]


def next_stage_ready(turn: Turn) -> tuple[bool, str | None]:
    """Whether the next stage's condition holds (False at the last stage)."""
    stages = turn.rulebook.stages
    if turn.stage >= len(stages):
        return False, None
    when = stages[turn.stage].when  # stages[n] is stage n + 1
    if when is None:
        return False, None
    return when.test(turn.ns)


def evolve_now(turn: Turn, reason: str) -> None:
    """Advance one stage (the caller checked readiness)."""
    turn.stage += 1
    if turn.ns:  # a live namespace is kept current (a plan may run without one)
        turn.ns["stage"] = turn.stage
    turn.evolved_to = turn.stage
    turn.visible = True
    stage = turn.rulebook.stages[turn.stage - 1]
    turn.notify("buddy.evolved", {"stage": turn.stage, "name": stage.name, "reason": reason})


def evaluate_evolution(turn: Turn, *, record_problems: bool = True) -> None:
    """Report readiness; with ``auto_evolve`` advance one stage (never backwards)."""
    ready, problem = next_stage_ready(turn)
    if problem is not None and record_problems:
        turn.problem(f"evolution.stages[{turn.stage}]", f"condition: {problem}")
    if turn.explain:
        entry: dict[str, Any] = {
            "kind": "evolution",
            "rule": f"stage {turn.stage + 1}",
            "fired": ready,
            "reason": None,
        }
        stages = turn.rulebook.stages
        if turn.stage < len(stages):
            when = stages[turn.stage].when
            if when is not None:
                entry["reads"] = when.read_values(turn.ns)
        if problem is not None:
            entry["reason"] = f"evaluation problem: {problem}"
        elif not ready:
            entry["reason"] = (
                "last stage reached" if turn.stage >= len(stages) else "condition false"
            )
        turn.trace.append(entry)
    if ready and turn.evolution_notified < turn.stage + 1:
        turn.evolution_notified = turn.stage + 1
        turn.evolution_became_ready = True
        turn.visible = True
        turn.notify("evolution.ready", {"stage": turn.stage + 1})
    if ready and turn.rulebook.auto_evolve:
        evolve_now(turn, "auto_evolve")
        ready, _ = next_stage_ready(turn)
    turn.evolution_ready = ready
