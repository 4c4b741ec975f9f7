"""The rulebook file format (SPEC §9) as pydantic models.

These models describe what a rule author writes. They forbid unknown keys everywhere (a typo
must not silently disable a rule) and check local shapes; cross-references and expressions
are checked by :mod:`buddyrules.rulebook.compiled`.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr

__all__ = [
    "BadgeSpec",
    "CoinRuleSpec",
    "DecaySpec",
    "EvolutionSpec",
    "GateSpec",
    "MilestoneSpec",
    "MultiplierSpec",
    "PathSpec",
    "RewardSpec",
    "RulebookSpec",
    "SkillRuleSpec",
    "SkillSpec",
    "StageSpec",
    "StepSpec",
    "StreakSpec",
    "SubStepSpec",
    "TokenRuleSpec",
    "TokenSpec",
]

Key = Annotated[str, Field(pattern=r"^[A-Za-z][A-Za-z0-9_\-]*$", min_length=1, max_length=64)]
EventType = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$", min_length=1, max_length=64)]
AudienceName = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$", min_length=1, max_length=32)]
Expr = Annotated[StrictStr, Field(min_length=1)]
PositiveInt = Annotated[StrictInt, Field(gt=0)]
NonNegativeInt = Annotated[StrictInt, Field(ge=0)]
# An amount is an integer or an expression evaluated per event.
Amount = StrictInt | Expr
Period = Literal["daily", "weekly", "monthly"]


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class RewardSpec(_Spec):
    """A reward: any subset of coins, token credits and one badge."""

    coins: NonNegativeInt = 0
    tokens: dict[Key, NonNegativeInt] = Field(default_factory=dict)
    badge: Key | None = None


class SkillSpec(_Spec):
    """A skill whose level is ``min(max_level, value // points_per_level)``."""

    key: Key
    name: StrictStr | None = None
    max_value: PositiveInt
    points_per_level: PositiveInt
    max_level: NonNegativeInt


class TokenSpec(_Spec):
    """A token currency: ``primary`` tokens are spendable, ``progression`` ones earn-only."""

    key: Key
    name: StrictStr | None = None
    kind: Literal["primary", "progression"] = "primary"
    max_balance: PositiveInt | None = None


class MultiplierSpec(_Spec):
    """A factor applied to a coin grant when its condition holds (matching factors multiply)."""

    when: Expr
    factor: Annotated[StrictInt | StrictFloat, Field(gt=0)]


class CoinRuleSpec(_Spec):
    """Coins granted for an event type."""

    key: Key | None = None
    event: EventType
    amount: Amount
    when: Expr | None = None
    audience: AudienceName | None = None
    multiplier: list[MultiplierSpec] = Field(default_factory=list)
    daily_cap: PositiveInt | None = None
    weekly_cap: PositiveInt | None = None
    total_limit: PositiveInt | None = None


class SkillRuleSpec(_Spec):
    """Skill points granted for an event type."""

    key: Key | None = None
    event: EventType
    skill: Key
    amount: Amount
    when: Expr | None = None
    audience: AudienceName | None = None


class TokenRuleSpec(_Spec):
    """Token credits granted for an event type."""

    key: Key | None = None
    event: EventType
    token: Key
    amount: Amount
    when: Expr | None = None
    audience: AudienceName | None = None
    daily_cap: PositiveInt | None = None
    weekly_cap: PositiveInt | None = None


class MilestoneSpec(_Spec):
    """A streak count that pays a reward once per buddy."""

    count: PositiveInt
    reward: RewardSpec = Field(default_factory=RewardSpec)


class StreakSpec(_Spec):
    """Consecutive periods with at least one of ``events``."""

    key: Key
    events: Annotated[list[EventType], Field(min_length=1)]
    period: Period = "daily"
    audience: AudienceName | None = None
    tick_reward: RewardSpec | None = None
    freeze_token: Key | None = None
    milestones: list[MilestoneSpec] = Field(default_factory=list)


class BadgeSpec(_Spec):
    """A badge: ``auto`` awards at once, ``manual`` reports ready and waits for an admin."""

    key: Key
    name: StrictStr | None = None
    description: StrictStr | None = None
    mode: Literal["auto", "manual"] = "auto"
    when: Expr | None = None
    reward: RewardSpec | None = None
    requires: list[Key] = Field(default_factory=list)
    hidden: StrictBool = False
    audience: AudienceName | None = None


class StageSpec(_Spec):
    """An evolution stage; every stage after the first has a ``when``."""

    name: StrictStr
    when: Expr | None = None


class EvolutionSpec(_Spec):
    """One to five stages; buddies start at stage 1."""

    auto_evolve: StrictBool = False
    stages: Annotated[list[StageSpec], Field(min_length=1, max_length=5)]


class SubStepSpec(_Spec):
    """A part of a path step, completed by a condition or (if allowed) by an admin."""

    key: Key
    name: StrictStr | None = None
    completion_condition: Expr | None = None
    allow_manual_complete: StrictBool = False


class StepSpec(_Spec):
    """A path step: unlocks after the previous one (or by its own condition)."""

    key: Key
    name: StrictStr | None = None
    unlock_condition: Expr | None = None
    completion_condition: Expr | None = None
    reward: RewardSpec | None = None
    sub_steps: list[SubStepSpec] = Field(default_factory=list)


class PathSpec(_Spec):
    """An ordered learning path."""

    key: Key
    name: StrictStr | None = None
    audience: AudienceName | None = None
    steps: Annotated[list[StepSpec], Field(min_length=1)]


class GateSpec(_Spec):
    """Content unlocked once by spending a primary token."""

    key: Key
    token: Key
    cost: PositiveInt


class DecaySpec(_Spec):
    """Time-based skill decay applied by ``sweep``."""

    key: Key | None = None
    skill: Key
    cadence: Period = "weekly"
    amount: PositiveInt
    floor: NonNegativeInt = 0
    grace_days: NonNegativeInt = 0
    apply_only_above: NonNegativeInt | None = None


class RulebookSpec(_Spec):
    """A whole rulebook file (SPEC §9)."""

    name: Annotated[StrictStr, Field(min_length=1, max_length=128)]
    description: StrictStr | None = None
    timezone: StrictStr = "UTC"
    audiences: Annotated[list[AudienceName], Field(min_length=1)]
    event_types: dict[AudienceName, list[EventType]]
    auto_hatch: StrictBool = False
    skills: list[SkillSpec] = Field(default_factory=list)
    tokens: list[TokenSpec] = Field(default_factory=list)
    coin_rules: list[CoinRuleSpec] = Field(default_factory=list)
    skill_rules: list[SkillRuleSpec] = Field(default_factory=list)
    token_rules: list[TokenRuleSpec] = Field(default_factory=list)
    streaks: list[StreakSpec] = Field(default_factory=list)
    badges: list[BadgeSpec] = Field(default_factory=list)
    evolution: EvolutionSpec = Field(
        default_factory=lambda: EvolutionSpec(stages=[StageSpec(name="Hatchling")])
    )
    gates: list[GateSpec] = Field(default_factory=list)
    decay: list[DecaySpec] = Field(default_factory=list)
    paths: list[PathSpec] = Field(default_factory=list)
