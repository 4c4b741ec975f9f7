"""BuddyState: the immutable, serialisable state of one buddy.

``model_dump_json()`` round-trips exactly through ``BuddyState.model_validate_json``. The
engine never mutates a state; it builds a new one per event.

The parts kept per streak, per capped rule and per path (:class:`StreakState`,
:class:`RuleUsage`, :class:`PathState`) are frozen, slotted dataclasses rather than pydantic
models: the engine builds one or two per event and reads their fields often, and a slotted
dataclass is one small object with plain attribute reads where a model is an object, a dict
and a ``__getattr__`` hook. Pydantic validates and serialises them as the same JSON objects.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar, Self

from pydantic import BaseModel, ConfigDict, Field

from buddyrules.effects import frozen_builder

if TYPE_CHECKING:
    from buddyrules.rulebook.compiled import Rulebook

__all__ = ["BuddyState", "PathState", "RuleUsage", "StreakState"]


_object_new = object.__new__
# BaseModel's own slots, set through their descriptors: faster than object.__setattr__.
_set_dict = BaseModel.__dict__["__dict__"].__set__
_set_fields_set = BaseModel.__dict__["__pydantic_fields_set__"].__set__
_set_extra = BaseModel.__dict__["__pydantic_extra__"].__set__
_set_private = BaseModel.__dict__["__pydantic_private__"].__set__
_FIELDS_SET: dict[type, set[str]] = {}


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    @classmethod
    def trusted(cls, values: dict[str, Any]) -> Self:
        """Build an instance from already valid values for every field, without validation.

        The engine's hot path: ``model_construct`` costs several microseconds per state
        because it resolves aliases and defaults field by field. ``values`` must hold every
        field (with values of the right types) and is used as is, not copied.
        """
        model = _object_new(cls)
        _set_dict(model, values)
        # Every field is set. The set is shared by all trusted instances of a class: frozen
        # models never add to it, and pydantic copies it before changing it (model_copy).
        fields_set = _FIELDS_SET.get(cls)
        if fields_set is None:
            fields_set = _FIELDS_SET[cls] = set(cls.model_fields)
        _set_fields_set(model, fields_set)
        _set_extra(model, None)
        _set_private(model, None)
        return model


def _maker(cls: type[_Frozen]) -> Any:
    """``cls.trusted`` as a plain function with everything it needs bound (the hot path)."""
    fields_set = _FIELDS_SET.setdefault(cls, set(cls.model_fields))

    def make(
        values: dict[str, Any],
        _new: Any = _object_new,
        _cls: type[_Frozen] = cls,
        _sd: Any = _set_dict,
        _sf: Any = _set_fields_set,
        _fs: set[str] = fields_set,
        _se: Any = _set_extra,
        _sp: Any = _set_private,
    ) -> Any:
        model = _new(_cls)
        _sd(model, values)
        _sf(model, _fs)
        _se(model, None)
        _sp(model, None)
        return model

    return make


# Validated by pydantic inside BuddyState: unknown keys are refused, as for the models.
_PART_CONFIG = ConfigDict(extra="forbid")


@dataclass(frozen=True, slots=True)
class StreakState:
    """One streak: current ``count``, ``best`` ever, last ticked period and paid milestones."""

    __pydantic_config__: ClassVar[ConfigDict] = _PART_CONFIG

    count: int = 0
    best: int = 0
    last_period: int | None = None
    milestones_paid: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class RuleUsage:
    """What a capped or limited rule has credited: per day, per ISO week and in total."""

    __pydantic_config__: ClassVar[ConfigDict] = _PART_CONFIG

    day: int | None = None
    day_total: int = 0
    week: int | None = None
    week_total: int = 0
    times: int = 0


@dataclass(frozen=True, slots=True)
class PathState:
    """Progress along one path: unlocked and completed steps, completed sub-steps."""

    __pydantic_config__: ClassVar[ConfigDict] = _PART_CONFIG

    unlocked: tuple[str, ...] = ()
    completed: tuple[str, ...] = ()
    sub_steps_done: tuple[str, ...] = ()  # "step/sub_step"


class BuddyState(_Frozen):
    """A buddy's whole state. Build a fresh one with :func:`buddyrules.new_buddy`."""

    user_id: str
    audience: str
    rulebook_version: str
    timezone: str | None = None
    hatched_at: datetime | None = None
    stage: int = 1
    coins: int = 0
    tokens: dict[str, int] = Field(default_factory=dict)
    skills: dict[str, int] = Field(default_factory=dict)
    badges: tuple[str, ...] = ()
    badges_ready: tuple[str, ...] = ()
    counters: dict[str, int] = Field(default_factory=dict)
    streaks: dict[str, StreakState] = Field(default_factory=dict)
    rule_usage: dict[str, RuleUsage] = Field(default_factory=dict)
    paths: dict[str, PathState] = Field(default_factory=dict)
    gates: tuple[str, ...] = ()
    decay_applied: dict[str, int] = Field(default_factory=dict)
    evolution_notified: int = 1
    last_event_at: datetime | None = None
    events_applied: int = 0

    def token(self, key: str) -> int:
        """A token balance (0 when never credited)."""
        return self.tokens.get(key, 0)

    def skill_value(self, key: str) -> int:
        """A skill value (0 when never credited)."""
        return self.skills.get(key, 0)

    def skill_level(self, rulebook: Rulebook, key: str) -> int:
        """A skill's level under ``rulebook``."""
        return rulebook.skills[key].level_of(self.skills.get(key, 0))

    def streak_count(self, key: str) -> int:
        """A streak's current count."""
        s = self.streaks.get(key)
        return s.count if s is not None else 0

    def summary(self) -> dict[str, Any]:
        """A short JSON-compatible summary for display."""
        return {
            "user_id": self.user_id,
            "audience": self.audience,
            "stage": self.stage,
            "coins": self.coins,
            "tokens": dict(self.tokens),
            "skills": dict(self.skills),
            "badges": list(self.badges),
            "badges_ready": list(self.badges_ready),
            "streaks": {k: {"count": v.count, "best": v.best} for k, v in self.streaks.items()},
            "events_applied": self.events_applied,
        }


# The engine builds these once or more per event: see _Frozen.trusted for the contract.
trusted_state: Callable[[dict[str, Any]], BuddyState] = _maker(BuddyState)
#: Positional constructors of the parts (every field, in order; see ``frozen_builder``).
build_streak: Callable[..., StreakState] = frozen_builder(StreakState)
build_usage: Callable[..., RuleUsage] = frozen_builder(RuleUsage)
build_path: Callable[..., PathState] = frozen_builder(PathState)


def trusted_streak(values: dict[str, Any]) -> StreakState:
    """A StreakState from every field by name (the interpreter's form of build_streak)."""
    return build_streak(**values)


def trusted_usage(values: dict[str, Any]) -> RuleUsage:
    """A RuleUsage from every field by name (the interpreter's form of build_usage)."""
    return build_usage(**values)


def trusted_path(values: dict[str, Any]) -> PathState:
    """A PathState from every field by name (the interpreter's form of build_path)."""
    return build_path(**values)
