"""From source text to a syntax tree, with every size limit checked before recursion can bite.

Order matters here: the length limit first, then a flat scan of the tokens for bracket and
prefix-operator nesting (so the parser never sees pathological nesting), then ``ast.parse``
with its recursion and memory errors turned into ExpressionError, then an iterative depth
check of the tree. Only after that may recursive code (the checker, ``compile``) touch it.
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
import warnings
from dataclasses import dataclass

from ._model import MAX_DEPTH, MAX_SOURCE_LENGTH, ExpressionError

__all__ = ["ParsedSource", "parse_source"]

_LINE_BREAK = re.compile(r"\r\n|\r|\n")
_OPEN = frozenset("([{")
_CLOSE = frozenset(")]}")
_PREFIX_OPERATORS = frozenset({"-", "+", "~"})
# After these keywords an operator is in prefix position (``x and -y``, ``if not y``).
_KEYWORDS_BEFORE_OPERAND = frozenset({"and", "or", "not", "if", "else", "in", "is", "lambda"})
_IGNORED_TOKENS = frozenset(
    {
        tokenize.NL,
        tokenize.NEWLINE,
        tokenize.COMMENT,
        tokenize.ENCODING,
        tokenize.INDENT,
        tokenize.DEDENT,
        tokenize.ENDMARKER,
    }
)
_STATEMENT_MESSAGES: dict[type[ast.stmt], str] = {
    ast.Assign: "assignment is not allowed (use == to compare)",
    ast.AugAssign: "assignment is not allowed",
    ast.AnnAssign: "assignment is not allowed",
    ast.Import: "import is not allowed",
    ast.ImportFrom: "import is not allowed",
}


class _Locator:
    """Maps positions in the parsed (left-stripped) text back to the user's source.

    ``ast`` reports columns as UTF-8 byte offsets; users count characters.
    """

    def __init__(self, source: str, stripped: str) -> None:
        prefix = source[: len(source) - len(stripped)]
        self._line_shift = prefix.count("\n")
        self._column_shift = len(prefix) - (prefix.rfind("\n") + 1)
        self._lines = _LINE_BREAK.split(stripped)

    def from_chars(self, line: int, column0: int) -> tuple[int, int]:
        """(line, 0-based character column) in the stripped text -> (line, 1-based column)."""
        line = max(line, 1)
        shift = self._column_shift if line == 1 else 0
        return line + self._line_shift, max(column0, 0) + 1 + shift

    def from_bytes(self, line: int, byte_column: int) -> tuple[int, int]:
        """(line, 0-based byte column) in the stripped text -> (line, 1-based column)."""
        text = self._lines[line - 1] if 0 < line <= len(self._lines) else ""
        head = text.encode("utf-8")[:byte_column].decode("utf-8", errors="ignore")
        return self.from_chars(line, len(head))

    def line_text(self, line: int) -> str:
        """The text of one line of the stripped source ('' when out of range)."""
        return self._lines[line - 1] if 0 < line <= len(self._lines) else ""

    def error_at(self, message: str, line: int, byte_column: int) -> ExpressionError:
        """An ExpressionError positioned at a byte offset of the stripped text."""
        user_line, column = self.from_bytes(line, byte_column)
        return ExpressionError(message, column, user_line)


@dataclass(frozen=True)
class ParsedSource:
    """A parsed expression whose size and depth are known to be within the limits."""

    source: str
    tree: ast.expr
    locator: _Locator

    def error(self, message: str, node: ast.AST) -> ExpressionError:
        """An ExpressionError at the start of ``node``."""
        return self.locator.error_at(
            message, getattr(node, "lineno", 1), getattr(node, "col_offset", 0)
        )

    def attribute_error(self, message: str, node: ast.Attribute) -> ExpressionError:
        """An ExpressionError at the attribute name of ``node`` (the ``x`` of ``a.x``)."""
        line = node.end_lineno or node.lineno
        end = node.end_col_offset if node.end_col_offset is not None else node.col_offset
        start = end - len(node.attr.encode("utf-8"))
        if line == node.lineno:
            start = max(start, node.col_offset)
        return self.locator.error_at(message, line, max(start, 0))

    def operator_error(self, message: str, left: ast.expr, symbol: str) -> ExpressionError:
        """An ExpressionError at the first ``symbol`` after ``left`` (an operator's column)."""
        line = left.end_lineno or left.lineno
        end = left.end_col_offset if left.end_col_offset is not None else left.col_offset
        raw = self.locator.line_text(line).encode("utf-8")
        found = raw.find(symbol.encode("utf-8"), end)
        return self.locator.error_at(message, line, found if found >= 0 else end)


def parse_source(source: str) -> ParsedSource:
    """Parse one expression, enforcing the length and nesting limits; raise ExpressionError."""
    if not isinstance(source, str):
        raise TypeError(f"an expression must be a str, not {type(source).__name__}")
    if len(source) > MAX_SOURCE_LENGTH:
        raise ExpressionError(
            f"expression is {len(source)} characters long; the limit is {MAX_SOURCE_LENGTH}",
            MAX_SOURCE_LENGTH + 1,
        )
    stripped = source.lstrip()
    if not stripped.strip():
        raise ExpressionError("empty expression", 1)
    locator = _Locator(source, stripped)
    _check_token_nesting(stripped, locator)
    tree = _parse(stripped, locator)
    _check_tree_depth(tree, locator)
    return ParsedSource(source, tree, locator)


def _check_token_nesting(text: str, locator: _Locator) -> None:
    """Reject deep bracket nesting and long prefix-operator runs before the parser runs."""
    depth = 0
    run = 0
    previous: tokenize.TokenInfo | None = None
    try:
        for token in tokenize.generate_tokens(io.StringIO(text).readline):
            if token.type in _IGNORED_TOKENS:
                continue
            if token.type == tokenize.OP and token.string in _OPEN:
                depth += 1
                run = 0
                if depth > MAX_DEPTH:
                    line, column = locator.from_chars(*token.start)
                    raise ExpressionError(
                        f"brackets nested deeper than {MAX_DEPTH} levels", column, line
                    )
            elif token.type == tokenize.OP and token.string in _CLOSE:
                depth -= 1
                run = 0
            elif _is_prefix_operator(token, previous):
                run += 1
                if run > MAX_DEPTH:
                    line, column = locator.from_chars(*token.start)
                    raise ExpressionError(
                        f"more than {MAX_DEPTH} prefix operators in a row", column, line
                    )
            else:
                run = 0
            previous = token
    except (tokenize.TokenError, SyntaxError):
        # Unbalanced brackets or a broken string: ast.parse explains it better, and the
        # part scanned so far was within the limits.
        return


def _is_prefix_operator(token: tokenize.TokenInfo, previous: tokenize.TokenInfo | None) -> bool:
    is_operator = (token.type == tokenize.OP and token.string in _PREFIX_OPERATORS) or (
        token.type == tokenize.NAME and token.string == "not"
    )
    if not is_operator:
        return False
    if previous is None:
        return True
    if previous.type == tokenize.OP:
        return previous.string not in _CLOSE
    return previous.type == tokenize.NAME and previous.string in _KEYWORDS_BEFORE_OPERAND


def _parse(text: str, locator: _Locator) -> ast.expr:
    try:
        with warnings.catch_warnings():
            # Invalid escapes such as "\d" only warn; they are harmless here.
            warnings.simplefilter("ignore")
            return ast.parse(text, mode="eval").body
    except SyntaxError as error:
        raise _explain_syntax_error(text, error, locator) from None
    except (RecursionError, MemoryError, ValueError, OverflowError) as error:
        raise ExpressionError(
            f"expression too complex to parse ({type(error).__name__})", 1
        ) from None


def _explain_syntax_error(text: str, error: SyntaxError, locator: _Locator) -> ExpressionError:
    # A statement (``x = 1``, ``import os``, two lines) is a syntax error in eval mode; parsing
    # as a module tells which, so the message can say so plainly.
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            body = ast.parse(text, mode="exec").body
    except SyntaxError as module_error:
        # Module mode also places errors at the end of the input, where eval mode says 0.
        error = module_error
        body = []
    except (RecursionError, MemoryError, ValueError, OverflowError):
        body = []
    if len(body) > 1:
        return locator.error_at(
            "only one expression is allowed", body[1].lineno, body[1].col_offset
        )
    if len(body) == 1 and not isinstance(body[0], ast.Expr):
        statement = body[0]
        message = _STATEMENT_MESSAGES.get(
            type(statement), f"'{type(statement).__name__.lower()}' statements are not allowed"
        )
        return locator.error_at(message, statement.lineno, statement.col_offset)
    line, column = locator.from_chars(error.lineno or 1, (error.offset or 1) - 1)
    return ExpressionError(f"syntax error: {error.msg}", column, line)


def _check_tree_depth(tree: ast.expr, locator: _Locator) -> None:
    """Measure nesting without recursion: the tree may be thousands of levels deep."""
    stack: list[tuple[ast.AST, int]] = [(tree, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise locator.error_at(
                f"expression nested deeper than {MAX_DEPTH} levels",
                getattr(node, "lineno", 1),
                getattr(node, "col_offset", 0),
            )
        # Reversed so that the leftmost too-deep node is the one reported.
        for child in reversed(list(ast.iter_child_nodes(node))):
            stack.append((child, depth + 1 if isinstance(child, ast.expr) else depth))
