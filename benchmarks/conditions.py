"""How fast are compiled conditions? Baseline: the same conditions as hand-written lambdas.

Run ``python benchmarks/conditions.py`` (``--quick`` for a smoke run). Twenty typical
conditions are evaluated over generated namespaces (mostly hits, about 5% with a missing
property), by the compiled evaluator and by plain Python lambdas written by hand over the
same dicts, in the same run. simpleeval (the reference semantics) is timed on fewer
namespaces and its total is scaled, for context. The target is compiled <= 2x lambdas.
"""

from __future__ import annotations

import argparse
import functools
import random
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

try:
    from buddyrules.conditions import Symbols, compile_expression, reference_evaluate
    from buddyrules.conditions._reference import ReferenceProgram
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from buddyrules.conditions import Symbols, compile_expression, reference_evaluate
    from buddyrules.conditions._reference import ReferenceProgram

Namespace = dict[str, Any]
Evaluator = Callable[[Namespace], Any]

SYMBOLS = Symbols(
    skills={"pronunciation", "grammar"},
    tokens={"xp", "gems", "freeze"},
    streaks={"daily_lesson"},
    badges={"first_lesson", "week_warrior", "scholar"},
    event_types={"lesson_completed", "quiz_passed", "daily_login", "module_finished"},
)

# Each condition next to the lambda a careful engineer would write by hand. The lambdas use
# .get where a property may be missing, so they never raise and give the same answer.
CONDITIONS: list[tuple[str, Evaluator]] = [
    ('event.type == "lesson_completed"', lambda ns: ns["event"]["type"] == "lesson_completed"),
    ("props.score >= 0.9", lambda ns: ns["props"].get("score", 0) >= 0.9),
    (
        "counters.lesson_completed >= 10",
        lambda ns: ns["counters"].get("lesson_completed", 0) >= 10,
    ),
    ('event_count("quiz_passed") >= 3', lambda ns: ns["counters"].get("quiz_passed", 0) >= 3),
    ('"first_lesson" in badges', lambda ns: "first_lesson" in ns["badges"]),
    ('has_badge("week_warrior")', lambda ns: "week_warrior" in ns["badges"]),
    ("coins * 2 + tokens.xp > 500", lambda ns: ns["coins"] * 2 + ns["tokens"]["xp"] > 500),
    (
        "skills.pronunciation.level >= 2",
        lambda ns: ns["skills"]["pronunciation"]["level"] >= 2,
    ),
    (
        "streaks.daily_lesson.count >= 7",
        lambda ns: ns["streaks"]["daily_lesson"]["count"] >= 7,
    ),
    (
        'props.difficulty == "speaking" and props.score > 0.5',
        lambda ns: (
            ns["props"].get("difficulty") == "speaking" and ns["props"].get("score", 0) > 0.5
        ),
    ),
    (
        "event_count(module_finished) >= 1",
        lambda ns: ns["counters"].get("module_finished", 0) >= 1,
    ),
    (
        'tokens.xp >= 500 and has_badge("week_warrior")',
        lambda ns: ns["tokens"]["xp"] >= 500 and "week_warrior" in ns["badges"],
    ),
    (
        "props.duration_seconds > 600 or props.score == 1.0",
        lambda ns: ns["props"]["duration_seconds"] > 600 or ns["props"].get("score") == 1.0,
    ),
    (
        'stage >= 2 and skill_level("grammar") >= 3',
        lambda ns: ns["stage"] >= 2 and ns["skills"]["grammar"]["level"] >= 3,
    ),
    (
        'audience == "student" and event.type in ["lesson_completed", "quiz_passed"]',
        lambda ns: (
            ns["audience"] == "student"
            and ns["event"]["type"] in ("lesson_completed", "quiz_passed")
        ),
    ),
    (
        'streaks.daily_lesson.best >= 30 or streak("daily_lesson") >= 14',
        lambda ns: (
            ns["streaks"]["daily_lesson"]["best"] >= 30
            or ns["streaks"]["daily_lesson"]["count"] >= 14
        ),
    ),
    (
        "min(props.score * 100, 100) >= 95",
        lambda ns: min(ns["props"].get("score", 0) * 100, 100) >= 95,
    ),
    (
        'props.lesson.level == "advanced"',
        lambda ns: ns["props"].get("lesson", {}).get("level") == "advanced",
    ),
    (
        'props["lesson-id"] != "intro" and counters.quiz_passed > counters.lesson_completed / 2',
        lambda ns: (
            ns["props"]["lesson-id"] != "intro"
            and ns["counters"].get("quiz_passed", 0) > ns["counters"].get("lesson_completed", 0) / 2
        ),
    ),
    ("len(badges) >= 2 and coins >= 100", lambda ns: len(ns["badges"]) >= 2 and ns["coins"] >= 100),
]


def make_namespaces(count: int, seed: int = 7) -> list[Namespace]:
    """Realistic namespaces: mostly complete, ~5% missing ``score``, ~5% missing ``lesson``."""
    rng = random.Random(seed)
    types = ["lesson_completed", "quiz_passed", "daily_login", "module_finished"]
    badges = ["first_lesson", "week_warrior", "scholar"]
    namespaces = []
    for index in range(count):
        props: dict[str, Any] = {
            "difficulty": rng.choice(["speaking", "reading", "listening"]),
            "duration_seconds": rng.randint(30, 1200),
            "lesson-id": rng.choice(["intro", "basics", "travel"]),
        }
        if rng.random() > 0.05:
            props["score"] = round(rng.random(), 2)
        if rng.random() > 0.05:
            props["lesson"] = {"level": rng.choice(["beginner", "advanced"])}
        event_type = rng.choice(types)
        counters = {kind: rng.randint(0, 40) for kind in types if rng.random() > 0.2}
        namespaces.append(
            {
                "event": {
                    "type": event_type,
                    "audience": "student",
                    "user_id": f"user_{index % 1000}",
                    "occurred_at": "2024-05-01T10:00:00Z",
                    "properties": props,
                },
                "props": props,
                "coins": rng.randint(0, 1000),
                "tokens": {"xp": rng.randint(0, 3000), "gems": rng.randint(0, 50), "freeze": 1},
                "skills": {
                    name: {"value": value, "level": value // 20}
                    for name in ("pronunciation", "grammar")
                    for value in [rng.randint(0, 100)]
                },
                "badges": frozenset(badge for badge in badges if rng.random() > 0.5),
                "streaks": {"daily_lesson": {"count": rng.randint(0, 40), "best": 40}},
                "counters": counters,
                "stage": rng.randint(1, 5),
                "audience": "student",
            }
        )
    return namespaces


def time_evaluators(
    evaluators: Sequence[Sequence[Evaluator]], namespaces: Sequence[Namespace], repeats: int
) -> list[float]:
    """Total time of each evaluator family over all conditions and namespaces.

    ``evaluators[k][i]`` is family ``k``'s evaluator for condition ``i``. Families are timed
    interleaved, condition by condition, and each (family, condition) keeps its best of
    ``repeats`` runs, so a noisy moment or a cold cache does not favour one family.
    """
    best = [[float("inf")] * len(family) for family in evaluators]
    for _ in range(repeats):
        for index in range(len(evaluators[0])):
            for family, times in zip(evaluators, best, strict=True):
                evaluate = family[index]
                start = time.perf_counter()
                for ns in namespaces:
                    evaluate(ns)
                times[index] = min(times[index], time.perf_counter() - start)
    return [sum(times) for times in best]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print a table; returns a process exit code."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small smoke run")
    parser.add_argument("--contexts", type=int, default=None, help="namespaces to generate")
    args = parser.parse_args(argv)
    count = args.contexts or (5_000 if args.quick else 100_000)
    repeats = 1 if args.quick else 3
    reference_count = max(count // 50, 100)
    per_call_count = max(count // 200, 25)

    namespaces = make_namespaces(count)
    expressions = [compile_expression(source, SYMBOLS) for source, _ in CONDITIONS]
    lambdas = [function for _, function in CONDITIONS]
    programs = [ReferenceProgram(source) for source, _ in CONDITIONS]
    sources = [source for source, _ in CONDITIONS]

    disagreements = sum(
        expression.test(ns)[0] != bool(function(ns))
        or bool(program.evaluate(ns)) != expression.test(ns)[0]
        for expression, function, program in zip(expressions, lambdas, programs, strict=True)
        for ns in namespaces[:reference_count]
    )
    hits = sum(expression.test(ns)[0] for expression in expressions for ns in namespaces)

    evaluations = len(CONDITIONS) * count
    fast = time_evaluators(
        [lambdas, [e.test for e in expressions], [e.evaluate for e in expressions]],
        namespaces,
        repeats,
    )
    (reference,) = time_evaluators(
        [[p.evaluate for p in programs]], namespaces[:reference_count], 1
    )
    per_call = [functools.partial(reference_evaluate, source) for source in sources]
    (parse_per_call,) = time_evaluators([per_call], namespaces[:per_call_count], 1)
    baseline = fast[0]
    rows: list[tuple[str, float, int]] = [
        ("hand-written lambdas (baseline)", fast[0], count),
        ("compiled Expression.test", fast[1], count),
        ("compiled Expression.evaluate", fast[2], count),
        (f"simpleeval, pre-parsed ({reference_count:,} ns)", reference, reference_count),
        (f"simpleeval, parse per call ({per_call_count:,} ns)", parse_per_call, per_call_count),
    ]

    print(
        f"conditions: {len(CONDITIONS)} conditions x {count:,} namespaces = "
        f"{evaluations:,} evaluations (best of {repeats}); {hits / evaluations:.0%} true"
    )
    print(
        f"python {sys.version.split()[0]}; disagreements with lambdas/simpleeval: {disagreements}"
    )
    print(f"{'evaluator':<42}{'total s':>10}{'evals/s':>14}{'per eval':>11}{'vs lambdas':>12}")
    baseline_per_eval = baseline / evaluations
    for name, seconds, namespaces_used in rows:
        evals = len(CONDITIONS) * namespaces_used
        per_eval = seconds / evals
        # Totals measured on fewer namespaces are scaled up to the full run.
        total = per_eval * evaluations
        print(
            f"{name:<42}{total:>10.3f}{1 / per_eval:>14,.0f}{per_eval * 1e9:>9.0f}ns"
            f"{per_eval / baseline_per_eval:>11.2f}x"
        )
    return 0 if disagreements == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
