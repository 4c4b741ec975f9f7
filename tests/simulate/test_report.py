"""The report's exports: dict/JSON, HTML, tables, pandas and polars, text."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import pytest

from buddyrules.simulate import MissingDependency, SimulationReport, simulate
from buddyrules.simulate._report import quantile

from .helpers import language, make_events, tight_candidate


@pytest.fixture(scope="module")
def report() -> SimulationReport:
    return simulate(
        make_events(users=15, per_user=20, seed=11),
        baseline=language(),
        candidate=tight_candidate(),
        workers=1,
        top_n=5,
    )


def test_to_dict_is_json_and_to_json_round_trips(report: SimulationReport, tmp_path: Path) -> None:
    data = report.to_dict()
    assert data["format"] == "buddyrules.simulation/1"
    assert json.loads(json.dumps(data)) == data
    path = tmp_path / "out.json"
    text = report.to_json(path)
    assert json.loads(path.read_text(encoding="utf-8")) == json.loads(text) == data
    side = data["candidate"]
    for key in (
        "rules",
        "badges",
        "evolution",
        "streak_milestones",
        "coins_per_buddy",
        "tokens",
        "daily_inflow",
        "coins_by_source",
        "tokens_by_source",
    ):
        assert key in side, key  # fmt: skip
    stats = side["coins_per_buddy"]
    assert stats["min"] <= stats["p10"] <= stats["p50"] <= stats["p90"] <= stats["p99"]
    assert stats["p99"] <= stats["max"]
    assert len(data["top_changes"]) == 5
    diffs = [abs(c["coins_diff"]) for c in data["top_changes"]]
    assert diffs == sorted(diffs, reverse=True)
    hist = data["coins_histogram"]
    assert sum(hist["baseline"]) == sum(hist["candidate"]) == data["baseline"]["buddies"]["count"]
    assert sum(d["coins"] for d in side["daily_inflow"]) == stats["total"]
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\d", d["date"]) for d in side["daily_inflow"])


def test_html_is_one_self_contained_file(report: SimulationReport, tmp_path: Path) -> None:
    path = tmp_path / "report.html"
    text = report.to_html(path)
    assert path.read_text(encoding="utf-8") == text
    assert text.startswith("<!DOCTYPE html>")
    assert "<script" not in text.lower()
    assert "http://" not in text and "https://" not in text
    assert "<link" not in text.lower() and "<img" not in text.lower()
    assert text.count("<svg") >= 4  # histogram, coins and token inflow lines, badge bars
    assert "<polyline" in text and "<rect" in text
    assert "Buddies whose outcome changed the most" in text
    for change in report.top_changes:
        assert change["user_id"] in text


def test_html_escapes_names(tmp_path: Path) -> None:
    events = [
        {"user_id": "<b>&evil", "type": "lesson_completed", "occurred_at": "2024-01-01T00:00:00Z",
         "properties": {"score": 1}},
    ]  # fmt: skip
    text = simulate(events, baseline=language(), candidate=tight_candidate(), workers=1).to_html()
    assert "<b>&evil" not in text and "&lt;b&gt;&amp;evil" in text


def test_tables_and_pandas(report: SimulationReport) -> None:
    pd = pytest.importorskip("pandas", reason="pandas is not installed (extra: report)")
    frames = report.to_pandas()
    assert set(frames) == set(report.tables())
    assert all(isinstance(f, pd.DataFrame) for f in frames.values())
    rules = frames["rules"]
    assert set(rules["rulebook"]) == {"baseline", "candidate"}
    base = rules[(rules["rulebook"] == "baseline") & (rules["key"] == "lesson_coins")]
    assert int(base["granted"].iloc[0]) == next(
        r["granted"] for r in report.baseline.summary["rules"] if r["key"] == "lesson_coins"
    )
    assert len(frames["buddies"]) == 2 * report.baseline.summary["buddies"]["count"]
    assert list(frames["top_changes"]["user_id"]) == [c["user_id"] for c in report.top_changes]
    assert frames["bad_lines"].empty and list(frames["bad_lines"].columns) == [
        "line",
        "code",
        "reason",
    ]


def test_polars(report: SimulationReport) -> None:
    pl = pytest.importorskip("polars", reason="polars is not installed")
    frames = report.to_polars()
    assert isinstance(frames["rules"], pl.DataFrame)
    assert frames["daily_inflow"].height == len(report.tables()["daily_inflow"])


def test_missing_pandas_is_a_clear_typed_error(
    report: SimulationReport, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(MissingDependency, match=r"pandas.*buddyrules\[report\]"):
        report.to_pandas()
    with pytest.raises(ImportError):
        report.to_pandas()


def test_summary_table_puts_top_changes_first(report: SimulationReport) -> None:
    text = report.summary_table()
    assert text.index("Top changes") < text.index("Overview") < text.index("Rules")
    assert "coins/buddy p50" in text and "lesson_coins" in text
    assert report.top_changes[0]["user_id"] in text.split("Overview")[0]


def test_baseline_only_report() -> None:
    only = simulate(make_events(users=3, per_user=5), baseline=language(), workers=1)
    data: dict[str, Any] = only.to_dict()
    assert data["candidate"] is None and data["diff"] is None and data["top_changes"] == []
    assert "Top changes" not in only.summary_table()
    assert "<svg" in only.to_html()


def test_quantile_matches_numpy_linear() -> None:
    np = pytest.importorskip("numpy")
    values = sorted([5, 1, 9, 3, 3, 12, 40, 7])
    for q in (0.0, 0.1, 0.5, 0.9, 0.99, 1.0):
        assert quantile(values, q) == pytest.approx(float(np.quantile(values, q)))
    assert quantile([], 0.5) is None
    assert quantile([4], 0.9) == 4.0
