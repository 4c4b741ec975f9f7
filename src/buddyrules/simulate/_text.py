"""The plain-text summary of a report (what the CLI prints)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from buddyrules.simulate._report import SimulationReport

__all__ = ["fmt", "render_text"]


def fmt(value: Any) -> str:
    """A number with thousands separators (floats to 2 decimals); ``-`` for None."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 1e6 else f"{value:,.2f}"
    return str(value)


def _signed(value: Any) -> str:
    if value is None or value == 0:
        return ""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return ("+" if value > 0 else "") + fmt(value)
    return str(value)


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], indent: str = "  ") -> list[str]:
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))

    def line(cells: Sequence[str]) -> str:
        parts = [cells[0].ljust(widths[0])]
        parts.extend(c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True))
        return (indent + "  ".join(parts)).rstrip()

    return [line(headers), *(line(r) for r in rows)]


def render_text(report: SimulationReport, *, rules: bool = True) -> str:
    """Render ``report`` for a terminal: top changes first, then totals, rules, badges."""
    base = report.baseline.summary
    cand = report.candidate.summary if report.candidate is not None else None
    out: list[str] = []
    notes = []
    if report.bad_lines:
        notes.append(f"{len(report.bad_lines):,} bad lines skipped")
    if report.duplicates:
        notes.append(f"{report.duplicates:,} duplicate events ignored")
    head = f"Simulation: {report.events_replayed:,} events replayed for {report.users:,} users"
    out.append(head + (f" ({'; '.join(notes)})" if notes else ""))
    out.append(f"  baseline:  {report.baseline.name} (version {report.baseline.version})")
    if report.candidate is not None:
        out.append(f"  candidate: {report.candidate.name} (version {report.candidate.version})")
    out.append("")

    if cand is not None:
        if report.top_changes:
            out.append(
                f"Top changes (by |coins diff|; {report.buddies_changed:,} buddies changed):"
            )
            rows = []
            for ch in report.top_changes:
                badges = " ".join(
                    [*(f"+{b}" for b in ch["badges_gained"]), *(f"-{b}" for b in ch["badges_lost"])]
                )
                stage = (
                    f"{fmt(ch['stage_baseline'])}->{fmt(ch['stage_candidate'])}"
                    if ch["stage_baseline"] != ch["stage_candidate"]
                    else fmt(ch["stage_baseline"])
                )
                rows.append(
                    [
                        ch["user_id"],
                        ch["audience"],
                        fmt(ch["coins_baseline"]),
                        fmt(ch["coins_candidate"]),
                        _signed(ch["coins_diff"]) or "0",
                        badges or "-",
                        stage,
                    ]
                )
            out.extend(
                _table(
                    ["user", "audience", "baseline", "candidate", "diff", "badges", "stage"], rows
                )
            )
        else:
            out.append("No buddy's outcome changed.")
        out.append("")

    sides = [base] if cand is None else [base, cand]
    headers = ["", "baseline"] + (["candidate", "diff"] if cand is not None else [])

    def row(label: str, values: Sequence[Any]) -> list[str]:
        cells = [label, *(fmt(v) for v in values)]
        if cand is not None:
            b, c = values
            d = c - b if isinstance(b, int | float) and isinstance(c, int | float) else None
            cells.append(_signed(d))
        return cells

    overview = [
        row("buddies", [s["buddies"]["count"] for s in sides]),
        row("events applied", [s["events"]["applied"] for s in sides]),
        row("events rejected", [sum(s["events"]["rejected"].values()) for s in sides]),
        row("coins total", [s["coins_per_buddy"]["total"] for s in sides]),
        row("coins/buddy mean", [s["coins_per_buddy"]["mean"] for s in sides]),
    ]
    for q in ("p10", "p50", "p90", "p99"):
        overview.append(row(f"coins/buddy {q}", [s["coins_per_buddy"][q] for s in sides]))
    tokens = sorted({t for s in sides for t in s["tokens"]})
    for t in tokens:
        overview.append(
            row(f"{t} earned", [s["tokens"].get(t, {}).get("earned", 0) for s in sides])
        )
    out.append("Overview:")
    out.extend(_table(headers, overview))
    out.append("")

    if rules:
        keys: list[tuple[str, str]] = []
        for s in sides:
            for r in s["rules"]:
                if (r["kind"], r["key"]) not in keys:
                    keys.append((r["kind"], r["key"]))
        maps = [{(r["kind"], r["key"]): r for r in s["rules"]} for s in sides]
        rows = []
        for k in keys:
            cells = [f"{k[0].removesuffix('_rule')} {k[1]}"]
            for field in ("fired", "granted", "clipped"):
                vals = [m.get(k, {}).get(field) for m in maps]
                cells.append(
                    " -> ".join(fmt(v) for v in vals) if cand is not None else fmt(vals[0])
                )
            unit = next(m[k]["unit"] for m in maps if k in m)
            cells.append(unit)
            rows.append(cells)
        if rows:
            label = " (baseline -> candidate)" if cand is not None else ""
            out.append(f"Rules{label}:")
            out.extend(_table(["rule", "fired", "granted", "clipped", "unit"], rows))
            out.append("")

    badge_keys: list[str] = []
    for s in sides:
        for b in s["badges"]:
            if b["key"] not in badge_keys:
                badge_keys.append(b["key"])
    if badge_keys:
        bmaps = [{b["key"]: b for b in s["badges"]} for s in sides]
        rows = []
        for key in badge_keys:
            cells = [key]
            for field in ("held", "pending", "median_days_to_award"):
                vals = [m.get(key, {}).get(field) for m in bmaps]
                cells.append(
                    " -> ".join(fmt(v) for v in vals) if cand is not None else fmt(vals[0])
                )
            rows.append(cells)
        out.append("Badges (buddies holding / ready at the end; median days from hatch):")
        out.extend(_table(["badge", "held", "ready", "median days"], rows))
        out.append("")

    stage_rows = []
    stage_nums = sorted({e["stage"] for s in sides for e in s["evolution"]})
    emaps = [{e["stage"]: e for e in s["evolution"]} for s in sides]
    for num in stage_nums:
        name = next(m[num]["name"] for m in emaps if num in m)
        cells = [f"{num} {name}"]
        for field in ("buddies", "reached"):
            vals = [m.get(num, {}).get(field) for m in emaps]
            cells.append(" -> ".join(fmt(v) for v in vals) if cand is not None else fmt(vals[0]))
        stage_rows.append(cells)
    if stage_rows:
        out.append("Evolution (buddies at the stage / whose condition for it was reached):")
        out.extend(_table(["stage", "at stage", "reached"], stage_rows))
        out.append("")

    ms_keys: list[tuple[str, int]] = []
    for s in sides:
        for m in s["streak_milestones"]:
            if (m["streak"], m["count"]) not in ms_keys:
                ms_keys.append((m["streak"], m["count"]))
    if ms_keys:
        mmaps = [{(m["streak"], m["count"]): m for m in s["streak_milestones"]} for s in sides]
        rows = []
        for mk in ms_keys:
            vals = [m.get(mk, {}).get("reached") for m in mmaps]
            rows.append(
                [f"{mk[0]} x{mk[1]}", " -> ".join(fmt(v) for v in vals) if cand else fmt(vals[0])]
            )
        out.append("Streak milestones reached:")
        out.extend(_table(["milestone", "times"], rows))
        out.append("")

    if report.bad_lines:
        shown = report.bad_lines[:10]
        out.append(f"Bad lines ({len(report.bad_lines):,}; first {len(shown)}):")
        out.extend(f"  line {b.line}: {b.code}: {b.reason}" for b in shown)
        out.append("")
    return "\n".join(out).rstrip() + "\n"
