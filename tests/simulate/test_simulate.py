"""simulate(): replay semantics, diffs, determinism across workers and executors."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

import buddyrules as br
from buddyrules.simulate import SimulationReport, simulate

from .helpers import (
    ROOT,
    language,
    make_events,
    replay_buddies,
    replay_by_hand,
    tight_candidate,
    variant,
    with_coin_amount,
)


@pytest.fixture(scope="module")
def events() -> list[dict[str, Any]]:
    return make_events()


@pytest.fixture(scope="module")
def tight_report(events: list[dict[str, Any]]) -> SimulationReport:
    return simulate(events, baseline=language(), candidate=tight_candidate(), workers=1)


def _rule(report_side: dict[str, Any], key: str) -> dict[str, Any]:
    return next(r for r in report_side["rules"] if r["key"] == key)


def test_same_rulebook_gives_an_empty_diff(events: list[dict[str, Any]]) -> None:
    report = simulate(events, baseline=language(), candidate=language(), workers=1)
    assert report.diff is not None
    assert all(section == {} for section in report.diff.values()), report.diff
    assert not report.has_changes
    assert report.top_changes == []
    assert report.buddies_changed == 0
    assert report.to_dict()["baseline"] == report.to_dict()["candidate"]


def test_changed_coin_amount_gives_exactly_the_hand_counted_difference(
    events: list[dict[str, Any]],
) -> None:
    # module_bonus has no cap, no condition, and nothing reads coins: +50 per module.
    report = simulate(
        events, baseline=language(), candidate=with_coin_amount("module_bonus", 150), workers=1
    )
    modules = sum(1 for e in events if e["type"] == "module_finished")
    per_user: dict[str, int] = {}
    for e in events:
        if e["type"] == "module_finished":
            per_user[e["user_id"]] = per_user.get(e["user_id"], 0) + 1
    assert modules > 0
    assert report.diff is not None
    assert report.diff["coins_per_buddy"]["total"] == 50 * modules
    assert report.diff["rules"] == {"coin_rule:module_bonus": {"granted": 50 * modules}}
    assert report.diff["coins_by_source"] == {"rule": 50 * modules}
    assert report.diff["badges"] == {}
    assert report.diff["evolution"] == {}
    assert report.buddies_changed == len(per_user)
    for change in report.top_changes:
        assert change["coins_diff"] == 50 * per_user[change["user_id"]]
        assert change["badges_gained"] == change["badges_lost"] == []
    biggest = max(per_user.values())
    assert report.top_changes[0]["coins_diff"] == 50 * biggest


def test_results_equal_per_user_evaluate_runs(events: list[dict[str, Any]]) -> None:
    rulebook = language()
    report = simulate(events, baseline=rulebook, workers=1)
    by_hand = replay_by_hand(rulebook, events)
    buddies = {b.user_id: b for b in report.baseline.buddies}
    assert set(buddies) == set(by_hand)
    for user, (state, earned) in by_hand.items():
        b = buddies[user]
        assert (b.coins, b.coins_earned, b.badges, b.badges_ready, b.stage) == (
            state.coins,
            earned,
            state.badges,
            state.badges_ready,
            state.stage,
        ), user
        assert b.events == state.events_applied
    summary = report.baseline.summary
    assert summary["coins_per_buddy"]["total"] == sum(e for _, e in by_hand.values())
    held = {k["key"]: k["held"] for k in summary["badges"]}
    for badge in rulebook.badges:
        assert held[badge.key] == sum(1 for s, _ in by_hand.values() if badge.key in s.badges)
    assert summary["events"]["applied"] == len(events)
    assert report.candidate is None and report.diff is None


@pytest.mark.parametrize("example", ["classroom", "fitness", "language_learning", "shop_loyalty"])
def test_example_logs_equal_per_buddy_evaluate_runs(example: str) -> None:
    # Two audiences (classroom), local time zones, paths, gates: every example rulebook.
    folder = ROOT / "rules_examples" / example
    rulebook = br.load_rulebook(folder / "rulebook.yaml")
    lines = (folder / "events.jsonl").read_text(encoding="utf-8").splitlines()
    events = [json.loads(line) for line in lines if line.strip()]
    report = simulate(folder / "events.jsonl", baseline=rulebook, candidate=rulebook, workers=2)
    exact = simulate(events, baseline=rulebook, workers=1, exact_rule_stats=True)
    assert report.to_dict()["baseline"] == exact.to_dict()["baseline"]
    assert not report.has_changes
    by_hand = replay_buddies(rulebook, events)
    buddies = {(b.user_id, b.audience): b for b in report.baseline.buddies}
    assert set(buddies) == set(by_hand)
    for key, (state, earned) in by_hand.items():
        b = buddies[key]
        assert (b.coins, b.coins_earned, b.badges, b.badges_ready, b.stage) == (
            state.coins,
            earned,
            state.badges,
            state.badges_ready,
            state.stage,
        ), key


def test_rule_statistics_match_the_ledger(events: list[dict[str, Any]]) -> None:
    rulebook = language()
    report = simulate(events, baseline=rulebook, workers=1)
    fired: dict[str, int] = {}
    granted: dict[str, int] = {}
    per_user: dict[str, list[br.Event]] = {}
    for data in events:
        ev = br.Event.from_dict(data)
        per_user.setdefault(ev.user_id, []).append(ev)
    order = {id(e): i for i, e in enumerate(x for v in per_user.values() for x in v)}
    for user, evs in per_user.items():
        evs.sort(key=lambda e: (e.occurred_at, order[id(e)]))
        state = br.new_buddy(rulebook, user, hatched_at=evs[0].occurred_at)
        for ev in evs:
            out = br.evaluate(rulebook, state, ev)
            for entry in out.ledger:
                if entry.currency == "coins" and entry.reason.startswith("rule:"):
                    key = entry.reason[5:]
                    fired[key] = fired.get(key, 0) + 1
                    granted[key] = granted.get(key, 0) + entry.amount
            state = out.state
    for rule in report.baseline.summary["rules"]:
        if rule["kind"] == "coin_rule":
            assert (rule["fired"], rule["granted"]) == (
                fired.get(rule["key"], 0),
                granted.get(rule["key"], 0),
            ), rule["key"]


def test_recorded_clipping_equals_tracing_every_event(
    events: list[dict[str, Any]], tight_report: SimulationReport
) -> None:
    exact = simulate(
        events,
        baseline=language(),
        candidate=tight_candidate(),
        workers=1,
        exact_rule_stats=True,
    )
    assert tight_report.to_dict(include_buddies=True) == exact.to_dict(include_buddies=True)
    cand = tight_report.to_dict()["candidate"]
    clipped = {r["key"]: r["clipped"] for r in cand["rules"]}
    # The data makes every kind of clip happen; the replay's plans record them with no trace.
    for key in ("lesson_coins", "perfect_score", "quiz_coins", "quiz_bonus", "login_coins"):
        assert clipped[key] > 0, key
    assert clipped["token_rules[1]"] > 0  # weekly cap and max_balance on an expression
    assert clipped["token_rules[2]"] > 0  # freeze max_balance
    assert clipped["skill_rules[0]"] > 0  # pronunciation max_value
    assert tight_report.run["events_traced"] == [0, 0]
    assert exact.run["events_traced"] == [len(events), len(events)]


def test_worker_counts_give_the_same_report(
    events: list[dict[str, Any]], tight_report: SimulationReport
) -> None:
    four = simulate(events, baseline=language(), candidate=tight_candidate(), workers=4)
    assert four.run["executor"] == "ProcessPoolExecutor"
    assert four.to_dict(include_buddies=True) == tight_report.to_dict(include_buddies=True)


def test_thread_pool_executor_gives_the_same_report(
    events: list[dict[str, Any]], tight_report: SimulationReport
) -> None:
    with ThreadPoolExecutor(max_workers=3) as pool:
        report = simulate(
            events, baseline=language(), candidate=tight_candidate(), executor=pool, workers=3
        )
    assert report.to_dict(include_buddies=True) == tight_report.to_dict(include_buddies=True)


def test_dask_local_cluster_gives_the_same_report(
    events: list[dict[str, Any]], tight_report: SimulationReport
) -> None:
    distributed = pytest.importorskip(
        "dask.distributed", reason="dask.distributed is not installed (extra: distributed)"
    )
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        report = simulate(
            events,
            baseline=language(),
            candidate=tight_candidate(),
            executor=client.get_executor(),
            workers=2,
        )
    assert report.to_dict(include_buddies=True) == tight_report.to_dict(include_buddies=True)


def test_progress_reports_every_event(events: list[dict[str, Any]]) -> None:
    calls: list[tuple[int, int]] = []
    simulate(events, baseline=language(), workers=1, progress=lambda d, t: calls.append((d, t)))
    assert calls[0] == (0, len(events))
    assert calls[-1] == (len(events), len(events))
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)


def test_initial_states_continue_where_the_store_left_off(events: list[dict[str, Any]]) -> None:
    rulebook = language()
    ordered = sorted(events, key=lambda e: e["occurred_at"])
    cut = ordered[len(ordered) // 2]["occurred_at"]
    first = [e for e in events if e["occurred_at"] < cut]
    second = [e for e in events if e["occurred_at"] >= cut]
    states = {user: s for user, (s, _) in replay_by_hand(rulebook, first).items()}
    # A buddy with no events in the second half is still part of the population.
    idle = br.new_buddy(rulebook, "idle_user")
    full = replay_by_hand(rulebook, events)
    report = simulate(
        second,
        baseline=rulebook,
        candidate=with_coin_amount("module_bonus", 150),
        initial_states=[*states.values(), idle],
        workers=2,
    )
    buddies = {b.user_id: b for b in report.baseline.buddies}
    assert buddies["idle_user"].events == 0 and buddies["idle_user"].from_initial_state
    for user, (state, _) in full.items():
        b = buddies[user]
        assert (b.coins, b.badges, b.stage) == (state.coins, state.badges, state.stage), user
    summary = report.baseline.summary
    assert summary["buddies"]["from_initial_states"] == len(states) + 1
    assert summary["buddies"]["hatched"] == len(set(full) - set(states))
    # The coins earned are the replay's only; balances include what the states held.
    earned_second = sum(b.coins_earned for b in report.baseline.buddies)
    assert earned_second == sum(full[u][0].coins for u in full) - sum(
        s.coins for s in states.values()
    )


def test_initial_states_are_checked() -> None:
    rulebook = language()
    state = br.new_buddy(rulebook, "u1")
    with pytest.raises(br.ValidationFailed, match="two states"):
        simulate([], baseline=rulebook, initial_states=[state, state], workers=1)
    other = variant(audiences=["teacher"], event_types={"teacher": ["lesson_completed"]})
    with pytest.raises(br.ValidationFailed, match="does not configure"):
        simulate([], baseline=rulebook, candidate=_loadable(other), initial_states=[state])


def _loadable(doc: dict[str, Any]) -> dict[str, Any]:
    """``variant`` with sections that reference the old audience dropped."""
    keep = {"name", "timezone", "audiences", "event_types"}
    return {k: v for k, v in doc.items() if k in keep}


def test_event_rejected_by_one_rulebook_only_is_counted_not_bad(
    events: list[dict[str, Any]],
) -> None:
    candidate = variant(
        event_types={"student": ["lesson_completed", "quiz_passed", "module_finished"]},
        coin_rules=[r for r in variant()["coin_rules"] if r["event"] != "daily_login"],
    )
    report = simulate(events, baseline=language(), candidate=candidate, workers=1)
    logins = sum(1 for e in events if e["type"] == "daily_login")
    assert report.bad_lines == ()
    cand = report.to_dict()["candidate"]
    assert cand["events"]["rejected"] == {"event_type_not_registered": logins}
    assert report.diff is not None
    assert report.diff["events"]["applied"] == -logins


def test_duplicate_event_ids_are_ignored_or_conflict() -> None:
    base = make_events(users=2, per_user=5)
    dup = dict(base[3])
    conflict = dict(base[4], properties={"score": 0.01, "difficulty": "x"}, type="quiz_passed")
    report = simulate([*base, dup, conflict], baseline=language(), workers=1, on_bad_line="skip")
    assert report.duplicates == 1
    assert [(b.line, b.code) for b in report.bad_lines] == [
        (len(base) + 2, "idempotency_key_conflict")
    ]
    assert report.baseline.summary["events"]["applied"] == len(base)


def test_options_are_validated() -> None:
    with pytest.raises(br.ValidationFailed, match="on_bad_line"):
        simulate([], baseline=language(), on_bad_line="ignore")  # type: ignore[arg-type]
    with pytest.raises(br.ValidationFailed, match="workers"):
        simulate([], baseline=language(), workers=0)
    with pytest.raises(br.RulebookError):
        simulate([], baseline={"name": "broken"})


def test_empty_log_gives_an_empty_report() -> None:
    report = simulate([], baseline=language(), candidate=language(), workers=3)
    assert report.baseline.summary["buddies"]["count"] == 0
    assert report.baseline.summary["coins_per_buddy"]["p50"] is None
    assert not report.has_changes
    assert "Simulation: 0 events" in report.summary_table()
    assert "<svg" in report.to_html()


def test_events_replay_in_instant_order_whatever_their_offsets() -> None:
    events: list[dict[str, Any]] = [
        {"user_id": "u", "type": "daily_login", "occurred_at": "2024-03-01T09:00:00Z"},
        # Earlier instant (08:00 UTC) written later and with a later-looking local time.
        {"user_id": "u", "type": "lesson_completed", "occurred_at": "2024-03-01T10:00:00+02:00",
         "properties": {"score": 0.5}},
    ]  # fmt: skip
    report = simulate(events, baseline=language(), workers=1)
    badges = {b["key"]: b for b in report.baseline.summary["badges"]}
    # Hatched at the lesson (the first instant), which awards first_lesson at once.
    assert badges["first_lesson"]["median_days_to_award"] == 0.0
    daily = report.baseline.summary["daily_inflow"]
    assert [d["date"] for d in daily] == ["2024-03-01"]


def test_progress_true_draws_a_bar_on_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    simulate(make_events(users=2, per_user=3), baseline=language(), workers=1, progress=True)
    captured = capsys.readouterr()
    assert "Replaying events" in captured.err
    assert captured.out == ""


def test_rules_sharing_a_skill_or_a_token_are_told_apart(events: list[dict[str, Any]]) -> None:
    # Two skill rules raise the same skill on one event type, and two rules credit gems on
    # another: the plans record each rule's own grant, as a trace does. (Rule keys are
    # unique across sections, so caps are never shared.)
    doc = tight_candidate()
    doc["skill_rules"].append({"event": "lesson_completed", "skill": "grammar", "amount": 2})
    doc["coin_rules"].append({"key": "shared", "event": "daily_login", "amount": 1, "daily_cap": 1})
    doc["token_rules"].append(
        {"key": "shared_gems", "event": "daily_login", "token": "gems", "amount": 1, "daily_cap": 2}
    )
    inferred = simulate(events, baseline=doc, workers=1)
    exact = simulate(events, baseline=doc, workers=1, exact_rule_stats=True)
    assert inferred.to_dict(include_buddies=True) == exact.to_dict(include_buddies=True)
    assert inferred.run["events_traced"] == [0]
    rules = {r["key"]: r for r in inferred.baseline.summary["rules"]}
    assert rules["skill_rules[3]"]["fired"] > 0
