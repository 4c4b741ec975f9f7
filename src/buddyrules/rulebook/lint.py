"""Rulebook lint: findings that do not stop a rulebook loading but that an author should see.

Loading already rejects what is wrong (unknown keys, unknown references, prerequisite cycles,
stage counts). The lint looks for what is legal but probably a mistake: badges nothing can
award, caps smaller than one reward, levels no value reaches, sub-steps that never complete.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from buddyrules.rulebook.compiled import Reward, Rulebook

__all__ = ["LintFinding", "lint_rulebook"]


@dataclass(frozen=True, slots=True)
class LintFinding:
    """One lint finding: ``severity`` is ``"error"`` (publish refuses) or ``"warning"``."""

    severity: Literal["error", "warning"]
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.severity}: {self.path}: {self.message}"


def _rewards(rulebook: Rulebook) -> list[Reward]:
    out: list[Reward] = []
    for s in rulebook.streaks:
        out.append(s.tick_reward)
        out.extend(r for _, r in s.milestones)
    out.extend(b.reward for b in rulebook.badges)
    for p in rulebook.paths:
        out.extend(step.reward for step in p.steps)
    return out


def lint_rulebook(rulebook: Rulebook) -> list[LintFinding]:
    """Return the lint findings for a compiled rulebook (an empty list when all is well)."""
    findings: list[LintFinding] = []
    add = findings.append

    awarded_by_reward = {r.badge for r in _rewards(rulebook) if r.badge is not None}
    for b in rulebook.badges:
        if b.when is None and b.mode == "auto" and b.key not in awarded_by_reward:
            add(
                LintFinding(
                    "warning",
                    f"{b.path}",
                    f"badge {b.key!r} has no `when` and no reward awards it: only an admin "
                    "can award it",
                )
            )
        for req in b.requires:
            other = rulebook.badges_by_key.get(req)
            if other is not None and other.audience and b.audience and other.audience != b.audience:
                add(
                    LintFinding(
                        "error",
                        f"{b.path}.requires",
                        f"badge {b.key!r} ({b.audience}) requires {req!r} of another audience "
                        f"({other.audience}): it can never be awarded",
                    )
                )

    for r in rulebook.coin_rules:
        lit = r.amount.literal
        for cap_name, cap in (("daily_cap", r.daily_cap), ("weekly_cap", r.weekly_cap)):
            if cap is not None and lit is not None and cap < lit:
                add(
                    LintFinding(
                        "warning",
                        f"{r.path}.{cap_name}",
                        f"{cap_name} {cap} is below one reward of {lit}: every grant is clipped",
                    )
                )
        if r.daily_cap and r.weekly_cap and r.weekly_cap < r.daily_cap:
            add(
                LintFinding(
                    "warning",
                    f"{r.path}.weekly_cap",
                    f"weekly_cap {r.weekly_cap} is below daily_cap {r.daily_cap}",
                )
            )
    for t in rulebook.token_rules:
        lit = t.amount.literal
        for cap_name, cap in (("daily_cap", t.daily_cap), ("weekly_cap", t.weekly_cap)):
            if cap is not None and lit is not None and cap < lit:
                add(
                    LintFinding(
                        "warning",
                        f"{t.path}.{cap_name}",
                        f"{cap_name} {cap} is below one reward of {lit}: every grant is clipped",
                    )
                )

    for i, s in enumerate(rulebook.skills.values()):
        top = s.max_level * s.points_per_level
        if top > s.max_value:
            add(
                LintFinding(
                    "warning",
                    f"skills[{i}]",
                    f"skill {s.key!r}: max_value {s.max_value} only reaches level "
                    f"{s.level_of(s.max_value)} of max_level {s.max_level}",
                )
            )

    for p in rulebook.paths:
        for step in p.steps:
            for k, sub in enumerate(step.sub_steps):
                if sub.completion is None and not sub.allow_manual_complete:
                    add(
                        LintFinding(
                            "warning",
                            f"{step.path}.sub_steps[{k}]",
                            f"sub-step {sub.key!r} has no completion_condition and does not "
                            "allow manual completion: it never completes",
                        )
                    )

    for d in rulebook.decay:
        skill = rulebook.skills.get(d.skill)
        if skill is not None and d.floor >= skill.max_value:
            add(
                LintFinding(
                    "warning",
                    f"decay.{d.key}",
                    f"floor {d.floor} is at or above max_value {skill.max_value}: never decays",
                )
            )
    return findings
