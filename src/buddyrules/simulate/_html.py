"""The HTML report: one self-contained page with inline SVG charts drawn here.

No script, no stylesheet or font from the network, no image file: the page opens offline
and can be mailed or attached to a ticket as it is.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape
from typing import TYPE_CHECKING, Any

from buddyrules.simulate._text import fmt

if TYPE_CHECKING:
    from buddyrules.simulate._report import SimulationReport

__all__ = ["render_html"]

COLORS = ("#3b6ea5", "#e07b39")  # baseline, candidate
_W, _H = 760, 280
_M_LEFT, _M_RIGHT, _M_TOP, _M_BOTTOM = 64, 16, 50, 52

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2rem auto;
max-width:1100px;color:#222;padding:0 1rem}
h1{font-size:1.5rem}h2{font-size:1.2rem;margin-top:2.2rem;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.6rem 0;font-size:.9rem}
th,td{padding:.25rem .6rem;border-bottom:1px solid #eee;text-align:right}
th:first-child,td:first-child{text-align:left}th{background:#f6f6f6}
.pos{color:#1a7f37}.neg{color:#c0392b}.muted{color:#777}
.legend span{display:inline-block;width:.8rem;height:.8rem;margin:0 .3rem 0 1rem;
vertical-align:middle}
svg{max-width:100%;height:auto;font-size:11px}
figure{margin:1rem 0}figcaption{color:#555;font-size:.9rem}
"""


def _nice(value: float) -> float:
    """The smallest 1/2/5 x 10^k at or above ``value`` (axis maximum)."""
    if value <= 0:
        return 1.0
    exp = math.floor(math.log10(value))
    for m in (1, 2, 5, 10):
        if m * 10**exp >= value:
            return float(m * 10**exp)
    return float(10 ** (exp + 1))


def _short(value: float) -> str:
    if abs(value) >= 1e6:
        return f"{value / 1e6:g}M"
    if abs(value) >= 1e3:
        return f"{value / 1e3:g}k"
    return f"{value:g}"


def _frame(title: str, ymax: float, *, percent: bool = False) -> list[str]:
    """The SVG opening, title, y grid and labels for a plot area."""
    plot_h = _H - _M_TOP - _M_BOTTOM
    parts = [
        f'<svg viewBox="0 0 {_W} {_H}" width="{_W}" height="{_H}" role="img" '
        f'aria-label="{escape(title)}">',
        f'<text x="{_M_LEFT}" y="18" font-size="13" font-weight="600">{escape(title)}</text>',
    ]
    for i in range(5):
        value = ymax * i / 4
        y = _M_TOP + plot_h - plot_h * i / 4
        label = f"{value * 100:g}%" if percent else _short(value)
        parts.append(
            f'<line x1="{_M_LEFT}" x2="{_W - _M_RIGHT}" y1="{y:.1f}" y2="{y:.1f}" '
            f'stroke="#e5e5e5"/>'
            f'<text x="{_M_LEFT - 6}" y="{y + 4:.1f}" text-anchor="end" fill="#555">'
            f"{escape(label)}</text>"
        )
    return parts


def _legend(labels: Sequence[str], x: float = _M_LEFT, y: float = 26) -> str:
    """Colour keys under the title, left to right."""
    out = []
    for i, label in enumerate(labels):
        out.append(
            f'<rect x="{x:.0f}" y="{y:.0f}" width="12" height="12" fill="{COLORS[i]}"/>'
            f'<text x="{x + 16:.0f}" y="{y + 10:.0f}">{escape(label)}</text>'
        )
        x += 40 + 6.5 * len(label)
    return "".join(out)


def histogram_svg(
    edges: Sequence[int], series: Sequence[Sequence[int]], labels: Sequence[str]
) -> str:
    """Grouped bars: how many buddies earned coins within each bin, per rulebook."""
    title = "Coins earned per buddy (number of buddies per bin)"
    if not edges:
        return f"<p class=muted>{escape(title)}: no buddies.</p>"
    nbins = len(edges) - 1
    ymax = _nice(max((max(s) if s else 0) for s in series))
    parts = _frame(title, ymax)
    plot_w = _W - _M_LEFT - _M_RIGHT
    plot_h = _H - _M_TOP - _M_BOTTOM
    slot = plot_w / nbins
    bar = slot * 0.8 / len(series)
    for b in range(nbins):
        for k, s in enumerate(series):
            h = plot_h * s[b] / ymax
            x = _M_LEFT + b * slot + slot * 0.1 + k * bar
            y = _M_TOP + plot_h - h
            parts.append(
                f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar:.1f}" height="{h:.1f}" '
                f'fill="{COLORS[k]}"><title>{escape(labels[k])}: {s[b]:,} buddies with '
                f"{edges[b]:,}-{edges[b + 1] - 1:,} coins</title></rect>"
            )
    step = max(1, math.ceil(nbins / 10))
    for b in range(0, nbins + 1, step):
        x = _M_LEFT + b * slot
        parts.append(
            f'<text x="{x:.1f}" y="{_H - _M_BOTTOM + 16}" text-anchor="middle" fill="#555">'
            f"{escape(_short(edges[b]))}</text>"
        )
    parts.append(
        f'<text x="{_M_LEFT + plot_w / 2:.1f}" y="{_H - 12}" text-anchor="middle" fill="#555">'
        "coins earned in the replay</text>"
    )
    parts.append(_legend(labels))
    parts.append("</svg>")
    return "".join(parts)


def lines_svg(
    title: str, dates: Sequence[str], series: Sequence[Sequence[int]], labels: Sequence[str]
) -> str:
    """One line per rulebook over UTC days."""
    if not dates:
        return f"<p class=muted>{escape(title)}: no inflow.</p>"
    ymax = _nice(max((max(s) if s else 0) for s in series))
    parts = _frame(title, ymax)
    plot_w = _W - _M_LEFT - _M_RIGHT
    plot_h = _H - _M_TOP - _M_BOTTOM
    n = len(dates)

    def xy(i: int, v: int) -> tuple[float, float]:
        x = _M_LEFT + (plot_w * i / (n - 1) if n > 1 else plot_w / 2)
        return x, _M_TOP + plot_h - plot_h * v / ymax

    for k, s in enumerate(series):
        points = " ".join(f"{x:.1f},{y:.1f}" for x, y in (xy(i, v) for i, v in enumerate(s)))
        dash = ' stroke-dasharray="6 3"' if k == 1 else ""
        parts.append(
            f'<polyline points="{points}" fill="none" stroke="{COLORS[k]}" '
            f'stroke-width="1.8"{dash}/>'
        )
        if n <= 60:
            for i, v in enumerate(s):
                x, y = xy(i, v)
                parts.append(
                    f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2.2" fill="{COLORS[k]}">'
                    f"<title>{escape(labels[k])} {escape(dates[i])}: {v:,}</title></circle>"
                )
    step = max(1, math.ceil(n / 8))
    for i in range(0, n, step):
        x, _ = xy(i, 0)
        parts.append(
            f'<text x="{x:.1f}" y="{_H - _M_BOTTOM + 16}" text-anchor="middle" fill="#555">'
            f"{escape(dates[i])}</text>"
        )
    parts.append(
        f'<text x="{_M_LEFT + plot_w / 2:.1f}" y="{_H - 12}" text-anchor="middle" fill="#555">'
        "UTC date of the events</text>"
    )
    parts.append(_legend(labels))
    parts.append("</svg>")
    return "".join(parts)


def bars_svg(keys: Sequence[str], series: Sequence[Sequence[float]], labels: Sequence[str]) -> str:
    """Horizontal grouped bars of badge rates (share of buddies holding or ready)."""
    title = "Badge rates (share of buddies holding the badge, or ready for it)"
    if not keys:
        return f"<p class=muted>{escape(title)}: no badges.</p>"
    row_h = 12 * len(series) + 10
    height = _M_TOP + row_h * len(keys) + 40
    left = 170
    plot_w = _W - left - 60
    parts = [
        f'<svg viewBox="0 0 {_W} {height}" width="{_W}" height="{height}" role="img" '
        f'aria-label="{escape(title)}">',
        f'<text x="{left}" y="18" font-size="13" font-weight="600">{escape(title)}</text>',
    ]
    for i in range(5):
        x = left + plot_w * i / 4
        parts.append(
            f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{_M_TOP}" y2="{height - 30}" stroke="#e5e5e5"/>'
            f'<text x="{x:.1f}" y="{height - 14}" text-anchor="middle" fill="#555">'
            f"{25 * i}%</text>"
        )
    for r, key in enumerate(keys):
        y0 = _M_TOP + r * row_h
        parts.append(
            f'<text x="{left - 8}" y="{y0 + row_h / 2 + 3:.1f}" text-anchor="end">'
            f"{escape(key)}</text>"
        )
        for k, s in enumerate(series):
            w = plot_w * s[r]
            y = y0 + 4 + k * 12
            parts.append(
                f'<rect x="{left}" y="{y}" width="{w:.1f}" height="10" fill="{COLORS[k]}">'
                f"<title>{escape(labels[k])}: {s[r] * 100:.1f}%</title></rect>"
                f'<text x="{left + w + 4:.1f}" y="{y + 9}" fill="#555">{s[r] * 100:.1f}%</text>'
            )
    parts.append(_legend(labels, x=left))
    parts.append("</svg>")
    return "".join(parts)


def _cls(value: Any) -> str:
    if isinstance(value, int | float) and not isinstance(value, bool) and value:
        return ' class="pos"' if value > 0 else ' class="neg"'
    return ""


def _table(
    headers: Sequence[str], rows: Sequence[Sequence[Any]], diff_col: int | None = None
) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = []
    for row in rows:
        cells = []
        for i, v in enumerate(row):
            text = escape(fmt(v)) if not isinstance(v, str) else escape(v)
            if i == diff_col and isinstance(v, int | float) and not isinstance(v, bool):
                text = escape(("+" if v > 0 else "") + fmt(v)) if v else ""
            cells.append(f"<td{_cls(v) if i == diff_col else ''}>{text}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _pair(values: Sequence[Any]) -> list[Any]:
    """[baseline, candidate, diff] (or [baseline])."""
    if len(values) == 1:
        return list(values)
    b, c = values
    d = c - b if isinstance(b, int | float) and isinstance(c, int | float) else None
    return [b, c, d]


def render_html(report: SimulationReport, *, title: str | None = None) -> str:
    """Render the whole report as one HTML document."""
    sides = [report.baseline] + ([report.candidate] if report.candidate is not None else [])
    labels = [f"baseline: {report.baseline.name}"]
    if report.candidate is not None:
        labels.append(f"candidate: {report.candidate.name}")
    summaries = [s.summary for s in sides]
    has_cand = len(sides) == 2
    cols = ["", "baseline", "candidate", "diff"] if has_cand else ["", "baseline"]
    diff_col = 3 if has_cand else None
    title = title or (
        f"What-if: {report.baseline.name} vs {report.candidate.name}"
        if report.candidate is not None
        else f"Replay under {report.baseline.name}"
    )
    body: list[str] = [f"<h1>{escape(title)}</h1>"]
    notes = [
        f"{report.events_replayed:,} events replayed for {report.users:,} users",
        f"{len(report.bad_lines):,} bad lines skipped" if report.bad_lines else "",
        f"{report.duplicates:,} duplicate events ignored" if report.duplicates else "",
    ]
    body.append(f"<p>{escape('; '.join(n for n in notes if n))}.</p>")
    body.append(
        "<p class=muted>"
        + "<br>".join(
            escape(f"{label} (version {s.version})") for label, s in zip(labels, sides, strict=True)
        )
        + "</p>"
    )

    overview = [
        ["buddies", *_pair([s["buddies"]["count"] for s in summaries])],
        ["buddies changed", *([report.buddies_changed, "", ""] if has_cand else ["-"])],
        ["events applied", *_pair([s["events"]["applied"] for s in summaries])],
        ["events rejected", *_pair([sum(s["events"]["rejected"].values()) for s in summaries])],
        ["coins total", *_pair([s["coins_per_buddy"]["total"] for s in summaries])],
        ["coins per buddy: mean", *_pair([s["coins_per_buddy"]["mean"] for s in summaries])],
    ]
    for q in ("p10", "p50", "p90", "p99", "max"):
        overview.append(
            [f"coins per buddy: {q}", *_pair([s["coins_per_buddy"][q] for s in summaries])]
        )
    for token in sorted({t for s in summaries for t in s["tokens"]}):
        overview.append(
            [
                f"{token} earned",
                *_pair([s["tokens"].get(token, {}).get("earned", 0) for s in summaries]),
            ]
        )
    body.append("<h2>Overview</h2>")
    body.append(_table(cols, overview, diff_col))

    if has_cand:
        body.append("<h2>Buddies whose outcome changed the most</h2>")
        if report.top_changes:
            rows = []
            for ch in report.top_changes:
                badges = " ".join(
                    [*(f"+{b}" for b in ch["badges_gained"]), *(f"-{b}" for b in ch["badges_lost"])]
                )
                stage = (
                    f"{fmt(ch['stage_baseline'])} → {fmt(ch['stage_candidate'])}"
                    if ch["stage_baseline"] != ch["stage_candidate"]
                    else fmt(ch["stage_baseline"])
                )
                rows.append(
                    [
                        ch["user_id"],
                        ch["audience"],
                        ch["coins_baseline"],
                        ch["coins_candidate"],
                        badges or "-",
                        stage,
                        ch["coins_diff"],
                    ]
                )
            body.append(
                _table(
                    ["user", "audience", "coins (baseline)", "coins (candidate)", "badges",
                     "stage", "coins diff"],
                    rows,
                    6,
                )
            )  # fmt: skip
        else:
            body.append("<p>No buddy's outcome changed.</p>")

    body.append("<h2>Coins per buddy</h2>")
    counts = report.histogram["counts"]
    body.append(f"<figure>{histogram_svg(report.histogram['edges'], counts, labels)}</figure>")

    body.append("<h2>Daily inflow</h2>")
    all_days = sorted({d["date"] for s in summaries for d in s["daily_inflow"]})
    per_side = [{d["date"]: d for d in s["daily_inflow"]} for s in summaries]
    coins_series = [[m.get(day, {}).get("coins", 0) for day in all_days] for m in per_side]
    body.append(
        "<figure>" + lines_svg("Coins credited per UTC day", all_days, coins_series, labels)
        + "</figure>"
    )  # fmt: skip
    tokens = sorted({t for s in summaries for d in s["daily_inflow"] for t in d["tokens"]})
    for token in tokens:
        series = [
            [m.get(day, {}).get("tokens", {}).get(token, 0) for day in all_days] for m in per_side
        ]
        body.append(
            "<figure>"
            + lines_svg(f"Token {token!s} credited per UTC day", all_days, series, labels)
            + "</figure>"
        )

    body.append("<h2>Badges</h2>")
    badge_keys: list[str] = []
    for s in summaries:
        for b in s["badges"]:
            if b["key"] not in badge_keys:
                badge_keys.append(b["key"])
    bmaps = [{b["key"]: b for b in s["badges"]} for s in summaries]
    rates = [[m.get(k, {}).get("rate", 0.0) for k in badge_keys] for m in bmaps]
    body.append(f"<figure>{bars_svg(badge_keys, rates, labels)}</figure>")
    badge_rows = []
    for key in badge_keys:
        row: list[Any] = [key]
        for field in ("awarded", "ready", "held", "pending", "median_days_to_award"):
            vals = [m.get(key, {}).get(field) for m in bmaps]
            row.append(" → ".join(fmt(v) for v in vals))
        badge_rows.append(row)
    arrow = " (baseline → candidate)" if has_cand else ""
    body.append(
        f"<p class=muted>Awarded and made ready during the replay; held and pending at the end; "
        f"median days from hatching to the award{escape(arrow)}.</p>"
    )
    body.append(_table(["badge", "awarded", "ready", "held", "pending", "median days"], badge_rows))

    body.append("<h2>Rules</h2>")
    rule_keys: list[tuple[str, str]] = []
    for s in summaries:
        for r in s["rules"]:
            if (r["kind"], r["key"]) not in rule_keys:
                rule_keys.append((r["kind"], r["key"]))
    rmaps = [{(r["kind"], r["key"]): r for r in s["rules"]} for s in summaries]
    rule_rows = []
    for rk in rule_keys:
        ref = next(m[rk] for m in rmaps if rk in m)
        row = [rk[0].removesuffix("_rule"), rk[1], ref["event"], ref["unit"]]
        for field in ("fired", "granted", "clipped", "problems"):
            vals = [m.get(rk, {}).get(field) for m in rmaps]
            row.append(" → ".join(fmt(v) for v in vals))
        rule_rows.append(row)
    body.append(
        _table(
            ["kind", "rule", "event", "unit", "fired", "granted", "clipped", "problems"],
            rule_rows,
        )
    )

    body.append("<h2>Evolution and streaks</h2>")
    stage_nums = sorted({e["stage"] for s in summaries for e in s["evolution"]})
    emaps = [{e["stage"]: e for e in s["evolution"]} for s in summaries]
    stage_rows = []
    for num in stage_nums:
        name = next(m[num]["name"] for m in emaps if num in m)
        stage_rows.append(
            [f"{num} {name}"] + [m.get(num, {}).get("buddies", 0) for m in emaps]
            + [m.get(num, {}).get("reached", 0) for m in emaps]
        )  # fmt: skip
    stage_cols = ["stage"] + [f"at stage ({lbl.split(':')[0]})" for lbl in labels]
    stage_cols += [f"reached ({lbl.split(':')[0]})" for lbl in labels]
    body.append(_table(stage_cols, stage_rows))
    ms_keys: list[tuple[str, int]] = []
    for s in summaries:
        for m in s["streak_milestones"]:
            if (m["streak"], m["count"]) not in ms_keys:
                ms_keys.append((m["streak"], m["count"]))
    mmaps = [
        {(m["streak"], m["count"]): m["reached"] for m in s["streak_milestones"]} for s in summaries
    ]
    if ms_keys:
        body.append(
            _table(
                ["streak milestone", *(lbl.split(":")[0] for lbl in labels)]
                + (["diff"] if has_cand else []),
                [[f"{k[0]} × {k[1]}", *_pair([m.get(k, 0) for m in mmaps])] for k in ms_keys],
                diff_col=3 if has_cand else None,
            )
        )

    if report.bad_lines:
        body.append("<h2>Bad lines</h2>")
        shown = report.bad_lines[:100]
        body.append(
            f"<p>{len(report.bad_lines):,} lines were skipped"
            + (f"; the first {len(shown)} are listed" if len(shown) < len(report.bad_lines) else "")
            + ".</p>"
        )
        body.append(_table(["line", "code", "reason"], [[b.line, b.code, b.reason] for b in shown]))

    legend = "".join(
        f'<span style="background:{COLORS[i]}"></span>{escape(label)}'
        for i, label in enumerate(labels)
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title><style>{_CSS}</style></head><body>"
        f'<p class="legend">{legend}</p>'
        + "\n".join(body)
        + "\n<p class=muted>Generated by buddyrules simulate.</p></body></html>\n"
    )
