"""Hypothesis strategies: expressions from the language's grammar, and namespaces to run them on.

Every sub-expression is parenthesised, so the generated text never depends on precedence.
Names and keys come from the test symbols (so the checker accepts them), while property keys
are drawn from a pool of which any namespace holds only some: reads of missing properties,
``None`` operands and type mismatches are frequent on purpose.
"""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

PROP_KEYS = ["score", "difficulty", "n", "s", "items", "get", "keys", "flag", "nested", "my-key"]
NESTED_KEYS = ["score", "level", "n"]
EVENT_TYPES = ["lesson_completed", "quiz_passed", "module_finished", "items", "get"]
BADGES = ["first_lesson", "week_warrior", "scholar"]

# -- expressions ------------------------------------------------------------------------------


def _prop_reads() -> st.SearchStrategy[str]:
    def spell(root: str, key: str) -> str:
        return f"{root}.{key}" if key.isidentifier() else f'{root}["{key}"]'

    keys = st.sampled_from(PROP_KEYS)
    nested = st.sampled_from(NESTED_KEYS)
    return st.one_of(
        keys.map(lambda key: spell("props", key)),
        keys.map(lambda key: spell("event.properties", key)),
        nested.map(lambda key: f"props.nested.{key}"),
        nested.map(lambda key: f'props["nested"]["{key}"]'),
        keys.map(lambda key: f"props.s.{key}" if key.isidentifier() else "props.s.x"),
    )


STATE_READS = st.sampled_from(
    [
        "coins",
        "stage",
        "audience",
        "badges",
        "props",
        "event",
        "tokens",
        "counters",
        "event.type",
        "event.audience",
        "event.user_id",
        "event.occurred_at",
        "event.properties",
        "tokens.xp",
        'tokens["gems"]',
        "skills.pronunciation.value",
        "skills.grammar.level",
        "skills.grammar",
        "streaks.daily_lesson.count",
        "streaks.daily_lesson.best",
        "counters.lesson_completed",
        "counters.items",
        "counters.get",
        'counters["quiz_passed"]',
    ]
)

LITERALS = st.one_of(
    st.sampled_from(
        [
            "0",
            "1",
            "2",
            "3",
            "-1",
            "10",
            "1000",
            "1001",
            "50001",
            "100000",
            "10000000",
            "0.5",
            "0.57",
            "100.0",
            "-0.0",
            "2.5",
            "1e308",
            "1e999",
            "True",
            "False",
            "None",
            '""',
            '"a"',
            '"ab"',
            '"speaking"',
            '"first_lesson"',
            '"lesson_completed"',
            "[1, 2, 3]",
            '["a", None, 2.5]',
            "[]",
            "(1, 2)",
            "()",
            "{1, 2}",
            '{"first_lesson", "scholar"}',
        ]
    ),
    st.integers(min_value=-(10**6), max_value=10**6).map(str),
)

STATE_FUNCTIONS = st.sampled_from(
    [
        'event_count("quiz_passed")',
        "event_count(module_finished)",
        "event_count(items)",
        'has_badge("first_lesson")',
        'has_badge("scholar")',
        'skill_level("grammar")',
        'token("gems")',
        'streak("daily_lesson")',
    ]
)

LEAVES = st.one_of(LITERALS, STATE_READS, _prop_reads(), STATE_FUNCTIONS)

BINARY = ["+", "-", "*", "/", "//", "%", "**"]
COMPARISONS = ["==", "!=", "<", "<=", ">", ">=", "in", "not in"]


def _extend(children: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    def wrap(text: str) -> str:
        return f"({text})"

    pairs = st.tuples(children, children)
    chain = st.tuples(
        children,
        st.lists(st.tuples(st.sampled_from(COMPARISONS), children), min_size=1, max_size=3),
    )
    dynamic = st.sampled_from(["event_count", "has_badge", "skill_level", "token", "streak"])
    return st.one_of(
        st.tuples(children, st.sampled_from(BINARY), children).map(
            lambda t: f"{wrap(t[0])} {t[1]} {wrap(t[2])}"
        ),
        chain.map(lambda t: wrap(t[0]) + "".join(f" {op} {wrap(x)}" for op, x in t[1])),
        st.tuples(children, st.sampled_from(["and", "or"]), children).map(
            lambda t: f"{wrap(t[0])} {t[1]} {wrap(t[2])}"
        ),
        children.map(lambda x: f"not {wrap(x)}"),
        children.map(lambda x: f"-{wrap(x)}"),
        children.map(lambda x: f"+{wrap(x)}"),
        children.map(lambda x: f"{wrap(x)} is None"),
        children.map(lambda x: f"{wrap(x)} is not None"),
        st.tuples(children, children, children).map(
            lambda t: f"{wrap(t[0])} if {wrap(t[1])} else {wrap(t[2])}"
        ),
        st.tuples(dynamic, children).map(lambda t: f"{t[0]}({t[1]})"),
        st.tuples(st.sampled_from(["min", "max"]), st.lists(children, min_size=1, max_size=3)).map(
            lambda t: f"{t[0]}({', '.join(t[1])})"
        ),
        st.tuples(st.sampled_from(["abs", "round", "len"]), children).map(
            lambda t: f"{t[0]}({t[1]})"
        ),
        pairs.map(lambda t: f"round({t[0]}, {t[1]})"),
    )


EXPRESSIONS: st.SearchStrategy[str] = st.recursive(LEAVES, _extend, max_leaves=12)

# -- namespaces -------------------------------------------------------------------------------

SCALARS: st.SearchStrategy[Any] = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**6), max_value=10**6),
    st.sampled_from([0, 1, 2, 1000, 1001, 2**70, -(10**30), 10**300]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.57, 0.9, 0.92, 1e308, -0.0, 100.0]),
    st.text(max_size=4),
    st.sampled_from(["speaking", "first_lesson", "quiz_passed", "a" * 50_001, "score"]),
)
JSON_VALUES: st.SearchStrategy[Any] = st.one_of(
    SCALARS,
    st.lists(SCALARS, max_size=4),
    st.sampled_from([[0] * 50_001, ["first_lesson", "scholar"]]),
)


@st.composite
def namespaces(draw: st.DrawFn) -> dict[str, Any]:
    """A namespace as the engine builds it, with a random subset of properties."""
    props: dict[str, Any] = draw(
        st.dictionaries(st.sampled_from(PROP_KEYS), JSON_VALUES, max_size=len(PROP_KEYS))
    )
    if draw(st.booleans()):
        props["nested"] = draw(
            st.dictionaries(st.sampled_from(NESTED_KEYS), SCALARS, max_size=len(NESTED_KEYS))
        )
    counters = draw(
        st.dictionaries(st.sampled_from(EVENT_TYPES), st.integers(min_value=0, max_value=50))
    )
    event_type = draw(st.sampled_from(EVENT_TYPES))
    return {
        "event": {
            "type": event_type,
            "audience": "student",
            "user_id": "user_1",
            "occurred_at": "2026-03-02T12:00:00Z",
            "properties": props,
        },
        "props": props,
        "coins": draw(st.integers(min_value=0, max_value=10**9)),
        "tokens": {
            "xp": draw(st.integers(min_value=0, max_value=5000)),
            "gems": draw(st.integers(min_value=0, max_value=50)),
        },
        "skills": {
            name: {"value": value, "level": value // 20}
            for name in ("pronunciation", "grammar")
            for value in [draw(st.integers(min_value=0, max_value=100))]
        },
        "badges": frozenset(draw(st.sets(st.sampled_from(BADGES)))),
        "streaks": {
            "daily_lesson": {
                "count": draw(st.integers(min_value=0, max_value=40)),
                "best": draw(st.integers(min_value=0, max_value=40)),
            }
        },
        "counters": counters,
        "stage": draw(st.integers(min_value=1, max_value=5)),
        "audience": "student",
    }
