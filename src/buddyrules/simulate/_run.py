"""``simulate``: read the log, shard it by user, replay the shards in parallel, merge."""

from __future__ import annotations

import os
import time
from array import array
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Executor, Future, ProcessPoolExecutor, as_completed
from typing import Any, Literal

from buddyrules.rulebook import Rulebook, load_rulebook
from buddyrules.simulate._errors import BadEventLine, SimulationInputError
from buddyrules.simulate._gc import paused_gc
from buddyrules.simulate._inputs import BadLine, EventSource, Payload, read_events, shard_of
from buddyrules.simulate._progress import ProgressBar
from buddyrules.simulate._replay import ShardResult, ShardTask, remember_rulebook, run_shard
from buddyrules.simulate._report import RulebookOutcome, SimulationReport
from buddyrules.simulate._tally import Tally
from buddyrules.state import BuddyState

__all__ = ["RulebookSource", "simulate"]

#: A rulebook, a path to a rulebook file, or a parsed mapping (see ``load_rulebook``).
RulebookSource = Rulebook | str | os.PathLike[str] | Mapping[str, Any]

_SHARDS_PER_WORKER = 4


def simulate(
    events: EventSource,
    *,
    baseline: RulebookSource,
    candidate: RulebookSource | None = None,
    initial_states: Iterable[BuddyState] | None = None,
    workers: int | None = None,
    executor: Executor | None = None,
    on_bad_line: Literal["stop", "skip"] = "stop",
    progress: Callable[[int, int], None] | bool | None = None,
    top_n: int = 20,
    exact_rule_stats: bool = False,
) -> SimulationReport:
    """Replay an event log under ``baseline`` (and ``candidate``) and report what changes.

    ``events`` is a path (``.jsonl``/``.ndjson``, ``.json`` holding one array, ``.csv`` with
    columns ``event_id,user_id,type,audience,occurred_at,properties`` (properties as JSON),
    ``.parquet`` with the same columns when pyarrow is installed, or any of the text formats
    gzipped as ``.gz``), or any iterable of events (dicts, snake or camel case, or
    :class:`~buddyrules.Event`). Every event needs ``occurred_at``.

    Each buddy, one per ``(user_id, audience)``, replays its events in ``occurred_at`` order
    (ties in input order). It starts from its state in ``initial_states`` (e.g. a store's
    ``export_states()``; pinned to the simulated rulebook's version, as ``migrate`` does) or
    is hatched fresh at its first event, whatever ``auto_hatch`` says. Each rulebook applies
    the events it accepts; an event that no rulebook accepts is a *bad line*, and so is a
    line that is not JSON, an invalid event, one without ``occurred_at``, or a reused
    ``event_id`` with a different payload (an exact repeat is ignored as the service would).
    With ``on_bad_line="stop"`` the first bad line raises :class:`BadEventLine` naming it;
    with ``"skip"`` bad lines are skipped and listed in the report.

    The users are split into shards replayed by ``workers`` processes (default: one per
    CPU; ``1`` runs in this process) or by ``executor``, any
    :class:`concurrent.futures.Executor` (a Dask ``client.get_executor()`` spreads the work
    over a cluster; ``workers`` then only sets the number of shards, four per worker). The
    report is the same whatever the number of workers.

    Worker processes start with the platform's default method (``fork`` on Linux before
    Python 3.14); pass ``executor=ProcessPoolExecutor(mp_context=...)`` to choose another.

    ``progress(done, total)`` is called with events replayed so far (``True`` draws a
    progress bar on stderr). ``top_n`` bounds the list of most-changed buddies.
    ``exact_rule_stats`` evaluates every event with ``explain=True`` and reads the per-rule
    statistics from its trace, instead of the records the replay makes as it goes (slower;
    the results are the same: it is the reference the replay is tested against).

    Raises :class:`BadEventLine` (above), :class:`SimulationInputError` for an unusable
    input (unknown extension, bad CSV header, malformed JSON array, a bad initial state or
    option), :class:`MissingDependency` for ``.parquet`` without pyarrow,
    :class:`~buddyrules.ResourceNotFound` for a missing file and
    :class:`~buddyrules.RulebookError` for an invalid rulebook.
    """
    started = time.perf_counter()
    if on_bad_line not in ("stop", "skip"):
        raise SimulationInputError(
            f"on_bad_line must be 'stop' or 'skip', not {on_bad_line!r}",
            {"fields": {"on_bad_line": "expected 'stop' or 'skip'"}},
        )
    if workers is None:
        workers = os.cpu_count() or 1
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        raise SimulationInputError(
            f"workers must be a positive integer, not {workers!r}",
            {"fields": {"workers": "expected an integer >= 1"}},
        )
    if top_n < 0:
        raise SimulationInputError("top_n must not be negative", {"fields": {"top_n": "< 0"}})
    books = [load_rulebook(baseline)]
    if candidate is not None:
        books.append(load_rulebook(candidate))
    inline = executor is None and workers == 1
    shards = _SHARDS_PER_WORKER * workers

    # 1. Read and route (main process).
    items: list[list[tuple[int, Payload]]] = [[] for _ in range(shards)]
    raw: list[list[bytes]] = [[] for _ in range(shards)]
    raw_lines: list[array[int]] = [array("q") for _ in range(shards)]
    bad: list[BadLine] = []
    lines = 0
    shard_cache: dict[str, int] = {}
    with paused_gc():
        # JSONL lines stay raw bytes until a shard parses them: a fraction of the memory of
        # parsed dicts, and nearly free to pickle.
        for line, payload, user in read_events(events, keep_raw=True):
            lines += 1
            if isinstance(payload, BadLine):
                bad.append(payload)
                continue
            shard = shard_cache.get(user)
            if shard is None:
                shard = shard_cache[user] = shard_of(user, shards)
            if isinstance(payload, bytes):
                raw[shard].append(payload)
                raw_lines[shard].append(line)
            else:
                items[shard].append((line, payload))
    states: list[list[BuddyState]] = [[] for _ in range(shards)]
    seen_states: set[tuple[str, str]] = set()
    for state in initial_states or ():
        if not isinstance(state, BuddyState):
            raise SimulationInputError(
                f"initial_states must hold BuddyState objects, got {type(state).__name__}",
                {"fields": {"initial_states": "expected BuddyState items"}},
            )
        key = (state.user_id, state.audience)
        if key in seen_states:
            raise SimulationInputError(
                f"initial_states holds two states for user {state.user_id!r}, "
                f"audience {state.audience!r}",
                {"user_id": state.user_id, "audience": state.audience},
            )
        seen_states.add(key)
        for rb in books:
            if state.audience not in rb.audiences:
                raise SimulationInputError(
                    f"initial state of user {state.user_id!r} has audience {state.audience!r}, "
                    f"which rulebook {rb.name!r} does not configure",
                    {"user_id": state.user_id, "audience": state.audience, "rulebook": rb.name},
                )
        states[shard_of(state.user_id, shards)].append(state)
    read_done = time.perf_counter()

    # 2. Replay the shards.
    documents = tuple((rb.version, rb.spec.model_dump(mode="json")) for rb in books)
    for rb in books:
        remember_rulebook(rb)
    validate_only = bool(bad) and on_bad_line == "stop"
    tasks = [
        ShardTask(
            index=i,
            rulebooks=documents,
            items=items[i],
            packed=b"\n".join(raw[i]),
            packed_lines=raw_lines[i],
            initial_states=states[i],
            on_bad_line=on_bad_line,
            validate_only=validate_only,
            exact_rule_stats=exact_rule_stats,
        )
        for i in range(shards)
        if items[i] or raw_lines[i] or states[i]
    ]
    del items, raw, raw_lines, states
    total = sum(t.size for t in tasks)
    bar = ProgressBar() if progress is True else None
    report_progress = bar if bar is not None else progress if callable(progress) else None
    if report_progress is not None:
        report_progress(0, total)
    try:
        results = _run_tasks(tasks, workers, executor, inline, report_progress, total)
    finally:
        if bar is not None:
            bar.close()
    replay_done = time.perf_counter()

    # 3. Merge (deterministic: tallies add up; lists are sorted when the report is built).
    results.sort(key=lambda r: r.index)
    for r in results:
        bad.extend(r.bad)
    bad.sort()
    if bad and on_bad_line == "stop":
        first = bad[0]
        label = f"{os.fspath(events)}: " if isinstance(events, str | os.PathLike) else ""
        where = "line" if isinstance(events, str | os.PathLike) else "item"
        raise BadEventLine(
            f"{label}{where} {first.line}: {first.code}: {first.reason}"
            + (
                f" ({len(bad)} bad lines found; on_bad_line='skip' skips them)"
                if len(bad) > 1
                else ""
            ),
            {"line": first.line, "code": first.code, "reason": first.reason, "bad_lines": len(bad)},
        )
    tallies = [Tally() for _ in books]
    for r in results:
        for tally, part in zip(tallies, r.tallies, strict=True):
            tally.merge(part)
    outcomes = [RulebookOutcome.build(rb, t) for rb, t in zip(books, tallies, strict=True)]
    report = SimulationReport(
        baseline=outcomes[0],
        candidate=outcomes[1] if len(outcomes) > 1 else None,
        lines=lines,
        bad_lines=bad,
        duplicates=sum(r.duplicates for r in results),
        top_n=top_n,
    )
    finished = time.perf_counter()
    report.run = {
        "source": os.fspath(events) if isinstance(events, str | os.PathLike) else None,
        "workers": workers if executor is None else None,
        "executor": type(executor).__name__ if executor is not None else (
            "inline" if inline else "ProcessPoolExecutor"
        ),
        "shards": len(tasks),
        "events_traced": [t.traced for t in tallies],
        "seconds": {
            "read": read_done - started,
            "replay": replay_done - read_done,
            "merge": finished - replay_done,
            "total": finished - started,
            "shard_work": sum(r.seconds for r in results),
        },
    }  # fmt: skip
    return report


def _run_tasks(
    tasks: list[ShardTask],
    workers: int,
    executor: Executor | None,
    inline: bool,
    progress: Callable[[int, int], None] | None,
    total: int,
) -> list[ShardResult]:
    results: list[ShardResult] = []
    done = 0
    if inline or not tasks:
        for task in tasks:
            results.append(run_shard(task))
            done += task.size
            if progress is not None:
                progress(done, total)
        return results
    own = None
    if executor is None:
        own = ProcessPoolExecutor(max_workers=min(workers, len(tasks)))
        executor = own
    futures: list[Future[ShardResult]] = []
    try:
        # Biggest shards first, so the last ones to finish are short.
        for task in sorted(tasks, key=lambda t: -t.size):
            futures.append(executor.submit(run_shard, task))
        for future in as_completed(futures):
            result = future.result()
            results.append(result)
            done += result.events
            if progress is not None:
                progress(done, total)
    except BaseException:
        for f in futures:
            f.cancel()
        raise
    finally:
        if own is not None:
            own.shutdown(wait=True, cancel_futures=True)
    return results
