"""The simulation report: each rulebook's outcome, the diff, and the exports.

Everything here is computed from merged tallies and sorted per-buddy outcomes, so the report
is the same whatever the number of workers or the order shards finished in.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any, ClassVar

from buddyrules.rulebook import Rulebook
from buddyrules.simulate._errors import MissingDependency
from buddyrules.simulate._inputs import BadLine
from buddyrules.simulate._tally import BuddyOutcome, Tally

__all__ = ["RulebookOutcome", "SimulationReport", "quantile"]

REPORT_FORMAT = "buddyrules.simulation/1"
QUANTILES = (("p10", 0.10), ("p50", 0.50), ("p90", 0.90), ("p99", 0.99))
_EPOCH_DAY = date(1970, 1, 1)
_BAD_LINES_IN_DICT = 1000
_HISTOGRAM_BINS = 20


def quantile(sorted_values: Sequence[float], q: float) -> float | None:
    """The ``q`` quantile by linear interpolation between closest ranks (numpy's default)."""
    n = len(sorted_values)
    if n == 0:
        return None
    pos = q * (n - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, n - 1)
    frac = pos - lo
    value = sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * frac
    return float(value)


def _median(values: list[float]) -> float | None:
    return quantile(sorted(values), 0.5)


def _day(day: int) -> str:
    return (_EPOCH_DAY + timedelta(days=day)).isoformat()


def _num(value: float) -> float:
    """A float rounded for display and exact comparison (12 significant digits)."""
    return float(f"{value:.12g}")


@dataclass(frozen=True)
class RulebookOutcome:
    """One rulebook's side of the report: its JSON-ready summary and per-buddy outcomes."""

    name: str
    version: str
    summary: dict[str, Any]
    buddies: tuple[BuddyOutcome, ...]

    @classmethod
    def build(cls, rulebook: Rulebook, tally: Tally) -> RulebookOutcome:
        """Finalise a merged tally into the report's summary for ``rulebook``."""
        buddies = tuple(sorted(tally.buddies, key=lambda b: (b.user_id, b.audience)))
        n = len(buddies)
        coins = sorted(b.coins_earned for b in buddies)
        total = sum(coins)
        held: dict[str, int] = {}
        pending: dict[str, int] = {}
        stages: dict[int, int] = {}
        reached: dict[int, int] = {}
        for b in buddies:
            for badge in b.badges:
                held[badge] = held.get(badge, 0) + 1
            for badge in b.badges_ready:
                pending[badge] = pending.get(badge, 0) + 1
            stages[b.stage] = stages.get(b.stage, 0) + 1
            reached[b.ready_stage] = reached.get(b.ready_stage, 0) + 1

        rules: list[dict[str, Any]] = []

        def rule_row(kind: str, key: str, event: str, unit: str) -> None:
            fired, granted, clipped = tally.rules.get(f"{kind}:{key}", (0, 0, 0))
            rules.append(
                {
                    "kind": kind,
                    "key": key,
                    "event": event,
                    "unit": unit,
                    "fired": fired,
                    "granted": granted,
                    "clipped": clipped,
                    "problems": tally.problems.get(key, 0),
                }
            )

        for cr in rulebook.coin_rules:
            rule_row("coin_rule", cr.key, cr.event, "coins")
        for sr in rulebook.skill_rules:
            rule_row("skill_rule", sr.key, sr.event, f"skill:{sr.skill}")
        for tr in rulebook.token_rules:
            rule_row("token_rule", tr.key, tr.event, f"token:{tr.token}")

        badges = []
        for defined in rulebook.badges:
            median = _median(tally.award_seconds.get(defined.key, []))
            count = held.get(defined.key, 0) + pending.get(defined.key, 0)
            badges.append(
                {
                    "key": defined.key,
                    "mode": defined.mode,
                    "awarded": tally.badges_awarded.get(defined.key, 0),
                    "ready": tally.badges_ready.get(defined.key, 0),
                    "held": held.get(defined.key, 0),
                    "pending": pending.get(defined.key, 0),
                    "rate": _num(count / n) if n else 0.0,
                    "median_days_to_award": _num(median / 86400) if median is not None else None,
                }
            )

        evolution = [
            {
                "stage": stage.number,
                "name": stage.name,
                "buddies": stages.get(stage.number, 0),
                "reached": reached.get(stage.number, 0),
            }
            for stage in rulebook.stages
        ]
        milestones = [
            {
                "streak": streak.key,
                "count": count,
                "reached": tally.milestones.get((streak.key, count), 0),
            }
            for streak in rulebook.streaks
            for count, _ in streak.milestones
        ]
        stats: dict[str, Any] = {
            "buddies": n,
            "total": total,
            "mean": _num(total / n) if n else None,
            "min": coins[0] if coins else None,
        }
        for name, q in QUANTILES:
            value = quantile(coins, q)
            stats[name] = _num(value) if value is not None else None
        stats["max"] = coins[-1] if coins else None

        token_keys = sorted(
            set(rulebook.tokens)
            | {t for src in tally.tokens_by_source.values() for t in src}
            | set(tally.tokens_spent)
        )
        tokens = {}
        for key in token_keys:
            earned = sum(src.get(key, 0) for src in tally.tokens_by_source.values())
            tokens[key] = {
                "earned": earned,
                "spent": tally.tokens_spent.get(key, 0),
                "mean_per_buddy": _num(earned / n) if n else None,
            }
        days = sorted(set(tally.daily_coins) | set(tally.daily_tokens))
        daily = [
            {
                "date": _day(d),
                "coins": tally.daily_coins.get(d, 0),
                "tokens": dict(sorted(tally.daily_tokens.get(d, {}).items())),
            }
            for d in days
        ]
        summary: dict[str, Any] = {
            "name": rulebook.name,
            "version": rulebook.version,
            "events": {
                "applied": tally.applied,
                "by_type": dict(sorted(tally.by_type.items())),
                "rejected": dict(sorted(tally.rejected.items())),
            },
            "buddies": {
                "count": n,
                "hatched": sum(1 for b in buddies if not b.from_initial_state),
                "from_initial_states": sum(1 for b in buddies if b.from_initial_state),
            },
            "rules": rules,
            "coins_by_source": dict(sorted(tally.coins_by_source.items())),
            "tokens_by_source": {
                k: dict(sorted(v.items())) for k, v in sorted(tally.tokens_by_source.items())
            },
            "badges": badges,
            "evolution": evolution,
            "streak_milestones": milestones,
            "coins_per_buddy": stats,
            "tokens": tokens,
            "daily_inflow": daily,
            "problems": sum(tally.problems.values()),
        }
        return cls(rulebook.name, rulebook.version, summary, buddies)


def _delta(b: Any, c: Any) -> Any:
    if isinstance(b, bool) or isinstance(c, bool):
        return None
    if b is None or c is None:
        return None if b == c else {"baseline": b, "candidate": c}
    if isinstance(b, int) and isinstance(c, int):
        return c - b
    if isinstance(b, int | float) and isinstance(c, int | float):
        return _num(c - b)
    return None


def _diff_fields(b: dict[str, Any], c: dict[str, Any], fields: Iterable[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in fields:
        bv, cv = b.get(f), c.get(f)
        if bv == cv:
            continue
        d = _delta(bv, cv)
        out[f] = d if d is not None else {"baseline": bv, "candidate": cv}
    return out


def _diff_counts(b: dict[str, int], c: dict[str, int]) -> dict[str, int]:
    return {
        k: c.get(k, 0) - b.get(k, 0) for k in sorted(set(b) | set(c)) if c.get(k, 0) != b.get(k, 0)
    }


def _diff_rows(
    b: list[dict[str, Any]], c: list[dict[str, Any]], key: Sequence[str], fields: Sequence[str]
) -> dict[str, Any]:
    def k(row: dict[str, Any]) -> str:
        return ":".join(str(row[x]) for x in key)

    bmap = {k(r): r for r in b}
    cmap = {k(r): r for r in c}
    out: dict[str, Any] = {}
    for name in [*bmap, *(x for x in cmap if x not in bmap)]:
        br, cr = bmap.get(name), cmap.get(name)
        if br is None:
            out[name] = {"status": "added", **{f: cr[f] for f in fields}} if cr else {}
        elif cr is None:
            out[name] = {"status": "removed", **{f: br[f] for f in fields}}
        else:
            changed = _diff_fields(br, cr, fields)
            if changed:
                out[name] = changed
    return out


def _buddy_change(b: BuddyOutcome | None, c: BuddyOutcome | None) -> dict[str, Any] | None:
    ref = b if b is not None else c
    assert ref is not None
    bc = b.coins_earned if b else 0
    cc = c.coins_earned if c else 0
    bb = set(b.badges) if b else set()
    cb = set(c.badges) if c else set()
    br = set(b.badges_ready) if b else set()
    cr = set(c.badges_ready) if c else set()
    bs = b.stage if b else None
    cs = c.stage if c else None
    brs = b.ready_stage if b else None
    crs = c.ready_stage if c else None
    if (
        bc == cc
        and bb == cb
        and br == cr
        and bs == cs
        and brs == crs
        and (b is None) == (c is None)
    ):
        return None
    return {
        "user_id": ref.user_id,
        "audience": ref.audience,
        "coins_baseline": bc,
        "coins_candidate": cc,
        "coins_diff": cc - bc,
        "badges_gained": sorted(cb - bb),
        "badges_lost": sorted(bb - cb),
        "ready_gained": sorted(cr - br),
        "ready_lost": sorted(br - cr),
        "stage_baseline": bs,
        "stage_candidate": cs,
        "reached_stage_baseline": brs,
        "reached_stage_candidate": crs,
        "only_in": "candidate" if b is None else "baseline" if c is None else None,
    }


def _step(raw: float) -> int:
    """The smallest 1, 2 or 5 x 10^k (an integer >= 1) at or above ``raw``."""
    if raw <= 1:
        return 1
    exp = math.floor(math.log10(raw))
    for m in (1, 2, 5, 10):
        if m * 10**exp >= raw:
            return int(m * 10**exp)
    return int(10 ** (exp + 1))  # pragma: no cover - the loop always returns


def _histogram(series: Sequence[Sequence[int]], bins: int = _HISTOGRAM_BINS) -> dict[str, Any]:
    """Counts per bin with round bin widths shared by every series (so they compare)."""
    values = [v for s in series for v in s]
    if not values:
        return {"edges": [], "counts": [[] for _ in series]}
    lo, hi = min(values), max(values)
    width = _step((hi - lo + 1) / bins)
    start = (lo // width) * width
    nbins = max(1, math.ceil((hi + 1 - start) / width))
    edges = [start + i * width for i in range(nbins + 1)]
    counts = []
    for s in series:
        row = [0] * nbins
        for v in s:
            row[(v - start) // width] += 1
        counts.append(row)
    return {"edges": edges, "counts": counts}


class SimulationReport:
    """What replaying an event log under a baseline (and a candidate) rulebook produced.

    ``baseline`` and ``candidate`` are :class:`RulebookOutcome` (``summary`` is JSON-ready);
    ``diff`` lists only what changed (empty sections when nothing did); ``top_changes`` are
    the buddies whose outcome changed most (by absolute coin difference). ``bad_lines`` are
    the skipped lines. ``run`` holds timings and settings that do not belong to the result
    (the result is the same whatever the number of workers).
    """

    def __init__(
        self,
        *,
        baseline: RulebookOutcome,
        candidate: RulebookOutcome | None,
        lines: int,
        bad_lines: Sequence[BadLine],
        duplicates: int,
        top_n: int,
        run: dict[str, Any] | None = None,
    ) -> None:
        self.baseline = baseline
        self.candidate = candidate
        self.lines = lines
        self.bad_lines = tuple(bad_lines)
        self.duplicates = duplicates
        self.top_n = top_n
        self.run: dict[str, Any] = dict(run or {})
        self.diff: dict[str, Any] | None = None
        self.top_changes: list[dict[str, Any]] = []
        self.buddies_changed = 0
        users = {b.user_id for b in baseline.buddies}
        if candidate is not None:
            users.update(b.user_id for b in candidate.buddies)
            self._compare(candidate)
        self.users = len(users)
        self.histogram = _histogram(
            [[b.coins_earned for b in side.buddies] for side in self._sides()]
        )

    def _sides(self) -> list[RulebookOutcome]:
        return [self.baseline] if self.candidate is None else [self.baseline, self.candidate]

    def _compare(self, candidate: RulebookOutcome) -> None:
        base = self.baseline.summary
        cand = candidate.summary
        bmap = {(b.user_id, b.audience): b for b in self.baseline.buddies}
        cmap = {(c.user_id, c.audience): c for c in candidate.buddies}
        changes = []
        for key in sorted(set(bmap) | set(cmap)):
            change = _buddy_change(bmap.get(key), cmap.get(key))
            if change is not None:
                changes.append(change)
        self.buddies_changed = len(changes)
        changes.sort(key=lambda ch: (-abs(ch["coins_diff"]), ch["user_id"], ch["audience"]))
        self.top_changes = changes[: self.top_n]

        daily_b = {d["date"]: d for d in base["daily_inflow"]}
        daily_c = {d["date"]: d for d in cand["daily_inflow"]}
        daily: dict[str, Any] = {}
        for day in sorted(set(daily_b) | set(daily_c)):
            db = daily_b.get(day, {"coins": 0, "tokens": {}})
            dc = daily_c.get(day, {"coins": 0, "tokens": {}})
            entry: dict[str, Any] = {}
            if dc["coins"] != db["coins"]:
                entry["coins"] = dc["coins"] - db["coins"]
            tokens = _diff_counts(db["tokens"], dc["tokens"])
            if tokens:
                entry["tokens"] = tokens
            if entry:
                daily[day] = entry
        tokens_diff = {}
        for key in sorted(set(base["tokens"]) | set(cand["tokens"])):
            zero = {"earned": 0, "spent": 0, "mean_per_buddy": 0.0}
            d = _diff_fields(
                base["tokens"].get(key, zero),
                cand["tokens"].get(key, zero),
                ("earned", "spent", "mean_per_buddy"),
            )
            if d:
                tokens_diff[key] = d
        events_diff: dict[str, Any] = {}
        if cand["events"]["applied"] != base["events"]["applied"]:
            events_diff["applied"] = cand["events"]["applied"] - base["events"]["applied"]
        rejected = _diff_counts(base["events"]["rejected"], cand["events"]["rejected"])
        if rejected:
            events_diff["rejected"] = rejected
        buddies_diff: dict[str, Any] = {}
        if cand["buddies"]["count"] != base["buddies"]["count"]:
            buddies_diff["count"] = cand["buddies"]["count"] - base["buddies"]["count"]
        if self.buddies_changed:
            buddies_diff["changed"] = self.buddies_changed
        self.diff = {
            "events": events_diff,
            "buddies": buddies_diff,
            "rules": _diff_rows(
                base["rules"],
                cand["rules"],
                ("kind", "key"),
                ("event", "unit", "fired", "granted", "clipped", "problems"),
            ),
            "coins_by_source": _diff_counts(base["coins_by_source"], cand["coins_by_source"]),
            "badges": _diff_rows(
                base["badges"],
                cand["badges"],
                ("key",),
                ("mode", "awarded", "ready", "held", "pending", "rate", "median_days_to_award"),
            ),
            "evolution": _diff_rows(
                base["evolution"], cand["evolution"], ("stage",), ("name", "buddies", "reached")
            ),
            "streak_milestones": _diff_rows(
                base["streak_milestones"],
                cand["streak_milestones"],
                ("streak", "count"),
                ("reached",),
            ),
            "coins_per_buddy": _diff_fields(
                base["coins_per_buddy"],
                cand["coins_per_buddy"],
                ("buddies", "total", "mean", "min", *(q for q, _ in QUANTILES), "max"),
            ),
            "tokens": tokens_diff,
            "daily_inflow": daily,
        }

    # -- queries ---------------------------------------------------------------------------

    @property
    def has_changes(self) -> bool:
        """True when a candidate was simulated and anything at all differs."""
        return self.diff is not None and any(bool(v) for v in self.diff.values())

    @property
    def events_replayed(self) -> int:
        """Valid events replayed (under at least one rulebook)."""
        return max(int(s.summary["events"]["applied"]) for s in self._sides())

    # -- exports ---------------------------------------------------------------------------

    def to_dict(self, *, include_buddies: bool = False) -> dict[str, Any]:
        """The whole result as JSON-compatible data (no timings: see ``run``).

        ``include_buddies`` adds every buddy's outcome under each rulebook (large).
        """
        bad = [b.to_dict() for b in self.bad_lines[:_BAD_LINES_IN_DICT]]
        out: dict[str, Any] = {
            "format": REPORT_FORMAT,
            "input": {
                "lines": self.lines,
                "events": self.lines - len(self.bad_lines) - self.duplicates,
                "duplicates": self.duplicates,
                "users": self.users,
                "bad_lines": {
                    "count": len(self.bad_lines),
                    "lines": bad,
                    "truncated": len(self.bad_lines) > len(bad),
                },
            },
            "baseline": self.baseline.summary,
            "candidate": self.candidate.summary if self.candidate is not None else None,
            "diff": self.diff,
            "top_changes": self.top_changes,
            "coins_histogram": {
                "edges": self.histogram["edges"],
                "baseline": self.histogram["counts"][0],
                "candidate": self.histogram["counts"][1] if self.candidate is not None else None,
            },
        }
        if include_buddies:
            out["buddies"] = {
                "baseline": [b._asdict() for b in self.baseline.buddies],
                "candidate": [b._asdict() for b in self.candidate.buddies]
                if self.candidate is not None
                else None,
            }
        return out

    def to_json(self, path: str | os.PathLike[str] | None = None, *, indent: int | None = 2) -> str:
        """The report as JSON text; also written to ``path`` when given."""
        text = json.dumps(self.to_dict(), indent=indent, ensure_ascii=False, sort_keys=False)
        if path is not None:
            Path(path).write_text(text + "\n", encoding="utf-8")
        return text

    def tables(self) -> dict[str, list[dict[str, Any]]]:
        """The report as flat tables (lists of rows), the shape of :meth:`to_pandas`."""
        sides = [("baseline", self.baseline)]
        if self.candidate is not None:
            sides.append(("candidate", self.candidate))
        t: dict[str, list[dict[str, Any]]] = {
            name: []
            for name in (
                "summary",
                "rules",
                "badges",
                "evolution",
                "streak_milestones",
                "coins_quantiles",
                "tokens",
                "daily_inflow",
                "buddies",
            )
        }
        for label, side in sides:
            s = side.summary
            stats = s["coins_per_buddy"]
            t["summary"].append(
                {
                    "rulebook": label,
                    "name": side.name,
                    "version": side.version,
                    "events_applied": s["events"]["applied"],
                    "events_rejected": sum(s["events"]["rejected"].values()),
                    "buddies": s["buddies"]["count"],
                    "coins_total": stats["total"],
                    "coins_mean": stats["mean"],
                    "problems": s["problems"],
                }
            )
            for key in ("rules", "badges", "evolution", "streak_milestones"):
                t[key].extend({"rulebook": label, **row} for row in s[key])
            t["coins_quantiles"].append({"rulebook": label, **stats})
            for token, row in s["tokens"].items():
                t["tokens"].append({"rulebook": label, "token": token, **row})
            for day in s["daily_inflow"]:
                t["daily_inflow"].append(
                    {
                        "rulebook": label,
                        "date": day["date"],
                        "currency": "coins",
                        "amount": day["coins"],
                    }
                )
                for token, amount in day["tokens"].items():
                    t["daily_inflow"].append(
                        {
                            "rulebook": label,
                            "date": day["date"],
                            "currency": f"token:{token}",
                            "amount": amount,
                        }
                    )
            for b in side.buddies:
                t["buddies"].append(
                    {
                        "rulebook": label,
                        "user_id": b.user_id,
                        "audience": b.audience,
                        "events": b.events,
                        "coins_earned": b.coins_earned,
                        "coins": b.coins,
                        "badges": ",".join(b.badges),
                        "badges_ready": ",".join(b.badges_ready),
                        "stage": b.stage,
                        "reached_stage": b.ready_stage,
                        "from_initial_state": b.from_initial_state,
                    }
                )
        t["top_changes"] = [
            {
                **ch,
                "badges_gained": ",".join(ch["badges_gained"]),
                "badges_lost": ",".join(ch["badges_lost"]),
                "ready_gained": ",".join(ch["ready_gained"]),
                "ready_lost": ",".join(ch["ready_lost"]),
            }
            for ch in self.top_changes
        ]
        t["bad_lines"] = [b.to_dict() for b in self.bad_lines]
        return t

    _COLUMNS: ClassVar[dict[str, tuple[str, ...]]] = {
        "top_changes": (
            "user_id", "audience", "coins_baseline", "coins_candidate", "coins_diff",
            "badges_gained", "badges_lost", "ready_gained", "ready_lost", "stage_baseline",
            "stage_candidate", "reached_stage_baseline", "reached_stage_candidate", "only_in",
        ),
        "bad_lines": ("line", "code", "reason"),
    }  # fmt: skip

    def to_pandas(self) -> dict[str, Any]:
        """The tables of :meth:`tables` as pandas DataFrames (needs ``pandas``)."""
        try:
            import pandas as pd
        except ImportError:
            raise MissingDependency("pandas", "SimulationReport.to_pandas()", "report") from None
        out = {}
        for name, rows in self.tables().items():
            columns = self._COLUMNS.get(name)
            out[name] = pd.DataFrame(rows, columns=list(columns) if columns and not rows else None)
        return out

    def to_polars(self) -> dict[str, Any]:
        """The tables of :meth:`tables` as polars DataFrames (needs ``polars``)."""
        try:
            import polars as pl
        except ImportError:
            raise MissingDependency("polars", "SimulationReport.to_polars()") from None
        out = {}
        for name, rows in self.tables().items():
            columns = self._COLUMNS.get(name)
            if not rows and columns:
                out[name] = pl.DataFrame({c: [] for c in columns})
            else:
                out[name] = pl.DataFrame(rows, infer_schema_length=None)
        return out

    def to_html(
        self, path: str | os.PathLike[str] | None = None, *, title: str | None = None
    ) -> str:
        """One self-contained HTML page (inline CSS and SVG; no script, no network).

        Returns the HTML text and writes it to ``path`` when given.
        """
        from buddyrules.simulate._html import render_html

        text = render_html(self, title=title)
        if path is not None:
            Path(path).write_text(text, encoding="utf-8")
        return text

    def summary_table(self, *, rules: bool = True) -> str:
        """A readable plain-text summary for a terminal: top changes first."""
        from buddyrules.simulate._text import render_text

        return render_text(self, rules=rules)

    def __repr__(self) -> str:
        cand = f", candidate={self.candidate.name!r}" if self.candidate is not None else ""
        return (
            f"SimulationReport(baseline={self.baseline.name!r}{cand}, "
            f"events={self.events_replayed}, buddies_changed={self.buddies_changed})"
        )
