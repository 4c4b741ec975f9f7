"""Loading rulebooks from YAML, JSON, TOML or a mapping, and the JSON Schema of the format."""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

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
        raise RulebookError(problems) from None
    return compile_rulebook(spec)


def rulebook_json_schema() -> dict[str, Any]:
    """The JSON Schema of the rulebook file format (for editors' autocompletion)."""
    schema = RulebookSpec.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "buddyrules rulebook"
    return schema
