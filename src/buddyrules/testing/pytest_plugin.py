"""pytest plugin: check rulebooks from a test, or collect rulebook files as tests.

Installing buddyrules registers it as a ``pytest11`` entry point named after the module,
``buddyrules.testing.pytest_plugin`` (so that ``-p buddyrules.testing.pytest_plugin`` or
``pytest_plugins = ["buddyrules.testing.pytest_plugin"]`` in a ``conftest.py`` stay harmless
where it is installed, and load it where it is not); ``-p no:buddyrules.testing.pytest_plugin``
turns it off. Hypothesis is imported only when a check runs.

* The ``buddyrules_check`` fixture checks a rulebook and returns the
  :class:`~buddyrules.testing.check.CheckReport`; a broken invariant fails the test with the
  shrunk history as a table::

      def test_my_rules(buddyrules_check):
          buddyrules_check("rules/my_app.yaml")

      def test_daily_coin_budget(buddyrules_check):
          def at_most_300_a_day(step):
              today = step.local_date()
              earned = sum(
                  s.effects.coins for s in step.buddy_steps if step.local_date(s.event) == today
              )
              assert earned <= 300, f"{earned} coins on {today}"

          buddyrules_check("rules/my_app.yaml", invariants=[at_most_300_a_day])

* ``pytest --buddyrules rules/*.yaml`` collects one test item per rulebook file and checks
  each with the built-in invariants. Put the option after any test paths (it takes every
  following argument), or write ``--buddyrules=rules/a.yaml``; quoted glob patterns are
  expanded too.

Options: ``--buddyrules-examples N`` (histories per rulebook, default 100) and
``--buddyrules-seed N`` (a random but reproducible run; default: derandomized).
"""

from __future__ import annotations

import glob
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from buddyrules.errors import BuddyRulesError
from buddyrules.rulebook.compiled import Rulebook

if TYPE_CHECKING:
    from buddyrules.testing.check import CheckReport, RulebookSource
    from buddyrules.testing.invariants import StepInvariant

# Hypothesis is imported only when a check runs (``buddyrules.testing.check`` needs it): the
# entry point loads this module into every pytest run of a project that installs buddyrules.

__all__ = [
    "RulebookFile",
    "RulebookItem",
    "buddyrules_check",
    "pytest_addoption",
    "pytest_collect_file",
    "pytest_configure",
]

_PATHS = pytest.StashKey[frozenset[Path]]()
_DEFAULT_EXAMPLES = 100


def pytest_addoption(parser: pytest.Parser) -> None:
    """Add ``--buddyrules``, ``--buddyrules-examples``, ``--buddyrules-seed`` and
    ``--buddyrules-fail-on-problems``."""
    group = parser.getgroup("buddyrules", "buddyrules rulebook checks")
    group.addoption(
        "--buddyrules",
        action="extend",
        nargs="+",
        default=[],
        metavar="RULEBOOK",
        dest="buddyrules_paths",
        help="check these rulebook files (paths or glob patterns), one test item each",
    )
    group.addoption(
        "--buddyrules-examples",
        type=int,
        default=_DEFAULT_EXAMPLES,
        metavar="N",
        dest="buddyrules_examples",
        help=f"histories generated per rulebook check (default {_DEFAULT_EXAMPLES})",
    )
    group.addoption(
        "--buddyrules-seed",
        type=int,
        default=None,
        metavar="N",
        dest="buddyrules_seed",
        help="a seed for random but reproducible checks (default: derandomized)",
    )
    group.addoption(
        "--buddyrules-fail-on-problems",
        action="store_true",
        default=False,
        dest="buddyrules_fail_on_problems",
        help="fail a rulebook check when any condition or amount cannot be evaluated",
    )


def _expand(patterns: Sequence[str], base: Path) -> list[Path]:
    out: list[Path] = []
    for pattern in patterns:
        if glob.has_magic(pattern):
            matches = sorted(glob.glob(os.path.join(base, pattern), recursive=True))
            out += [Path(m).resolve() for m in matches]
        else:
            out.append((base / pattern).resolve())
    return list(dict.fromkeys(out))


def pytest_configure(config: pytest.Config) -> None:
    """Resolve ``--buddyrules`` paths and make sure pytest collects them."""
    patterns: list[str] = config.getoption("buddyrules_paths") or []
    paths = _expand(patterns, config.invocation_params.dir)
    config.stash[_PATHS] = frozenset(paths)
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise pytest.UsageError(
            "--buddyrules: no such rulebook file: " + ", ".join(str(p) for p in missing)
        )
    for path in paths:
        if str(path) not in config.args:
            config.args.append(str(path))


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    """A rulebook named by ``--buddyrules`` becomes a :class:`RulebookFile`."""
    if file_path.resolve() in parent.config.stash.get(_PATHS, frozenset()):
        collector: RulebookFile = RulebookFile.from_parent(parent, path=file_path)
        return collector
    return None


class RulebookFile(pytest.File):
    """A rulebook file given with ``--buddyrules``: one check item."""

    def collect(self) -> Iterator[pytest.Item]:
        """The single check item."""
        yield RulebookItem.from_parent(self, name="buddyrules_check")


class RulebookItem(pytest.Item):
    """Checks one rulebook file with the built-in invariants."""

    def runtest(self) -> None:
        """Run :func:`~buddyrules.testing.check.check_rulebook` on the file."""
        from buddyrules.testing.check import check_rulebook

        report = check_rulebook(
            self.path,
            max_examples=self.config.getoption("buddyrules_examples"),
            seed=self.config.getoption("buddyrules_seed"),
            fail_on_problems=self.config.getoption("buddyrules_fail_on_problems"),
        )
        self.add_report_section("call", "buddyrules", report.summary())

    def repr_failure(
        self,
        excinfo: pytest.ExceptionInfo[BaseException],
        style: Any = None,
    ) -> str | Any:
        """The shrunk history for a broken invariant; the problems for a bad rulebook."""
        from buddyrules.testing.check import RulebookCheckFailed

        if isinstance(excinfo.value, RulebookCheckFailed):
            return str(excinfo.value)
        if isinstance(excinfo.value, BuddyRulesError):
            return f"cannot load rulebook {self.path}: {excinfo.value.message}"
        return super().repr_failure(excinfo, style=style)

    def reportinfo(self) -> tuple[Path, int | None, str]:
        """Where the item comes from, for pytest's report."""
        return self.path, None, f"buddyrules check {self.path.name}"


CheckFunction = Callable[..., "CheckReport"]


@pytest.fixture
def buddyrules_check(request: pytest.FixtureRequest) -> CheckFunction:
    """A function that checks a rulebook and returns its
    :class:`~buddyrules.testing.check.CheckReport`; a broken invariant fails the test.

    Call it as ``buddyrules_check(rulebook, *, max_examples=None, invariants=(), seed=None,
    **options)``: ``rulebook`` is a path (relative to the current directory, else to the
    rootdir), a mapping or a :class:`~buddyrules.Rulebook`; ``max_examples`` and ``seed``
    default to ``--buddyrules-examples`` and ``--buddyrules-seed``; other options go to
    :func:`~buddyrules.testing.check.check_rulebook`. The report is attached to the test's
    output (shown with ``-rA`` or on failure).
    """
    config = request.config

    def check(
        rulebook: RulebookSource,
        *,
        max_examples: int | None = None,
        invariants: Sequence[StepInvariant] = (),
        seed: int | None = None,
        **options: Any,
    ) -> CheckReport:
        __tracebackhide__ = True
        from buddyrules.testing.check import check_rulebook

        source: RulebookSource = rulebook
        if isinstance(rulebook, str | os.PathLike) and not isinstance(rulebook, Rulebook):
            path = Path(rulebook)
            if not path.is_absolute() and not path.exists():
                candidate = config.rootpath / path
                if candidate.exists():
                    path = candidate
            source = path
        report = check_rulebook(
            source,
            max_examples=max_examples
            if max_examples is not None
            else config.getoption("buddyrules_examples"),
            invariants=invariants,
            seed=seed if seed is not None else config.getoption("buddyrules_seed"),
            **options,
        )
        request.node.add_report_section("call", "buddyrules", report.summary())
        return report

    return check
