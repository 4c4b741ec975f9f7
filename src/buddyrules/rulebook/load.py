"""Loading rulebooks from YAML, JSON, TOML or a mapping, and the JSON Schema of the format."""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from buddyrules.conditions import ExpressionError, Symbols, compile_expression
from buddyrules.errors import ResourceNotFound, RulebookError
from buddyrules.rulebook.compiled import Rulebook, compile_rulebook
from buddyrules.rulebook.schema import RulebookSpec

__all__ = ["load_rulebook", "parse_rulebook_file", "rulebook_json_schema"]

_SUFFIXES = {".yaml": "yaml", ".yml": "yaml", ".json": "json", ".toml": "toml"}


def parse_rulebook_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a rulebook file into a plain mapping (no validation yet).

    Raises :class:`ResourceNotFound` for a missing file and :class:`RulebookError` for an
    unknown extension or a syntax error (with line and column where the parser gives them).
    """
    file = Path(path)
    kind = _SUFFIXES.get(file.suffix.lower())
    if kind is None:
        raise RulebookError(
            [
                {
                    "path": "",
                    "message": f"{file}: unknown rulebook extension {file.suffix!r} "
                    "(use .yaml, .yml, .json or .toml)",
                    "column": None,
                }
            ]
        )
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ResourceNotFound(f"rulebook file not found: {file}", {"path": str(file)}) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise RulebookError(
            [{"path": "", "message": f"{file}: cannot read: {exc}", "column": None}]
        ) from exc
    try:
        if kind == "yaml":
            data = yaml.safe_load(text)
        elif kind == "json":
            data = json.loads(text)
        else:
            data = tomllib.loads(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        column = mark.column + 1 if mark is not None else None
        raise RulebookError(
            [
                {
                    "path": "",
                    "message": f"{file}: YAML syntax error at line {line}: "
                    f"{getattr(exc, 'problem', None) or exc}",
                    "column": column,
                    "line": line,
                }
            ]
        ) from exc
    except json.JSONDecodeError as exc:
        raise RulebookError(
            [
                {
                    "path": "",
                    "message": f"{file}: JSON syntax error at line {exc.lineno}: {exc.msg}",
                    "column": exc.colno,
                    "line": exc.lineno,
                }
            ]
        ) from exc
    except tomllib.TOMLDecodeError as exc:
        raise RulebookError(
            [{"path": "", "message": f"{file}: TOML syntax error: {exc}", "column": None}]
        ) from exc
    if not isinstance(data, dict):
        raise RulebookError(
            [{"path": "", "message": f"{file}: a rulebook must be a mapping", "column": None}]
        )
    return data


def _loc_to_path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in _UNION_TAGS or part.startswith(("function-", "constrained-")):
            # pydantic names the union member it tried; the author only needs the field.
            continue
        else:
            out += f".{part}" if out else part
    return out


_UNION_TAGS = frozenset({"int", "str", "float", "bool", "[key]"})


def load_rulebook(source: str | os.PathLike[str] | Mapping[str, Any] | Rulebook) -> Rulebook:
    """Load, validate and compile a rulebook.

    ``source`` is a path to a ``.yaml``/``.yml``/``.json``/``.toml`` file, an already-parsed
    mapping, or a :class:`Rulebook` (returned as is). Raises :class:`RulebookError` listing
    every problem found, each with a path such as ``coin_rules[2].when`` and, for
    expressions, a column.
    """
    if isinstance(source, Rulebook):
        return source
    if isinstance(source, Mapping):
        data: Any = dict(source)
    elif isinstance(source, str | os.PathLike):
        data = parse_rulebook_file(source)
    else:
        raise RulebookError(
            [
                {
                    "path": "",
                    "message": f"cannot load a rulebook from {type(source).__name__}",
                    "column": None,
                }
            ]
        )
    try:
        spec = RulebookSpec.model_validate(data)
    except ValidationError as exc:
        problems: list[dict[str, Any]] = []
        seen: set[tuple[str, str]] = set()
        for err in exc.errors(include_url=False):
            path = _loc_to_path(tuple(err["loc"]))
            message = err["msg"]
            if err["type"] == "extra_forbidden":
                message = "unknown key (check for a typo)"
            if (path, message) in seen:
                continue
            seen.add((path, message))
            problems.append({"path": path, "message": message, "column": None})
        # Shape errors stop compilation; still check the expressions we can reach, so the
        # author sees every problem in one pass rather than one layer at a time.
        known = {p["path"] for p in problems}
        problems.extend(p for p in _expression_problems(data) if p["path"] not in known)
        raise RulebookError(problems) from None
    return compile_rulebook(spec)


def _keys(section: Any) -> frozenset[str]:
    if not isinstance(section, list):
        return frozenset()
    return frozenset(
        item["key"]
        for item in section
        if isinstance(item, dict) and isinstance(item.get("key"), str)
    )


def _expression_sites(data: dict[str, Any]) -> Iterator[tuple[str, Any, str]]:
    """Every (path, source, kind) where the format puts an expression."""

    def items(section: str) -> Iterator[tuple[int, dict[str, Any]]]:
        value = data.get(section)
        if isinstance(value, list):
            for i, item in enumerate(value):
                if isinstance(item, dict):
                    yield i, item

    for section in ("coin_rules", "skill_rules", "token_rules"):
        for i, rule in items(section):
            yield f"{section}[{i}].when", rule.get("when"), "condition"
            yield f"{section}[{i}].amount", rule.get("amount"), "amount"
            mults = rule.get("multiplier")
            if isinstance(mults, list):
                for j, m in enumerate(mults):
                    if isinstance(m, dict):
                        yield f"{section}[{i}].multiplier[{j}].when", m.get("when"), "condition"
    for i, badge in items("badges"):
        yield f"badges[{i}].when", badge.get("when"), "condition"
    evolution = data.get("evolution")
    if isinstance(evolution, dict) and isinstance(evolution.get("stages"), list):
        for i, stage in enumerate(evolution["stages"]):
            if isinstance(stage, dict):
                yield f"evolution.stages[{i}].when", stage.get("when"), "condition"
    for i, path in items("paths"):
        steps = path.get("steps")
        if not isinstance(steps, list):
            continue
        for j, step in enumerate(steps):
            if not isinstance(step, dict):
                continue
            base = f"paths[{i}].steps[{j}]"
            yield f"{base}.unlock_condition", step.get("unlock_condition"), "condition"
            yield f"{base}.completion_condition", step.get("completion_condition"), "condition"
            subs = step.get("sub_steps")
            if isinstance(subs, list):
                for k, sub in enumerate(subs):
                    if isinstance(sub, dict):
                        yield (
                            f"{base}.sub_steps[{k}].completion_condition",
                            sub.get("completion_condition"),
                            "condition",
                        )


def _expression_problems(data: Any) -> list[dict[str, Any]]:
    """Expression problems of a rulebook whose shape is invalid (best-effort symbols)."""
    if not isinstance(data, dict):
        return []
    types: set[str] = set()
    event_types = data.get("event_types")
    if isinstance(event_types, dict):
        for value in event_types.values():
            if isinstance(value, list):
                types.update(t for t in value if isinstance(t, str))
    symbols = Symbols(
        skills=_keys(data.get("skills")),
        tokens=_keys(data.get("tokens")),
        streaks=_keys(data.get("streaks")),
        badges=_keys(data.get("badges")),
        event_types=frozenset(types),
    )
    problems: list[dict[str, Any]] = []
    for path, source, kind in _expression_sites(data):
        if not isinstance(source, str) or not source:
            continue
        try:
            compile_expression(source, symbols, kind=kind)  # type: ignore[arg-type]
        except ExpressionError as exc:
            problems.append({"path": path, "message": exc.message, "column": exc.column})
    return problems


def rulebook_json_schema() -> dict[str, Any]:
    """The JSON Schema of the rulebook file format (for editors' autocompletion)."""
    schema = RulebookSpec.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "buddyrules rulebook"
    return schema
