"""How fast is ``simulate``? Baseline: the same simulation in one process (``workers=1``).

Run ``python benchmarks/simulate.py`` (``--quick`` for a smoke run; ``--events N --users U``
to size the workload; ``--workers W`` for the parallel run; ``--profile`` to print a cProfile
of the in-process run). The reference workload is 1,000,000 events over 20,000 users of the
language-learning example rulebook (lessons, quizzes, logins, modules; sessions days apart
so that streaks tick and burn and caps fill up), written to a temporary ``.jsonl`` file in
time order across users, like a real log. Two rulebooks are compared: the example and a
candidate with changed amounts and caps.

It prints, for ``workers=1`` (in this process) and ``workers=W`` (processes), the wall time,
events/s and the time per phase (reading and routing in the main process, replay, merge and
report), the speed-up of the parallel run over the single-process one, and the simulation's
own overhead: the same users replayed by calling ``evaluate`` directly (no parsing, no
statistics) on a sample, against ``simulate(workers=1)`` on that sample (negative since
simulate replays each buddy on one working copy, ``engine/replay.py``, instead of building a
new immutable state per event as ``evaluate`` must). Target: the whole
comparison of 1M events in at most 20 s on 2 cores, with a speed-up close to the core count.
The machine's load average is printed too: on a shared machine, other processes slow both
runs and cap the speed-up.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import json
import os
import pickle
import pstats
import random
import resource
import sys
import tempfile
import time
from array import array
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
try:
    import buddyrules as br
    from buddyrules.simulate import SimulationReport, simulate
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(ROOT / "src"))
    import buddyrules as br
    from buddyrules.simulate import SimulationReport, simulate

RULEBOOK = ROOT / "rules_examples" / "language_learning" / "rulebook.yaml"
START = datetime(2026, 1, 5, 6, 0, tzinfo=UTC)
TYPES = ("lesson_completed", "quiz_passed", "daily_login", "module_finished")
TYPE_WEIGHTS = (50, 20, 20, 10)
SCORES = (0.4, 0.5, 0.7, 0.85, 0.9, 0.95, 1.0)
DIFFICULTIES = ("speaking", "grammar", "reading")
DAY_GAPS = (0, 0, 0, 1, 1, 1, 1, 1, 2, 3)


# -- the workload ----------------------------------------------------------------------------


def generate(path: Path, events: int, users: int, seed: int = 7) -> None:
    """Write ``events`` events over ``users`` users to ``path`` (JSONL, time-ordered)."""
    rng = random.Random(seed)
    rows: list[tuple[datetime, str]] = []
    per_user = [events // users + (1 if u < events % users else 0) for u in range(users)]
    for u, count in enumerate(per_user):
        user = f"user_{u:06d}"
        t = START + timedelta(days=rng.randrange(14), minutes=rng.randrange(24 * 60))
        for i in range(count):
            gap = rng.choice(DAY_GAPS)
            t += timedelta(days=gap, minutes=rng.randrange(5, 120 if gap == 0 else 600))
            type_ = rng.choices(TYPES, TYPE_WEIGHTS)[0]
            props: dict[str, Any] = {}
            if type_ in ("lesson_completed", "quiz_passed"):
                props["score"] = rng.choice(SCORES)
                props["difficulty"] = rng.choice(DIFFICULTIES)
            line = json.dumps(
                {
                    "event_id": f"{user}-{i}",
                    "user_id": user,
                    "type": type_,
                    "occurred_at": t.isoformat().replace("+00:00", "Z"),
                    "properties": props,
                },
                separators=(",", ":"),
            )
            rows.append((t, line))
    rows.sort(key=lambda r: r[0])
    with path.open("w", encoding="utf-8") as fh:
        for _, line in rows:
            fh.write(line + "\n")


def candidate() -> dict[str, Any]:
    """The example rulebook with changed amounts and caps."""
    doc = br.load_rulebook(RULEBOOK).to_dict()
    doc["name"] = "language-learning-candidate"
    for rule in doc["coin_rules"]:
        if rule["key"] == "lesson_coins":
            rule.update(amount=12, daily_cap=48)
        elif rule["key"] == "quiz_coins":
            rule.update(amount="round(props.score * 12)", weekly_cap=150)
        elif rule["key"] == "first_ten_lessons":
            rule.update(amount=15, total_limit=20)
        elif rule["key"] == "login_coins":
            rule.update(amount=3, daily_cap=3)
    for rule in doc["token_rules"]:
        if rule["token"] == "gems":
            rule.update(amount=6, weekly_cap=60)
    return doc


# -- measuring -------------------------------------------------------------------------------


def cpu_seconds() -> float:
    """CPU time of this process and of its finished children (the worker processes)."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def run(
    path: Path, workers: int, rulebooks: tuple[Any, Any]
) -> tuple[float, float, SimulationReport]:
    """Wall seconds, CPU seconds (workers included) and the report of one simulation."""
    gc.collect()
    cpu = cpu_seconds()
    started = time.perf_counter()
    report = simulate(path, baseline=rulebooks[0], candidate=rulebooks[1], workers=workers)
    return time.perf_counter() - started, cpu_seconds() - cpu, report


def phases(report: SimulationReport) -> str:
    s = report.run["seconds"]
    return (
        f"read+route {s['read']:.2f} s | replay {s['replay']:.2f} s "
        f"(shard work {s['shard_work']:.2f} s) | merge+report {s['merge']:.2f} s"
    )


def engine_only(path: Path, users: set[str], rulebooks: list[br.Rulebook]) -> tuple[float, int]:
    """Seconds to replay ``users`` by calling ``evaluate`` directly (Events prebuilt)."""
    per_user: dict[str, list[br.Event]] = {}
    with path.open("rb") as fh:
        for line in fh:
            data = json.loads(line)
            if data["user_id"] in users:
                per_user.setdefault(data["user_id"], []).append(br.Event.from_dict(data))
    n = sum(len(v) for v in per_user.values())
    gc.collect()
    started = time.process_time()
    for rb in rulebooks:
        for user, events in per_user.items():
            state = br.new_buddy(rb, user, hatched_at=events[0].occurred_at)
            for event in events:
                state = br.evaluate(rb, state, event).state
    return time.process_time() - started, n


def validation_only(path: Path, users: set[str]) -> float:
    """Seconds to parse and validate the sample's lines (``json.loads`` + ``Event.from_dict``)."""
    lines = [line for line in path.open("rb") if json.loads(line)["user_id"] in users]
    gc.collect()
    started = time.process_time()
    for line in lines:
        br.Event.from_dict(json.loads(line))
    return time.process_time() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a small smoke run")
    parser.add_argument("--events", type=int, default=None, help="events (default 1,000,000)")
    parser.add_argument("--users", type=int, default=None, help="users (default 20,000)")
    parser.add_argument("--workers", type=int, default=2, help="parallel workers (default 2)")
    parser.add_argument("--profile", action="store_true", help="cProfile the workers=1 run")
    args = parser.parse_args()
    events = args.events or (20_000 if args.quick else 1_000_000)
    users = args.users or (400 if args.quick else 20_000)

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "events.jsonl"
        t0 = time.perf_counter()
        generate(path, events, users)
        size = path.stat().st_size
        print(
            f"workload: {events:,} events over {users:,} users in a {size / 1e6:.0f} MB .jsonl "
            f"(generated in {time.perf_counter() - t0:.1f} s); {os.cpu_count()} CPUs, "
            f"load average {os.getloadavg()[0]:.2f} before the runs"
        )
        rulebooks = (br.load_rulebook(RULEBOOK), br.load_rulebook(candidate()))
        print(f"rulebooks: {rulebooks[0].name} vs {rulebooks[1].name}")

        if args.profile:
            profiler = cProfile.Profile()
            profiler.enable()
        t1, c1, single = run(path, 1, rulebooks)
        if args.profile:
            profiler.disable()
            pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
        tn, cn, multi = run(path, args.workers, rulebooks)
        same = single.to_dict(include_buddies=True) == multi.to_dict(include_buddies=True)
        print(
            f"workers=1 (in process): {t1:7.2f} s wall, {c1:7.2f} s CPU, "
            f"{events / t1:9,.0f} events/s  [{phases(single)}]"
        )
        print(
            f"workers={args.workers} (processes):  {tn:7.2f} s wall, {cn:7.2f} s CPU, "
            f"{events / tn:9,.0f} events/s  [{phases(multi)}]"
        )
        print(
            f"speed-up with {args.workers} workers: {t1 / tn:.2f}x wall (ideal "
            f"{args.workers}.00x); CPU cost of going parallel {cn / c1:.2f}x; the parallel run "
            f"would take {cn / args.workers:.1f} s on {args.workers} idle cores; "
            f"load average now {os.getloadavg()[0]:.2f}"
        )
        print(
            f"identical reports: {same}; events traced for clipping: "
            f"{single.run['events_traced']} of {events:,} per rulebook"
        )
        if not same:
            raise SystemExit("the reports differ between worker counts")

        # The simulation's own overhead, on a sample of users.
        sample_users = {b.user_id for b in single.baseline.buddies[:: max(1, users // 1000)]}
        engine_s, sample_n = engine_only(path, sample_users, list(rulebooks))
        valid_s = validation_only(path, sample_users)
        sample_path = Path(tmp) / "sample.jsonl"
        with path.open("rb") as src, sample_path.open("wb") as dst:
            for line in src:
                if json.loads(line)["user_id"] in sample_users:
                    dst.write(line)
        _, sim_s, _ = run(sample_path, 1, rulebooks)
        per = 1e6 / (2 * sample_n)
        print(
            f"CPU time on a sample of {len(sample_users):,} users ({sample_n:,} events, 2 "
            f"rulebooks): evaluate only {engine_s * per:.1f} us/event/rulebook, parse+validate "
            f"{valid_s * 1e6 / sample_n:.1f} us/event, simulate(workers=1) "
            f"{sim_s * per:.1f} us/event/rulebook -> simulation overhead over evaluate+validate: "
            f"{(sim_s / (engine_s + valid_s) - 1) * 100:+.0f}%"
        )

        # What crosses process boundaries: each shard's raw lines, packed.
        from buddyrules.simulate._inputs import read_events, shard_of

        shards = 4 * args.workers
        raw: list[list[bytes]] = [[] for _ in range(shards)]
        numbers: list[array[int]] = [array("q") for _ in range(shards)]
        t0 = time.perf_counter()
        for number, payload, user in read_events(path, keep_raw=True):
            assert isinstance(payload, bytes)
            raw[shard_of(user, shards)].append(payload)
            numbers[shard_of(user, shards)].append(number)
        read_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        blobs = [
            pickle.dumps((b"\n".join(r), n), protocol=pickle.HIGHEST_PROTOCOL)
            for r, n in zip(raw, numbers, strict=True)
        ]
        pickle_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        for blob in blobs:
            packed, _ = pickle.loads(blob)
            packed.split(b"\n")
        unpickle_s = time.perf_counter() - t0
        print(
            f"main process: read+parse+route {read_s:.2f} s; packing and pickling the shards "
            f"{pickle_s:.2f} s ({sum(map(len, blobs)) / 1e6:.0f} MB); unpickling and splitting "
            f"them (in the workers) {unpickle_s:.2f} s"
        )

        t0 = time.perf_counter()
        html = multi.to_html(Path(tmp) / "report.html")
        html_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        multi.to_json(Path(tmp) / "report.json")
        json_s = time.perf_counter() - t0
        print(f"exports: to_html {html_s:.2f} s ({len(html) / 1e3:.0f} kB), to_json {json_s:.2f} s")
        print(
            f"target (1M events <= 20 s on 2 cores): best run {min(t1, tn):.1f} s wall for "
            f"{events:,} events ({min(t1, tn) * 1_000_000 / events:.1f} s per million; "
            f"{cn / args.workers * 1_000_000 / events:.1f} s per million on idle cores)"
        )


if __name__ == "__main__":
    main()
