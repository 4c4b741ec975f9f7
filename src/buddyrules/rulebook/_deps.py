"""The dependency index behind the engine's incremental badge and path passes.

Each state part that some skippable badge or path condition reads (see
:func:`buddyrules.conditions._deps.state_deps`) gets one bit; a condition's dependencies
are an int mask, and so is the set of parts an event changed. "Does this condition need
testing?" is then one ``&``. Bit 0 means "always": conditions that cannot be skipped carry
it, and every event's changed mask has it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from buddyrules.conditions import Expression
from buddyrules.conditions._deps import state_deps

if TYPE_CHECKING:
    from buddyrules.rulebook.compiled import Rulebook

__all__ = ["ALWAYS", "MIN_SKIPPABLE", "DependencyIndex"]

#: The bit of conditions that are always tested; set in every changed mask.
ALWAYS = 1
#: The fewest skippable badges and paths for which incremental passes pay off. Measured on
#: 2026-11-30 with the language example plus N badges on other event types (each with a
#: reward), against event plans that write every condition in (engine/inline.py): the full
#: plan was faster at N = 20 (15.7 vs 20.8 µs per event), 65 (20.2 vs 24.6) and 100 (21.3 vs
#: 22.5), slower at 140 (24.6 vs 22.5) and 200 (29.3 vs 23.7). (It was 12 while conditions
#: were called through the namespace.)
MIN_SKIPPABLE = 110


class DependencyIndex:
    """Masks of what each badge and path reads, and the bits of the parts worth watching.

    Only parts that some skippable condition reads get a bit (``watch_*``): the engine
    spends no time noticing changes to anything else.
    """

    __slots__ = (
        "badge_masks",
        "badges_by_bit",
        "bits",
        "path_masks",
        "watch_badges",
        "watch_coins",
        "watch_counters",
        "watch_skills",
        "watch_stage",
        "watch_streaks",
        "watch_tokens",
        "worthwhile",
    )

    badge_masks: tuple[int, ...]
    badges_by_bit: dict[int, tuple[int, ...]]
    path_masks: tuple[int, ...]
    bits: dict[str, int]
    watch_coins: int
    watch_stage: int
    watch_badges: int
    watch_tokens: tuple[tuple[str, int], ...]
    watch_skills: dict[str, int]
    watch_streaks: tuple[tuple[str, int], ...]
    watch_counters: dict[str, int]
    worthwhile: bool

    def __init__(self, rulebook: Rulebook) -> None:
        self.bits = {}
        badge_masks = []
        for badge in rulebook.badges:
            if badge.when is None:
                badge_masks.append(0)  # never awarded by the badge pass itself
                continue
            mask = self._mask([badge.when])
            if mask != ALWAYS and badge.requires:
                mask |= self._bit("badges")
            badge_masks.append(mask)
        self.badge_masks = tuple(badge_masks)
        by_bit: dict[int, list[int]] = {}
        for position, mask in enumerate(badge_masks):
            while mask:
                low = mask & -mask
                by_bit.setdefault(low, []).append(position)
                mask ^= low
        self.badges_by_bit = {bit: tuple(positions) for bit, positions in by_bit.items()}
        path_masks = []
        for path in rulebook.paths:
            expressions: list[Expression | None] = []
            for step in path.steps:
                expressions += [step.unlock, step.completion]
                expressions += [sub.completion for sub in step.sub_steps]
            path_masks.append(self._mask([e for e in expressions if e is not None]))
        self.path_masks = tuple(path_masks)
        bits = self.bits
        self.watch_coins = bits.get("coins", 0)
        self.watch_stage = bits.get("stage", 0)
        self.watch_badges = bits.get("badges", 0)
        self.watch_tokens = _prefixed(bits, "tokens.")
        self.watch_skills = dict(_prefixed(bits, "skills."))
        self.watch_streaks = _prefixed(bits, "streaks.")
        self.watch_counters = dict(_prefixed(bits, "counters."))
        # Noticing what changed, building the namespace and running the interpreter's passes
        # costs about as much as testing a hundred conditions written into a plan (see
        # MIN_SKIPPABLE). Below this many skippable badges and paths, the engine tests
        # everything and keeps no record.
        skippable = sum(1 for m in (*badge_masks, *path_masks) if m and not m & ALWAYS)
        self.worthwhile = skippable >= MIN_SKIPPABLE

    def _bit(self, part: str) -> int:
        bit = self.bits.get(part)
        if bit is None:
            bit = self.bits[part] = 1 << (len(self.bits) + 1)  # bit 0 is ALWAYS
        return bit

    def _mask(self, expressions: list[Expression]) -> int:
        mask = 0
        for expression in expressions:
            deps = state_deps(expression.source)
            if deps is None:
                return ALWAYS
            for part in sorted(deps):
                mask |= self._bit(part)
        return mask

    def badges_to_test(self, changed: int) -> list[int]:
        """Positions of the badges whose mask meets ``changed``, in rulebook order."""
        found: set[int] = set()
        by_bit = self.badges_by_bit
        while changed:
            low = changed & -changed
            positions = by_bit.get(low)
            if positions:
                found.update(positions)
            changed ^= low
        return sorted(found)


def _prefixed(bits: dict[str, int], prefix: str) -> tuple[tuple[str, int], ...]:
    size = len(prefix)
    return tuple((part[size:], bit) for part, bit in bits.items() if part.startswith(prefix))
