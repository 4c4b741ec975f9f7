"""Example tests of the condition language: what a rulebook author sees."""

from __future__ import annotations

import copy
import math
import pickle
import threading
from typing import Any

import pytest
import simpleeval

from buddyrules.conditions import (
    EvalFailure,
    Expression,
    ExpressionError,
    Symbols,
    compile_expression,
    reference_evaluate,
)

from .support import SYMBOLS, make_ns


def value_of(source: str, ns: dict[str, Any] | None = None) -> Any:
    """Compile with the test symbols and evaluate on ``ns`` (default: make_ns())."""
    return compile_expression(source, SYMBOLS).evaluate(make_ns() if ns is None else ns)


def rejection(source: str, symbols: Symbols = SYMBOLS, kind: str = "condition") -> ExpressionError:
    with pytest.raises(ExpressionError) as caught:
        compile_expression(source, symbols, kind=kind)  # type: ignore[arg-type]
    return caught.value


# -- names ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("event.type", "lesson_completed"),
        ("event.audience", "student"),
        ("event.user_id", "user_42"),
        ("event.occurred_at", "2026-03-02T12:00:00Z"),
        ("event.properties.score", 0.92),
        ('event.properties["my-key"]', "dashed"),
        ("props.score", 0.92),
        ('props["my-key"]', "dashed"),
        ("props.lesson.level", "advanced"),
        ('props["lesson"]["minutes"]', 12),
        ("coins", 120),
        ("tokens.xp", 600),
        ('tokens["gems"]', 3),
        ("skills.pronunciation.value", 45),
        ("skills.pronunciation.level", 2),
        ("streaks.daily_lesson.count", 8),
        ("streaks.daily_lesson.best", 12),
        ("counters.lesson_completed", 12),
        ('counters["quiz_passed"]', 4),
        ("counters.module_finished", 0),  # registered but never seen: reads 0
        ("stage", 2),
        ("audience", "student"),
        ("badges", frozenset({"first_lesson"})),
        ('"first_lesson" in badges', True),
        ('"scholar" not in badges', True),
    ],
)
def test_every_name_reads_the_namespace(source: str, expected: Any) -> None:
    assert value_of(source) == expected


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ('event_count("quiz_passed")', 4),
        ("event_count(quiz_passed)", 4),  # a bare name is the event type
        ("event_count(module_finished)", 0),
        ("event_count(props.which_type)", 12),  # a computed type
        ('event_count(props.name + "_x")', 0),  # unknown at run time: 0
        ('has_badge("first_lesson")', True),
        ('has_badge("scholar")', False),
        ("has_badge(props.which_badge)", True),
        ('has_badge("no_such_" + "badge")', False),
        ('skill_level("pronunciation")', 2),
        ("skill_level(props.name)", 0),
        ('token("xp")', 600),
        ("token(props.name)", 0),
        ('streak("daily_lesson")', 8),
        ("streak(props.name)", 0),
        ("min(coins, 5, 7)", 5),
        ("max(props.items)", 3),
        ("abs(-3)", 3),
        ("round(2.567, 2)", 2.57),
        ("round(2.5)", 2),
        ("len(props.items)", 3),
        ("len(badges)", 1),
    ],
)
def test_every_function(source: str, expected: Any) -> None:
    result = value_of(source)
    assert result == expected
    assert type(result) is type(expected)


def test_the_readme_conditions() -> None:
    ns = make_ns()
    assert value_of("props.score >= 0.9 and event_count(lesson_completed) >= 10", ns) is True
    assert value_of('"first_lesson" in badges or streaks.daily_lesson.count >= 7', ns) is True
    assert value_of("coins * 2 + tokens.xp > 500", ns) is True
    assert value_of('props.difficulty == "speaking" and props.score > 0.5', ns) is True
    assert value_of('tokens.xp >= 500 and has_badge("week_warrior")', ns) is False


def test_syntax_covers_comparisons_chains_and_conditionals() -> None:
    assert value_of("1 < coins <= 120 < 1000") is True
    assert value_of("1 < coins < 100") is False
    assert value_of('"big" if coins > 100 else "small"') == "big"
    assert value_of("props.nothing is None and props.flag is True") is True
    assert value_of("props.score is not None") is True
    assert value_of('event.type in ["lesson_completed", "quiz_passed"]') is True
    assert value_of("stage in (1, 3)") is False
    assert value_of("stage not in {1, 3}") is True
    assert value_of("not props.flag or coins") == 120  # `or` returns the operand, as Python
    assert value_of("-coins + +stage") == -118
    assert value_of("7 // 2 + 7 % 2 + 2 ** 3 + 7 / 2") == 3 + 1 + 8 + 3.5


def test_dot_access_on_a_mapping_always_reads_a_key() -> None:
    ns = make_ns()
    assert value_of("counters.items", ns) == 2
    assert value_of("props.get", ns) == 7
    assert value_of("props.keys", ns) == "k"
    assert value_of("props.items", ns) == [1, 2, 3]
    assert value_of("props.format", ns) == "f"
    assert value_of("counters.get", ns) == 0  # the 'get' event type, never seen
    missing = value_of("props.values", ns)
    assert isinstance(missing, EvalFailure)
    assert missing.reason == "missing property 'values'"


def test_dot_access_on_a_non_mapping_fails_instead_of_reaching_a_method() -> None:
    for source in ("props.name.upper", "props.items.append", "props.score.real"):
        result = value_of(source)
        assert isinstance(result, EvalFailure), source
    assert value_of("props.name.upper").reason == "cannot read a field of a string"
    assert value_of("props.nothing.x").reason == "cannot read a field of None"


def test_numbers_follow_python_arithmetic() -> None:
    assert value_of("0.57 * 100 >= 57") is False
    assert value_of("0.1 + 0.2") == 0.1 + 0.2
    assert value_of("7 / 2") == 3.5
    assert value_of("-7 // 2") == -4


# -- run-time failures ------------------------------------------------------------------------


def test_a_missing_property_makes_the_condition_false_with_a_reason() -> None:
    expression = compile_expression("props.score >= 0.9", SYMBOLS)
    assert expression.test(make_ns(props={})) == (False, "missing property 'score'")
    assert expression.evaluate(make_ns(props={})) == EvalFailure("missing property 'score'")
    assert expression.test(make_ns()) == (True, None)


def test_none_operands_and_type_mismatches_are_false() -> None:
    ns = make_ns()
    for source in (
        "props.nothing > 1",
        "props.nothing + 1",
        "props.name < 3",
        "props.name - 1",
        "-props.name",
        "len(coins)",
        "abs(props.name)",
        "props.items > 1",
        "max(props.lesson, 1)",
    ):
        passed, reason = compile_expression(source, SYMBOLS).test(ns)
        assert passed is False, source
        assert reason is not None and reason.startswith("type mismatch"), (source, reason)
    reason = compile_expression("props.name < 3", SYMBOLS).test(ns)[1]
    assert reason == "type mismatch: '<' not supported between 'str' and 'int'"


def test_equality_with_none_is_not_a_failure() -> None:
    assert value_of("props.nothing == None") is True
    assert value_of("props.score != None") is True


def test_division_by_zero_fails() -> None:
    assert value_of("coins / 0") == EvalFailure("division by zero")
    assert value_of("coins % 0") == EvalFailure("division by zero")
    assert value_of("coins // (stage - 2)") == EvalFailure("division by zero")


def test_short_circuit_skips_failing_operands() -> None:
    assert value_of("True or props.missing") is True
    assert value_of("coins < 0 and props.missing") is False
    assert value_of("1 > 2 > props.missing") is False
    assert value_of("props.score if True else props.missing") == 0.92
    assert isinstance(value_of("props.missing or True"), EvalFailure)


@pytest.mark.parametrize(
    ("source", "reason"),
    [
        ("2 ** 1001", "exponent above 1000"),
        ("2 ** -1001", "exponent above 1000"),
        ("1001 ** 2", "base of ** above 1000"),  # simpleeval's safe_power limits the base too
        ("coins ** 1001", "exponent above 1000"),
        ('"a" * 100001', "string or sequence of 100001 items is longer than 100000"),
        ("[1, 2] * 50001", "string or sequence of 100002 items is longer than 100000"),
        ("props.name * 40000 + props.name * 40000", "longer than 100000"),
        ("round(5, -1001)", "round() digits above 1000"),
        ('"%d" % coins', "string formatting with % is not supported"),
        (
            "(1000 ** 1000) * (1000 ** 1000) * (1000 ** 1000) * (1000 ** 1000) * (1000 ** 1000) * "
            "(1000 ** 1000) * (1000 ** 1000) * (1000 ** 1000) * (1000 ** 1000) * (1000 ** 1000) * "
            "(1000 ** 1000)",
            "integer wider than 100000 bits",
        ),
    ],
)
def test_limits_fail_the_evaluation(source: str, reason: str) -> None:
    result = value_of(source)
    assert isinstance(result, EvalFailure)
    assert reason in result.reason
    assert isinstance(reference_evaluate(source, make_ns()), EvalFailure)


def test_values_up_to_the_limits_are_fine() -> None:
    assert value_of("2 ** 1000") == 2**1000
    assert value_of("(-1000) ** -1000") == (-1000) ** -1000
    assert value_of('len("a" * 100000)') == 100000
    assert value_of('len("ab" * 25000 + "ab" * 25000)') == 100000
    assert value_of("round(5.5, 1000)") == 5.5


def test_evaluate_never_raises_on_a_broken_namespace() -> None:
    expression = compile_expression(
        'props.score > 1 or coins * 2 > 3 or event_count(props.t) or has_badge("scholar")',
        SYMBOLS,
    )
    broken: list[dict[str, Any]] = [
        {},
        {"props": None},
        {"props": {"score": 0}, "coins": None},
        {"props": []},
    ]
    for ns in broken:
        assert isinstance(expression.evaluate(ns), EvalFailure)
        assert expression.test(ns)[0] is False


def test_test_agrees_with_evaluate() -> None:
    ns = make_ns()
    for source in ("coins", "0", '""', "props.items", "props.missing", "props.nothing"):
        expression = compile_expression(source, SYMBOLS)
        value = expression.evaluate(ns)
        failed = isinstance(value, EvalFailure)
        expected = (False, value.reason) if failed else (bool(value), None)
        assert expression.test(ns) == expected, source


def test_eval_failure_is_falsy() -> None:
    assert not EvalFailure("x")
    assert bool(EvalFailure("x")) is False


# -- amounts ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("10", (10, None)),
        ("props.score * 10", (9, None)),
        ("props.lesson.minutes // 5", (2, None)),
        ("2.999", (2, None)),
        ("-0.0 + 0", (0, None)),
        ("coins - 123", (0, "negative amount -3")),
        ("-0.5", (0, "negative amount -0.5")),
        ("props.flag", (0, "amount is not a number: True")),
        ("props.nothing", (0, "amount is not a number: None")),
        ("props.name", (0, "amount is not a number: 'Ada'")),
        ("props.items", (0, "amount is not a number: [1, 2, 3]")),
        ("props.missing * 2", (0, "missing property 'missing'")),
        ("1e999 - 1e999", (0, "amount is not a number: nan")),
        ("1e999", (0, "amount is infinite: inf")),
        ("max(coins, 3) + 0.5", (120, None)),
    ],
)
def test_amounts_are_floored_and_never_negative(source: str, expected: tuple[int, Any]) -> None:
    amount = compile_expression(source, SYMBOLS, kind="amount").amount(make_ns())
    assert amount == expected
    assert type(amount[0]) is int


@pytest.mark.parametrize(
    "source", ["coins > 3", '"ten"', "None", "[1, 2]", "not coins", 'has_badge("scholar")']
)
def test_amounts_that_can_never_be_numbers_are_rejected_at_load(source: str) -> None:
    error = rejection(source, kind="amount")
    assert error.message.startswith("an amount must be a number")
    assert compile_expression(source, SYMBOLS).kind == "condition"  # fine as a condition


def test_kind_is_validated() -> None:
    with pytest.raises(ValueError, match="kind"):
        compile_expression("1", SYMBOLS, kind="weight")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="Symbols"):
        compile_expression("1", {"tokens": set()})  # type: ignore[arg-type]


# -- reads and traces -------------------------------------------------------------------------


def test_reads_lists_paths_in_source_order_without_repeats() -> None:
    expression = compile_expression(
        "props.score >= 0.9 and streaks.daily_lesson.count >= 7 and "
        'counters.lesson_completed > 0 and "first_lesson" in badges and coins > 0 and '
        "props.score < 2",
        SYMBOLS,
    )
    assert expression.reads == (
        "props.score",
        "streaks.daily_lesson.count",
        "counters.lesson_completed",
        "badges",
        "coins",
    )


def test_reads_of_functions_and_spellings() -> None:
    expression = compile_expression(
        'event.properties.score if event_count(quiz_passed) else props["my-key"] or '
        'token("gems") + skill_level("grammar") + streak("daily_lesson") + '
        "event_count(props.which_type) + has_badge(props.which_badge) + stage",
        SYMBOLS,
    )
    assert expression.reads == (
        "props.score",
        "counters.quiz_passed",
        'props["my-key"]',
        "tokens.gems",
        "skills.grammar.level",
        "streaks.daily_lesson.count",
        "counters",
        "props.which_type",
        "badges",
        "props.which_badge",
        "stage",
    )


def test_read_values_for_explain_traces() -> None:
    expression = compile_expression(
        "props.score > 1 or props.lesson.level or props.gone.deeper or counters.module_finished "
        "or badges or props.name.first",
        SYMBOLS,
    )
    ns = make_ns(badges={"week_warrior", "first_lesson"})
    assert expression.read_values(ns) == {
        "props.score": 0.92,
        "props.lesson.level": "advanced",
        "props.gone.deeper": "<missing>",
        "counters.module_finished": 0,
        "badges": ["first_lesson", "week_warrior"],
        "props.name.first": "<missing>",
    }


# -- the compile-time checks, with their columns ----------------------------------------------


@pytest.mark.parametrize(
    ("source", "message", "column"),
    [
        ("props.score >=", "syntax error", 15),
        ("(coins > 1", "syntax error: '(' was never closed", 1),
        ("foo > 1", "unknown name 'foo'", 1),
        ("coins > 1 and bar", "unknown name 'bar'", 15),
        ("ns", "unknown name 'ns'", 1),
        ("_evaluate", "unknown name '_evaluate'", 1),
        ("tokens.gemz > 1", "unknown token 'gemz'", 8),
        ('tokens["gemz"]', "unknown token 'gemz'", 8),
        ("skills.singing.level", "unknown skill 'singing'", 8),
        ("skills.pronunciation.foo", "a skill has .value and .level, not 'foo'", 22),
        ("skills.pronunciation", None, None),
        ("streaks.weekly.count", "unknown streak 'weekly'", 9),
        ("streaks.daily_lesson.total", "a streak has .count and .best, not 'total'", 22),
        ("counters.nope", "unknown event type 'nope'", 10),
        ('event_count("nope")', "unknown event type 'nope'", 13),
        ("event_count(nope)", "unknown event type 'nope'", 13),
        ("event_count(stage)", "unknown event type 'stage'", 13),
        ('has_badge("nope")', "unknown badge 'nope'", 11),
        ('coins > 1 and "nope" in badges', "unknown badge 'nope'", 15),
        ('skill_level("x")', "unknown skill 'x'", 13),
        ('token("x")', "unknown token 'x'", 7),
        ('streak("x")', "unknown streak 'x'", 8),
        ("event.foo", "unknown event field 'foo'", 7),
        ("badges.first_lesson", "badges is a set of badge keys", 8),
        ('badges["x"]', "badges is a set of badge keys", 8),
        ("coins.x", "coins is a number and has no field 'x'", 7),
        ("audience.x", "audience is a string and has no field 'x'", 10),
        ("tokens.xp.x", "tokens.xp is a number and has no field 'x'", 11),
        ("frobnicate(1)", "unknown function 'frobnicate'", 1),
        ("coins(1)", "'coins' is not a function", 1),
        ("min", "'min' is a function", 1),
        ("min(1, key=2)", "keyword arguments are not allowed", 8),
        ("event_count()", "event_count() takes exactly 1 argument (0 given)", 1),
        ("abs(1, 2)", "abs() takes exactly 1 argument (2 given)", 1),
        ("round(1, 2, 3)", "round() takes 1 or 2 arguments (3 given)", 1),
        ("max()", "max() takes at least 1 argument (0 given)", 1),
        ("x = 1", "assignment is not allowed", 1),
        ("coins += 1", "assignment is not allowed", 1),
        ("import os", "import is not allowed", 1),
        ("coins\nstage", "only one expression is allowed", 1),
        ("(x := 1)", "assignment (:=) is not allowed", 2),
        ("lambda: 1", "lambda is not allowed", 1),
        ("[x for x in props]", "comprehensions are not allowed", 1),
        ("coins > 1 and f'{props}'", "f-strings are not allowed", 15),
        ("min(*props.items)", "* unpacking is not allowed", 5),
        ("[*props.items]", "* unpacking is not allowed", 2),
        ("props.items[0:2]", "slices are not supported", 13),
        ("props.items[0]", "subscript keys must be string literals", 13),
        ("props[props.name]", "subscript keys must be string literals", 7),
        ('{"a": 1}', "dict literals are not supported", 1),
        ("coins in [props.score]", "items must be literals", 11),
        ("(props.lesson or props.x).level", "may only follow a name", 27),
        ('"abc"["a"]', "may only follow a name", 7),
        ("props.__class__", "attributes starting with '_' are not allowed", 7),
        ("props._private", "attributes starting with '_' are not allowed", 7),
        ('props["_private"]', None, None),  # a key, not an attribute: fine
        ('"abc".upper()', "methods cannot be called", 7),
        ("props.name.upper()", "methods cannot be called", 12),
        ("coins & 1", "operator '&' is not supported", 7),
        ("coins << 1", "operator '<<' is not supported", 7),
        ("~coins", "operator '~' is not supported", 1),
        ("coins is 1", "'is' may only compare with None, True or False", 10),
        ("1j", "complex numbers are not supported", 1),
        ('b"x"', "bytes literals are not supported", 1),
        ("...", "Ellipsis is not allowed", 1),
        ("", "empty expression", 1),
        ("   ", "empty expression", 1),
        ("  foo", "unknown name 'foo'", 3),
        ('props.name == "\u00e9\u00e9" and foo', "unknown name 'foo'", 24),
        ("(1" + " + 1" * 64 + ")", "nested deeper than 64", 2),
    ],
)
def test_compile_time_rejections_name_the_column(
    source: str, message: str | None, column: int | None
) -> None:
    if message is None:
        compile_expression(source, SYMBOLS)
        return
    error = rejection(source)
    assert message in error.message
    assert error.column == column
    if error.line == 1:
        assert str(error) == f"{error.message} (at column {column})"


def test_limits_on_size_and_nesting() -> None:
    assert rejection("1" * 4001).message.endswith("the limit is 4000")
    assert rejection("1" * 4001).column == 4001
    compile_expression("1" + " " * 3999, SYMBOLS)
    error = rejection("(" * 65 + "1" + ")" * 65)
    assert error.message == "brackets nested deeper than 64 levels"
    assert error.column == 65
    compile_expression("(" * 64 + "1" + ")" * 64, SYMBOLS)
    error = rejection("not " * 65 + "coins")
    assert error.message == "more than 64 prefix operators in a row"
    assert error.column == 4 * 64 + 1
    compile_expression("not " * 63 + "coins", SYMBOLS)
    assert "nested deeper than 64" in rejection("1" + "+1" * 64).message
    compile_expression("1" + "+1" * 63, SYMBOLS)


def test_errors_on_later_lines_give_the_line() -> None:
    error = rejection("(coins >\n  foo)")
    assert (error.line, error.column) == (2, 3)
    assert str(error) == "unknown name 'foo' (at line 2, column 3)"
    assert compile_expression("(coins >\n  1)", SYMBOLS).evaluate(make_ns()) is True


def test_symbols_are_optional_per_kind_and_normalised() -> None:
    symbols = Symbols(tokens=["xp"], event_types=("a",))
    assert symbols.tokens == frozenset({"xp"})
    assert hash(symbols) == hash(Symbols(tokens=frozenset({"xp"}), event_types=frozenset({"a"})))
    with pytest.raises(TypeError):
        Symbols(tokens="xp")
    assert rejection("counters.lesson_completed", Symbols()).message == (
        "unknown event type 'lesson_completed'"
    )
    assert compile_expression("props.x > 1 and coins > 0", Symbols()).source


# -- the Expression object --------------------------------------------------------------------


def test_expression_is_an_immutable_value() -> None:
    expression = compile_expression("coins > 1", SYMBOLS)
    assert isinstance(expression, Expression)
    assert expression.source == "coins > 1"
    assert expression.kind == "condition"
    assert repr(expression) == "Expression('coins > 1', kind='condition')"
    assert expression == compile_expression("coins > 1", Symbols())
    assert compile_expression("coins", SYMBOLS) != compile_expression(
        "coins", SYMBOLS, kind="amount"
    )
    assert hash(expression) == hash(compile_expression("coins > 1", SYMBOLS))
    with pytest.raises(AttributeError):
        expression.source = "coins > 2"


def test_expression_pickles_and_copies() -> None:
    expression = compile_expression(
        'skill_level("grammar") + streak("daily_lesson") * props.score', SYMBOLS, kind="amount"
    )
    for clone in (pickle.loads(pickle.dumps(expression)), copy.deepcopy(expression)):
        assert clone == expression
        assert clone.kind == "amount"
        assert clone.reads == expression.reads
        assert clone.amount(make_ns()) == (7, None)


def test_expression_is_safe_to_share_between_threads() -> None:
    expression = compile_expression("props.score * coins", SYMBOLS)
    results: list[Any] = []

    def work(score: float) -> None:
        for _ in range(2000):
            results.append(expression.evaluate(make_ns(props={"score": score})) == score * 120)

    threads = [threading.Thread(target=work, args=(score,)) for score in (0.1, 0.2, 0.3, 0.4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(results) and len(results) == 8000


def test_reference_evaluate_matches_on_examples_and_reports_invalid_expressions() -> None:
    ns = make_ns()
    for source in ("props.score >= 0.9", "counters.items", "event_count(module_finished)"):
        assert reference_evaluate(source, ns) == value_of(source, ns)
    failure = reference_evaluate("props.__class__", ns)
    assert isinstance(failure, EvalFailure)
    assert failure.reason.startswith("invalid expression: attributes starting with '_'")
    assert math.isnan(reference_evaluate("1e999 - 1e999", ns))


def test_the_reference_leaves_simpleeval_globals_alone() -> None:
    before = (
        simpleeval.MAX_POWER,
        simpleeval.MAX_STRING_LENGTH,
        dict(simpleeval.DEFAULT_OPERATORS),
    )
    assert isinstance(reference_evaluate("2 ** 1001", make_ns()), EvalFailure)
    assert reference_evaluate("2 ** 1000", make_ns()) == 2**1000
    after = (simpleeval.MAX_POWER, simpleeval.MAX_STRING_LENGTH, dict(simpleeval.DEFAULT_OPERATORS))
    assert before == after
    assert simpleeval.simple_eval("2 ** 1001") == 2**1001  # plain simpleeval is unaffected
