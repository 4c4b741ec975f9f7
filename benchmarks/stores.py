"""Store throughput: events/s through ``Engine`` on MemoryStore, SQLiteStore and PostgresStore.

Every figure is printed with its ratio to MemoryStore measured in the same run with the same
workload, writers and mode, so the numbers say what a store costs on top of the engine.

    python benchmarks/stores.py            # full run
    python benchmarks/stores.py --quick    # smoke run (small counts)

Workload: a small rulebook (a coin rule, a token rule, two badges), events spread over
distinct buddies, each event with an ``event_id``. Modes: ``single`` (``engine.send`` per
event) and ``batch`` (``engine.send_batch`` of 100). Writers: 1, and for PostgreSQL also 8
concurrent writers on distinct buddies, as threads sharing one store and as processes each
with its own store and engine (as separate workers would run); MemoryStore's figure for 8
writers uses threads, since its data cannot be shared between processes. SQLite is a file
in a temp dir, with ``synchronous=NORMAL`` (the default) and ``FULL``.

PostgreSQL: ``--postgres-dsn`` or ``BUDDYRULES_BENCH_POSTGRES_DSN`` /
``BUDDYRULES_TEST_POSTGRES_DSN``; a temporary schema is created and dropped. Without a DSN the
PostgreSQL rows are skipped.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import secrets
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))

from buddyrules import load_rulebook  # noqa: E402
from buddyrules.service import Engine  # noqa: E402
from buddyrules.storage import Store  # noqa: E402
from buddyrules.storage.memory import MemoryStore  # noqa: E402
from buddyrules.storage.sqlite import SQLiteStore  # noqa: E402

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
BATCH = 100

RULEBOOK: dict[str, Any] = {
    "name": "bench",
    "timezone": "UTC",
    "audiences": ["player"],
    "event_types": {"player": ["scored"]},
    "auto_hatch": True,
    "tokens": [{"key": "xp", "kind": "progression"}],
    "coin_rules": [{"key": "point", "event": "scored", "amount": 1}],
    "token_rules": [{"event": "scored", "token": "xp", "amount": 2}],
    "badges": [
        {"key": "first", "when": "event_count('scored') >= 1"},
        {"key": "fifty", "when": "event_count('scored') >= 50", "reward": {"coins": 10}},
    ],
}


def clock() -> datetime:
    return NOW


def events_for(writer: int, count: int, buddies: int, run: str) -> list[dict[str, Any]]:
    """``count`` events of one writer, round-robin over its own ``buddies`` buddies."""
    return [
        {
            "event_id": f"{run}-w{writer}-{i}",
            "user_id": f"{run}-w{writer}-u{i % buddies}",
            "type": "scored",
            "occurred_at": NOW,
        }
        for i in range(count)
    ]


def drive(engine: Engine, events: Sequence[dict[str, Any]], mode: str) -> None:
    if mode == "single":
        for event in events:
            engine.send(event)
    else:
        for start in range(0, len(events), BATCH):
            engine.send_batch(events[start : start + BATCH])


@dataclass(frozen=True)
class StoreSpec:
    kind: str
    target: str = ""
    schema: str = ""
    synchronous: str = "NORMAL"

    def open(self) -> Store:
        if self.kind == "memory":
            return MemoryStore()
        if self.kind == "sqlite":
            return SQLiteStore(self.target, synchronous=self.synchronous)  # type: ignore[arg-type]
        from buddyrules.storage.postgres import PostgresStore

        return PostgresStore(self.target, schema=self.schema, max_size=12)


def prepared_engine(store: Store) -> Engine:
    engine = Engine(store, clock=clock)
    engine.current_rulebook()  # load and compile before timing
    return engine


def publish(store: Store) -> None:
    Engine(store, clock=clock).publish(load_rulebook(RULEBOOK))


def run_threads(
    spec: StoreSpec, store: Store, writers: int, per_writer: int, mode: str, run: str
) -> float:
    """Events/s with ``writers`` threads sharing one store object."""
    engines = [prepared_engine(store) for _ in range(writers)]
    work = [events_for(w, per_writer, 20, run) for w in range(writers)]
    barrier = threading.Barrier(writers + 1)
    errors: list[BaseException] = []

    def writer(w: int) -> None:
        barrier.wait()
        try:
            drive(engines[w], work[w], mode)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(writers)]
    for t in threads:
        t.start()
    barrier.wait()
    started = time.perf_counter()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    if errors:
        raise errors[0]
    return writers * per_writer / elapsed


def _process_writer(
    spec: StoreSpec,
    w: int,
    per_writer: int,
    mode: str,
    run: str,
    ready: Any,
    go: Any,
    done: Any,
) -> None:
    store = spec.open()
    try:
        engine = prepared_engine(store)
        work = events_for(w, per_writer, 20, run)
        ready.put(w)
        go.wait()
        drive(engine, work, mode)
        done.put(w)
    finally:
        store.close()


def run_processes(spec: StoreSpec, writers: int, per_writer: int, mode: str, run: str) -> float:
    """Events/s with ``writers`` processes, each with its own store on the same database."""
    ctx = multiprocessing.get_context("spawn")
    ready, done, go = ctx.Queue(), ctx.Queue(), ctx.Event()
    procs = [
        ctx.Process(target=_process_writer, args=(spec, w, per_writer, mode, run, ready, go, done))
        for w in range(writers)
    ]
    for p in procs:
        p.start()
    for _ in procs:
        ready.get(timeout=120)
    started = time.perf_counter()
    go.set()
    for _ in procs:
        done.get(timeout=600)
    elapsed = time.perf_counter() - started
    for p in procs:
        p.join()
        if p.exitcode != 0:
            raise RuntimeError(f"a writer process failed (exit {p.exitcode})")
    return writers * per_writer / elapsed


def measure(
    label: str,
    spec: StoreSpec,
    writers: int,
    per_writer: int,
    mode: str,
    processes: bool = False,
    repeat: int = 1,
) -> float:
    """Best of ``repeat`` runs (each on fresh buddies), events/s."""
    store = spec.open()
    best = 0.0
    try:
        publish(store)
        for r in range(repeat):
            run = f"{label}-{mode}-{writers}-{r}-{secrets.token_hex(3)}"
            if processes:
                rate = run_processes(spec, writers, per_writer, mode, run)
            else:
                rate = run_threads(spec, store, writers, per_writer, mode, run)
            best = max(best, rate)
    finally:
        store.close()
    return best


def fsync_latency_ms(directory: str, rounds: int = 30) -> float:
    """Median time of one 4 KiB write + fsync in ``directory`` (what a durable commit waits)."""
    path = Path(directory) / "fsync-probe"
    samples = []
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for _ in range(rounds):
            started = time.perf_counter()
            os.write(fd, b"x" * 4096)
            os.fsync(fd)
            samples.append(time.perf_counter() - started)
    finally:
        os.close(fd)
        path.unlink()
    return sorted(samples)[len(samples) // 2] * 1000


def postgres_latencies(dsn: str, schema: str, rounds: int = 50) -> tuple[float, float]:
    """Median round trip (``SELECT 1``, in us) and durable commit (in ms) on the server.

    The commit probe writes a logged row (a transaction that writes no WAL, or only to a
    temporary table, is committed without waiting for the flush).
    """
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        trips = []
        for _ in range(rounds):
            started = time.perf_counter()
            conn.execute("SELECT 1").fetchone()
            trips.append(time.perf_counter() - started)
        commits = []
        for _ in range(rounds // 2):
            started = time.perf_counter()
            conn.execute(
                f'INSERT INTO "{schema}".flush_marks VALUES (pg_backend_pid(), now()) '
                "ON CONFLICT (backend_pid) DO UPDATE SET flushed_at = EXCLUDED.flushed_at"
            )
            commits.append(time.perf_counter() - started)
    return sorted(trips)[rounds // 2] * 1e6, sorted(commits)[len(commits) // 2] * 1000


def postgres_dsn(cli: str | None) -> str | None:
    return (
        cli
        or os.environ.get("BUDDYRULES_BENCH_POSTGRES_DSN")
        or os.environ.get("BUDDYRULES_TEST_POSTGRES_DSN")
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: small counts")
    parser.add_argument("--postgres-dsn", default=None)
    parser.add_argument("--repeat", type=int, default=None, help="runs per figure (best kept)")
    parser.add_argument(
        "--events",
        type=int,
        default=None,
        help="events per MemoryStore/SQLite run (default 3000; longer runs vary less)",
    )
    args = parser.parse_args(argv)

    n = args.events or (300 if args.quick else 3000)
    n_pg = 200 if args.quick else 1500
    repeat = args.repeat or (1 if args.quick else 3)
    rows: list[tuple[str, str, int, float, float]] = []
    memory = StoreSpec("memory")

    def row(name: str, mode: str, writers: int, rate: float, baseline: float) -> None:
        rows.append((name, mode, writers, rate, rate / baseline))
        print(
            f"  {name:<24} {mode:<6} writers={writers}  {rate:>9,.0f} events/s"
            f"   x{rate / baseline:.2f} of MemoryStore",
            flush=True,
        )

    print(f"buddyrules store benchmark ({'quick' if args.quick else 'full'}; best of {repeat})")
    base: dict[tuple[str, int], float] = {}
    for mode in ("single", "batch"):
        base[(mode, 1)] = measure("mem", memory, 1, n, mode, repeat=repeat)
        row("MemoryStore", mode, 1, base[(mode, 1)], base[(mode, 1)])

    with tempfile.TemporaryDirectory(prefix="buddyrules-bench-") as tmp:
        print(
            f"  (environment: load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs, "
            f"fsync of a 4 KiB write in the temp dir {fsync_latency_ms(tmp):.2f} ms)"
        )
        for sync in ("NORMAL", "FULL"):
            for mode in ("single", "batch"):
                path = Path(tmp) / f"bench-{sync.lower()}-{mode}.db"
                spec = StoreSpec("sqlite", str(path), synchronous=sync)
                count = n if sync == "NORMAL" else max(100, n // 5)
                rate = measure("sqlite", spec, 1, count, mode, repeat=repeat)
                row(f"SQLiteStore ({sync})", mode, 1, rate, base[(mode, 1)])

    dsn = postgres_dsn(args.postgres_dsn)
    if dsn is None:
        print("  PostgresStore: skipped (no DSN: --postgres-dsn or BUDDYRULES_BENCH_POSTGRES_DSN)")
        return 0
    import psycopg

    from buddyrules.storage.postgres import PostgresStore

    schema = f"br_bench_{os.getpid()}_{secrets.token_hex(3)}"
    admin = PostgresStore(dsn, schema=schema)
    try:
        admin.migrate()
        trip_us, commit_ms = postgres_latencies(dsn, schema)
        print(
            f"  (environment: PostgreSQL round trip {trip_us:.0f} us, durable commit "
            f"{commit_ms:.2f} ms, load average {os.getloadavg()[0]:.1f})"
        )
        spec = StoreSpec("postgres", dsn, schema)
        for mode in ("single", "batch"):
            rate = measure("pg", spec, 1, n_pg // 2, mode, repeat=repeat)
            row("PostgresStore", mode, 1, rate, base[(mode, 1)])
        for mode in ("single", "batch"):
            writers = 8
            per = max(BATCH, n_pg // writers // BATCH * BATCH) if mode == "batch" else n_pg // 4
            mem8 = measure("mem8", memory, writers, per, mode, repeat=repeat)
            row("MemoryStore (threads)", mode, writers, mem8, mem8)
            rate = measure("pg8t", spec, writers, per, mode, repeat=repeat)
            row("PostgresStore (threads)", mode, writers, rate, mem8)
            rate = measure("pg8p", spec, writers, per, mode, processes=True, repeat=repeat)
            row("PostgresStore (procs)", mode, writers, rate, mem8)
    finally:
        admin.close()
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
