"""Admin overrides as pure steps (SPEC §6): the same Turn, ledger and outbox as events.

After every change, badges and evolution readiness are settled again, so that an admin grant
that makes a badge's condition true awards it at once, exactly as an event would.
"""

from __future__ import annotations

from buddyrules.engine.badges import evaluate_badges
from buddyrules.engine.evolution import evaluate_evolution, evolve_now, next_stage_ready
from buddyrules.engine.paths import complete_sub_step, evaluate_paths
from buddyrules.engine.turn import Outcome, Turn
from buddyrules.errors import (
    EvolutionNotReady,
    InsufficientBalance,
    ProgressionNotSpendable,
    ResourceNotFound,
    ValidationFailed,
)
from buddyrules.rulebook.compiled import Rulebook
from buddyrules.state import BuddyState

__all__ = [
    "admin_add_skill",
    "admin_award_badge",
    "admin_complete_sub_step",
    "admin_earn_coins",
    "admin_evolve",
    "admin_grant_tokens",
    "admin_set_skill",
    "admin_spend_coins",
    "admin_spend_tokens",
    "admin_unlock_gate",
]


def _start(rulebook: Rulebook, state: BuddyState) -> Turn:
    turn = Turn.start(rulebook, state)
    # No event: conditions that read the event or its properties are simply false here.
    turn.build_namespace(
        {
            "type": "",
            "audience": state.audience,
            "user_id": state.user_id,
            "occurred_at": "",
            "properties": {},
        },
        state.audience,
    )
    return turn


def _settle(turn: Turn) -> Outcome:
    if turn.rulebook.paths:
        before = len(turn.problems)
        evaluate_paths(turn, turn.base.audience)
        if len(turn.problems) > before:  # problems may still be the shared empty tuple
            del turn.problems[before:]
    if turn.rulebook.badges:
        evaluate_badges(turn, turn.base.audience, record_problems=False)
    if len(turn.rulebook.stages) > 1:
        evaluate_evolution(turn, record_problems=False)
    return turn.finish(debug=False)


def _positive(name: str, amount: int) -> None:
    if not isinstance(amount, int) or isinstance(amount, bool) or amount <= 0:
        raise ValidationFailed(
            f"{name} must be a positive integer", {"fields": {name: "must be > 0"}}
        )


def _token(rulebook: Rulebook, key: str) -> None:
    if key not in rulebook.tokens:
        raise ResourceNotFound(f"unknown token {key!r}", {"token": key})


def _skill(rulebook: Rulebook, key: str) -> None:
    if key not in rulebook.skills:
        raise ResourceNotFound(f"unknown skill {key!r}", {"skill": key})


def admin_earn_coins(rulebook: Rulebook, state: BuddyState, amount: int, reason: str) -> Outcome:
    """Credit coins."""
    _positive("amount", amount)
    turn = _start(rulebook, state)
    turn.credit_coins(amount, f"admin:{reason}")
    return _settle(turn)


def admin_spend_coins(rulebook: Rulebook, state: BuddyState, amount: int, reason: str) -> Outcome:
    """Debit coins; ``insufficient_balance`` rather than going negative."""
    _positive("amount", amount)
    if amount > state.coins:
        raise InsufficientBalance(
            f"cannot spend {amount} coins: balance is {state.coins}",
            {"currency": "coins", "balance": state.coins, "amount": amount},
        )
    turn = _start(rulebook, state)
    turn.debit_coins(amount, f"admin:{reason}")
    return _settle(turn)


def admin_grant_tokens(
    rulebook: Rulebook, state: BuddyState, token: str, amount: int, reason: str
) -> Outcome:
    """Credit a token (clipped to its ``max_balance``)."""
    _token(rulebook, token)
    _positive("amount", amount)
    turn = _start(rulebook, state)
    turn.credit_token(token, amount, f"admin:{reason}")
    return _settle(turn)


def admin_spend_tokens(
    rulebook: Rulebook, state: BuddyState, token: str, amount: int, reason: str
) -> Outcome:
    """Debit a primary token; progression tokens are earn-only."""
    _token(rulebook, token)
    _positive("amount", amount)
    if not rulebook.tokens[token].spendable:
        raise ProgressionNotSpendable(
            f"token {token!r} is a progression token and cannot be spent", {"token": token}
        )
    balance = state.tokens.get(token, 0)
    if amount > balance:
        raise InsufficientBalance(
            f"cannot spend {amount} {token}: balance is {balance}",
            {"currency": token, "balance": balance, "amount": amount},
        )
    turn = _start(rulebook, state)
    turn.debit_token(token, amount, f"admin:{reason}")
    return _settle(turn)


def admin_set_skill(rulebook: Rulebook, state: BuddyState, skill: str, value: int) -> Outcome:
    """Set a skill value (clamped to 0..max_value)."""
    _skill(rulebook, skill)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValidationFailed("value must be an integer", {"fields": {"value": "not an int"}})
    turn = _start(rulebook, state)
    turn.set_skill(skill, value, "admin", message="")
    return _settle(turn)


def admin_add_skill(rulebook: Rulebook, state: BuddyState, skill: str, amount: int) -> Outcome:
    """Add to a skill value (negative amounts subtract; clamped to 0..max_value)."""
    _skill(rulebook, skill)
    if not isinstance(amount, int) or isinstance(amount, bool):
        raise ValidationFailed("amount must be an integer", {"fields": {"amount": "not an int"}})
    turn = _start(rulebook, state)
    turn.set_skill(skill, state.skills.get(skill, 0) + amount, "admin", message="")
    return _settle(turn)


def admin_award_badge(rulebook: Rulebook, state: BuddyState, badge: str) -> Outcome:
    """Award a badge (a ready manual badge becomes awarded) and pay its reward."""
    if badge not in rulebook.badges_by_key:
        raise ResourceNotFound(f"unknown badge {badge!r}", {"badge": badge})
    turn = _start(rulebook, state)
    turn.award_badge(badge, "admin")
    return _settle(turn)


def admin_unlock_gate(rulebook: Rulebook, state: BuddyState, gate: str) -> tuple[Outcome, bool]:
    """Unlock a gate once by spending its token; returns (outcome, already_unlocked)."""
    spec = rulebook.gates.get(gate)
    if spec is None:
        raise ResourceNotFound(f"unknown gate {gate!r}", {"gate": gate})
    turn = _start(rulebook, state)
    if gate in state.gates:
        return turn.finish(debug=False), True
    balance = state.tokens.get(spec.token, 0)
    if balance < spec.cost:
        raise InsufficientBalance(
            f"gate {gate!r} costs {spec.cost} {spec.token}: balance is {balance}",
            {"currency": spec.token, "balance": balance, "amount": spec.cost},
        )
    turn.debit_token(spec.token, spec.cost, f"gate:{gate}")
    turn.add_gate(gate)
    return _settle(turn), False


def admin_evolve(rulebook: Rulebook, state: BuddyState) -> Outcome:
    """Advance one stage; ``evolution_not_ready`` when the next stage's condition is false."""
    turn = _start(rulebook, state)
    if state.stage >= len(rulebook.stages):
        raise EvolutionNotReady(
            f"buddy is at the last stage ({state.stage})", {"stage": state.stage}
        )
    ready, problem = next_stage_ready(turn)
    if not ready:
        raise EvolutionNotReady(
            f"stage {state.stage + 1} is not ready"
            + (f" ({problem})" if problem else ": its condition is false"),
            {"stage": state.stage, "next_stage": state.stage + 1},
        )
    evolve_now(turn, "admin")
    return _settle(turn)


def admin_complete_sub_step(
    rulebook: Rulebook, state: BuddyState, path: str, step: str, sub_step: str
) -> Outcome:
    """Complete a sub-step that allows manual completion."""
    p = next((x for x in rulebook.paths if x.key == path), None)
    st = next((s for s in p.steps if s.key == step), None) if p else None
    sub = next((s for s in st.sub_steps if s.key == sub_step), None) if st else None
    if sub is None:
        raise ResourceNotFound(
            f"unknown sub-step {path}/{step}/{sub_step}",
            {"path": path, "step": step, "sub_step": sub_step},
        )
    if not sub.allow_manual_complete:
        raise ValidationFailed(
            f"sub-step {path}/{step}/{sub_step} does not allow manual completion",
            {"fields": {"sub_step": "allow_manual_complete is false"}},
        )
    turn = _start(rulebook, state)
    complete_sub_step(turn, path, step, sub_step)
    return _settle(turn)
