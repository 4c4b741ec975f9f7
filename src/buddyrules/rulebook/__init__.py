"""Rulebooks: the file format, loading, compiling and linting."""

from buddyrules.rulebook.compiled import Rulebook, compile_rulebook
from buddyrules.rulebook.lint import LintFinding, lint_rulebook
from buddyrules.rulebook.load import load_rulebook, parse_rulebook_file, rulebook_json_schema
from buddyrules.rulebook.schema import RulebookSpec

__all__ = [
    "LintFinding",
    "Rulebook",
    "RulebookSpec",
    "compile_rulebook",
    "lint_rulebook",
    "load_rulebook",
    "parse_rulebook_file",
    "rulebook_json_schema",
]
