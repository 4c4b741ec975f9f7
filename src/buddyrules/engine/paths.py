"""Paths: sub-steps and steps, unlocked and completed in order (SPEC §3 step 4).

A step unlocks when the previous step completes, or by its own ``unlock_condition``
(the first step is unlocked unless it has one). An unlocked step completes when all its
sub-steps are done and its ``completion_condition`` (if any) holds; completing pays its
reward. One forward pass per path suffices, because a step only depends on earlier ones.
"""

from __future__ import annotations

from typing import Any

from buddyrules.engine.turn import Turn
from buddyrules.rulebook.compiled import Path, Step
from buddyrules.state import PathState, trusted_path

__all__ = ["complete_sub_step", "evaluate_paths"]


def _holds(turn: Turn, step: Step, which: str) -> bool:
    expr = step.unlock if which == "unlock" else step.completion
    if expr is None:
        return True
    ok, problem = expr.test(turn.ns)
    if problem is not None:
        turn.problem(f"{step.path}.{which}", problem)
    return ok


def evaluate_paths(turn: Turn, audience: str) -> None:
    """Advance every path of the buddy's audience as far as its conditions allow."""
    dirty = turn.dirty
    masks = turn.rulebook.dependencies.path_masks
    for index, path in enumerate(turn.rulebook.paths):
        if dirty is not None and not masks[index] & dirty:
            # Settled input state: a path whose conditions read none of the changed parts
            # cannot move (see evaluate._changed_by_rules).
            continue
        if path.audience is not None and path.audience != audience:
            if turn.explain:
                turn.trace.append(
                    {
                        "kind": "path",
                        "rule": path.key,
                        "fired": False,
                        "reason": f"audience mismatch (path is for {path.audience!r})",
                    }
                )
            continue
        _advance_path(turn, path)


_NO_PROGRESS = PathState()


def _trace(turn: Turn, path: Path, step: Step, fired: bool, reason: str) -> None:
    entry: dict[str, Any] = {
        "kind": "path_step",
        "rule": f"{path.key}/{step.key}",
        "fired": fired,
        "reason": reason,
    }
    reads: dict[str, Any] = {}
    for expr in (step.unlock, step.completion):
        if expr is not None:
            reads.update(expr.read_values(turn.ns))
    if reads:
        entry["reads"] = reads
    turn.trace.append(entry)


def _advance_path(turn: Turn, path: Path) -> None:
    st = turn.paths.get(path.key) or _NO_PROGRESS
    unlocked, completed, done = st.unlocked, st.completed, st.sub_steps_done
    explain = turn.explain
    if len(completed) == len(path.steps) and not explain:
        return  # finished
    changed = False
    previous_complete = True
    for step in path.steps:
        if step.key in completed:
            previous_complete = True
            if explain:
                _trace(turn, path, step, False, "already completed")
            continue
        if step.key not in unlocked:
            can = _holds(turn, step, "unlock") if step.unlock is not None else previous_complete
            if not can:
                previous_complete = False
                if explain:
                    _trace(
                        turn,
                        path,
                        step,
                        False,
                        "locked: unlock condition false"
                        if step.unlock is not None
                        else "locked: the previous step is not completed",
                    )
                continue
            unlocked = (*unlocked, step.key)
            changed = True
            turn.append("path_changes", {"path": path.key, "step": step.key, "status": "unlocked"})
        pending: list[str] = []
        for sub in step.sub_steps:
            ref = sub.ref
            if ref in done:
                continue
            if sub.completion is not None:
                ok, problem = sub.completion.test(turn.ns)
                if problem is not None:
                    turn.problem(f"{step.path}.{sub.key}", problem)
                if ok:
                    done = (*done, ref)
                    changed = True
                    turn.append(
                        "path_changes",
                        {
                            "path": path.key,
                            "step": step.key,
                            "sub_step": sub.key,
                            "status": "completed",
                        },
                    )
                    continue
            pending.append(sub.key)
        if not pending and _holds(turn, step, "complete"):
            completed = (*completed, step.key)
            changed = True
            turn.append("path_changes", {"path": path.key, "step": step.key, "status": "completed"})
            turn.notify("path.step_completed", {"path": path.key, "step": step.key})
            if explain:
                _trace(turn, path, step, True, "completed")
            turn.set_path(
                path.key,
                trusted_path(
                    {"unlocked": unlocked, "completed": completed, "sub_steps_done": done}
                ),
            )
            turn.pay(step.reward, f"path:{path.key}:{step.key}")
            turn.note_rewards()
            previous_complete = True
        else:
            previous_complete = False
            if explain:
                _trace(
                    turn,
                    path,
                    step,
                    False,
                    f"waiting for sub-steps: {', '.join(pending)}"
                    if pending
                    else "completion condition false",
                )
    if changed:
        turn.visible = True
        turn.set_path(
            path.key,
            trusted_path({"unlocked": unlocked, "completed": completed, "sub_steps_done": done}),
        )


def complete_sub_step(turn: Turn, path_key: str, step_key: str, sub_key: str) -> bool:
    """Mark a sub-step done by hand (admin). Returns False if it was already done."""
    st = turn.paths.get(path_key) or PathState()
    ref = f"{step_key}/{sub_key}"
    if ref in st.sub_steps_done:
        return False
    turn.set_path(
        path_key,
        PathState(
            unlocked=st.unlocked, completed=st.completed, sub_steps_done=(*st.sub_steps_done, ref)
        ),
    )
    turn.visible = True
    turn.append(
        "path_changes",
        {"path": path_key, "step": step_key, "sub_step": sub_key, "status": "completed"},
    )
    return True
