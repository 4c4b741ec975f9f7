"""The Effects record returned for every accepted event (SPEC §2)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any, TypeVar

__all__ = ["CORE_KEYS", "Effects", "frozen_builder"]

#: The SPEC §2 keys every effects record carries on the wire, in their documented order.
CORE_KEYS: tuple[str, ...] = (
    "coins",
    "badges_awarded",
    "badges_ready",
    "tokens",
    "evolution_ready",
    "streak_milestones",
    "debug_reason",
)

_T = TypeVar("_T")

_CAMEL = {
    "badges_awarded": "badgesAwarded",
    "badges_ready": "badgesReady",
    "evolution_ready": "evolutionReady",
    "streak_milestones": "streakMilestones",
    "debug_reason": "debugReason",
    "evolved_to": "evolvedTo",
    "rulebook_version": "rulebookVersion",
}


def _camel_key(key: str) -> str:
    if key in _CAMEL:
        return _CAMEL[key]
    head, *rest = key.split("_")
    return head + "".join(p.title() for p in rest)


# Keys whose values are data keyed by user names (an expression's reads such as
# ``counters.lesson_done``), not field names: their keys are kept as written.
_DATA_KEYS = frozenset({"reads"})


def _camelise(value: Any) -> Any:
    if isinstance(value, dict):
        return {_camel_key(k): (v if k in _DATA_KEYS else _camelise(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [_camelise(v) for v in value]
    return value


@dataclass(frozen=True, slots=True)
class Effects:
    """What one event changed.

    The core keys of SPEC §2 are always present on the wire; the extras (``skills``,
    ``streaks``, ``evolved_to``, ``paths``, ``problems``, ``replayed``, ``rulebook_version``,
    ``trace``) carry detail. ``problems`` lists evaluation problems (an amount expression
    that failed or went negative, a condition that could not be evaluated).
    """

    coins: int = 0
    badges_awarded: tuple[str, ...] = ()
    badges_ready: tuple[str, ...] = ()
    tokens: tuple[str, ...] = ()
    evolution_ready: bool = False
    streak_milestones: tuple[Mapping[str, Any], ...] = ()
    debug_reason: str | None = None
    skills: tuple[Mapping[str, Any], ...] = ()
    streaks: tuple[Mapping[str, Any], ...] = ()
    evolved_to: int | None = None
    paths: tuple[Mapping[str, Any], ...] = ()
    problems: tuple[Mapping[str, Any], ...] = ()
    replayed: bool = False
    rulebook_version: str | None = None
    trace: tuple[Mapping[str, Any], ...] | None = field(default=None, compare=False)

    def token_amounts(self) -> dict[str, int]:
        """Token credits as a mapping ``{token_key: amount}``."""
        out: dict[str, int] = {}
        for item in self.tokens:
            key, _, amount = item.rpartition(":")
            out[key] = out.get(key, 0) + int(amount)
        return out

    def to_wire(self, *, include_trace: bool = True) -> dict[str, Any]:
        """The snake_case wire dict; every SPEC §2 key is always present."""
        out: dict[str, Any] = {
            "coins": self.coins,
            "badges_awarded": list(self.badges_awarded),
            "badges_ready": list(self.badges_ready),
            "tokens": list(self.tokens),
            "evolution_ready": self.evolution_ready,
            "streak_milestones": [dict(m) for m in self.streak_milestones],
            "debug_reason": self.debug_reason,
            "skills": [dict(s) for s in self.skills],
            "streaks": [dict(s) for s in self.streaks],
            "evolved_to": self.evolved_to,
            "paths": [dict(p) for p in self.paths],
            "problems": [dict(p) for p in self.problems],
            "replayed": self.replayed,
            "rulebook_version": self.rulebook_version,
        }
        if include_trace and self.trace is not None:
            out["trace"] = [dict(t) for t in self.trace]
        return out

    def to_camel(self) -> dict[str, Any]:
        """The camelCase rendering for JavaScript clients (``badgesAwarded``, ...)."""
        result: dict[str, Any] = _camelise(self.to_wire())
        return result

    @classmethod
    def from_wire(cls, data: Mapping[str, Any]) -> Effects:
        """Rebuild an Effects from its wire dict (as stored in a receipt)."""
        trace = data.get("trace")
        return cls(
            coins=int(data.get("coins", 0)),
            badges_awarded=tuple(data.get("badges_awarded", ())),
            badges_ready=tuple(data.get("badges_ready", ())),
            tokens=tuple(data.get("tokens", ())),
            evolution_ready=bool(data.get("evolution_ready", False)),
            streak_milestones=tuple(data.get("streak_milestones", ())),
            debug_reason=data.get("debug_reason"),
            skills=tuple(data.get("skills", ())),
            streaks=tuple(data.get("streaks", ())),
            evolved_to=data.get("evolved_to"),
            paths=tuple(data.get("paths", ())),
            problems=tuple(data.get("problems", ())),
            replayed=bool(data.get("replayed", False)),
            rulebook_version=data.get("rulebook_version"),
            trace=tuple(trace) if trace is not None else None,
        )

    def as_replayed(self) -> Effects:
        """This record marked as a replay of a stored receipt."""
        return replace(self, replayed=True)


def frozen_builder(cls: type[_T]) -> Callable[..., _T]:
    """A positional constructor for a frozen, slotted dataclass, for hot paths.

    A frozen dataclass's ``__init__`` sets each field through ``object.__setattr__``; with
    fifteen fields that costs more than the rest of building the record. The function
    returned fills a plain slotted twin of ``cls`` (same slots, so the same memory layout)
    with ordinary attribute stores, then makes it a ``cls`` by assigning ``__class__``,
    which CPython allows between such layouts: about 2.5x faster, and the result is an
    ordinary ``cls`` instance (frozen, equal to one built by ``cls(...)``). It takes every
    field, positionally, in declaration order, and runs no ``__post_init__``.
    """
    names = [f.name for f in fields(cls)]  # type: ignore[arg-type]
    slots = tuple(cls.__slots__)  # type: ignore[attr-defined]
    if sorted(slots) != sorted(names):
        raise TypeError(f"{cls.__name__} must be a slotted dataclass with only its fields")
    namespace: dict[str, Any] = {"_cls": cls}
    # Generated from the dataclass's own field names only.
    lines = [
        "class Draft:",
        f"    __slots__ = {slots!r}",
        f"    def __init__(self, {', '.join(names)}):",
        *[f"        self.{name} = {name}" for name in names],
        f"def build({', '.join(names)}):",
        f"    o = Draft({', '.join(names)})",
        "    o.__class__ = _cls",
        "    return o",
    ]
    exec("\n".join(lines), namespace)
    build: Callable[..., _T] = namespace["build"]
    return build


#: ``Effects`` from its fifteen fields, positionally (the engine builds one per event).
build_effects = frozen_builder(Effects)
