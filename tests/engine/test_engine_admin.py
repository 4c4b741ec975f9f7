"""Admin overrides as pure steps: results, ledger, settling, and typed errors (SPEC §6)."""

from __future__ import annotations

import pytest

import buddyrules as br
from buddyrules import (
    InsufficientBalance,
    ProgressionNotSpendable,
    ResourceNotFound,
    ValidationFailed,
)
from buddyrules.engine.admin import (
    admin_add_skill,
    admin_award_badge,
    admin_earn_coins,
    admin_grant_tokens,
    admin_set_skill,
    admin_spend_coins,
    admin_spend_tokens,
    admin_unlock_gate,
)

from .helpers import make_rulebook


@pytest.fixture(scope="module")
def rb() -> br.Rulebook:
    return make_rulebook(
        skills=[{"key": "s", "max_value": 50, "points_per_level": 10, "max_level": 5}],
        tokens=[
            {"key": "gems", "kind": "primary", "max_balance": 100},
            {"key": "xp", "kind": "progression"},
        ],
        badges=[
            {"key": "rich", "when": "coins >= 100", "reward": {"tokens": {"gems": 1}}},
            {"key": "gift"},
        ],
        gates=[{"key": "bonus", "token": "gems", "cost": 30}],
    )


@pytest.fixture
def state(rb: br.Rulebook) -> br.BuddyState:
    return br.new_buddy(rb, "u1")


def test_earn_and_spend_coins(rb: br.Rulebook, state: br.BuddyState) -> None:
    earned = admin_earn_coins(rb, state, 120, "support")
    assert earned.state.coins == 120
    assert earned.effects.coins == 120
    # Settling after the grant awards a badge whose condition became true.
    assert earned.effects.badges_awarded == ("rich",)
    assert earned.state.tokens["gems"] == 1
    assert [(e.currency, e.amount, e.reason) for e in earned.ledger] == [
        ("coins", 120, "admin:support"),
        ("token:gems", 1, "badge:rich"),
    ]
    spent = admin_spend_coins(rb, earned.state, 120, "shop")
    assert spent.state.coins == 0
    assert spent.state.badges == ("rich",)  # never revoked
    assert [n.type for n in spent.notifications] == ["coins.spent"]
    with pytest.raises(InsufficientBalance) as info:
        admin_spend_coins(rb, spent.state, 1, "shop")
    assert info.value.code == "insufficient_balance" and info.value.status == 400


@pytest.mark.parametrize("amount", [0, -5, True])
def test_amounts_must_be_positive_integers(
    rb: br.Rulebook, state: br.BuddyState, amount: int
) -> None:
    with pytest.raises(ValidationFailed):
        admin_earn_coins(rb, state, amount, "x")
    with pytest.raises(ValidationFailed):
        admin_spend_coins(rb, state, amount, "x")
    with pytest.raises(ValidationFailed):
        admin_grant_tokens(rb, state, "gems", amount, "x")


def test_tokens_grant_clip_and_spend(rb: br.Rulebook, state: br.BuddyState) -> None:
    granted = admin_grant_tokens(rb, state, "gems", 150, "promo")
    assert granted.state.tokens["gems"] == 100  # max_balance
    assert granted.effects.tokens == ("gems:100",)
    spent = admin_spend_tokens(rb, granted.state, "gems", 40, "shop")
    assert spent.state.tokens["gems"] == 60
    with pytest.raises(InsufficientBalance):
        admin_spend_tokens(rb, spent.state, "gems", 61, "shop")
    xp = admin_grant_tokens(rb, state, "xp", 5, "promo").state
    with pytest.raises(ProgressionNotSpendable) as info:
        admin_spend_tokens(rb, xp, "xp", 1, "shop")
    assert info.value.code == "progression_not_spendable"
    with pytest.raises(ResourceNotFound):
        admin_grant_tokens(rb, state, "nope", 1, "x")
    with pytest.raises(ResourceNotFound):
        admin_spend_tokens(rb, state, "nope", 1, "x")


def test_set_and_add_skill(rb: br.Rulebook, state: br.BuddyState) -> None:
    s = admin_set_skill(rb, state, "s", 25)
    assert s.state.skills == {"s": 25}
    assert s.effects.skills[0]["level"] == 2
    assert admin_set_skill(rb, state, "s", 500).state.skills == {"s": 50}
    assert admin_add_skill(rb, s.state, "s", -10).state.skills == {"s": 15}
    assert admin_add_skill(rb, s.state, "s", -100).state.skills == {"s": 0}
    with pytest.raises(ResourceNotFound):
        admin_set_skill(rb, state, "nope", 1)
    with pytest.raises(ResourceNotFound):
        admin_add_skill(rb, state, "nope", 1)
    with pytest.raises(ValidationFailed):
        admin_set_skill(rb, state, "s", 1.5)  # type: ignore[arg-type]


def test_award_badge(rb: br.Rulebook, state: br.BuddyState) -> None:
    out = admin_award_badge(rb, state, "gift")
    assert out.effects.badges_awarded == ("gift",)
    assert out.state.badges == ("gift",)
    with pytest.raises(ResourceNotFound) as info:
        admin_award_badge(rb, state, "nope")
    assert info.value.code == "resource_not_found" and info.value.status == 404


def test_unlock_gate_once(rb: br.Rulebook, state: br.BuddyState) -> None:
    with pytest.raises(InsufficientBalance):
        admin_unlock_gate(rb, state, "bonus")
    rich = admin_grant_tokens(rb, state, "gems", 50, "promo").state
    outcome, already = admin_unlock_gate(rb, rich, "bonus")
    assert not already
    assert outcome.state.gates == ("bonus",)
    assert outcome.state.tokens["gems"] == 20
    assert [(e.currency, e.amount, e.reason) for e in outcome.ledger] == [
        ("token:gems", -30, "gate:bonus")
    ]
    again, already = admin_unlock_gate(rb, outcome.state, "bonus")
    assert already
    assert again.state.tokens["gems"] == 20 and again.ledger == ()
    with pytest.raises(ResourceNotFound):
        admin_unlock_gate(rb, state, "nope")


def test_admin_steps_never_mutate_their_input(rb: br.Rulebook, state: br.BuddyState) -> None:
    rich = admin_earn_coins(rb, state, 200, "x").state
    before = rich.model_dump_json()
    admin_spend_coins(rb, rich, 10, "x")
    admin_grant_tokens(rb, rich, "gems", 10, "x")
    admin_set_skill(rb, rich, "s", 10)
    admin_award_badge(rb, rich, "gift")
    assert rich.model_dump_json() == before
