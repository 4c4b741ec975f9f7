"""Testing helpers for buddyrules users and adapter authors.

This package is imported by library code and must stay light: nothing here imports pytest
or Hypothesis at import time. Every name below is imported on first access:

* :mod:`buddyrules.testing.store_contract` (needs pytest): :class:`StoreContract`, the
  suite every :class:`~buddyrules.storage.Store` adapter must pass. Subclass it in a test
  module as ``class TestMyStore(StoreContract)`` and implement ``make_store()``.
* :mod:`buddyrules.testing.check` (needs Hypothesis): :func:`check_rulebook`, which checks a
  rulebook's invariants over generated histories and returns a :class:`CheckReport` or
  raises :class:`RulebookCheckFailed` with the shrunk history.
* :mod:`buddyrules.testing.invariants`: :class:`Step` (what an invariant sees), the built-in
  invariants (:data:`STEP_INVARIANTS`) and :func:`play`, the history driver.
* :mod:`buddyrules.testing.strategies` (needs Hypothesis): :func:`events`,
  :func:`histories`, :func:`buddy_states`, :func:`invalid_events`, :func:`properties`.
* :mod:`buddyrules.testing.pytest_plugin`: the ``buddyrules_check`` fixture and
  ``pytest --buddyrules RULES...`` (registered as a ``pytest11`` entry point).
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY: dict[str, str] = {
    "StoreContract": "buddyrules.testing.store_contract",
    "CheckReport": "buddyrules.testing.check",
    "EvaluationProblem": "buddyrules.testing.check",
    "RulebookCheckFailed": "buddyrules.testing.check",
    "Unreached": "buddyrules.testing.check",
    "check_rulebook": "buddyrules.testing.check",
    "InvariantViolation": "buddyrules.testing.invariants",
    "Playthrough": "buddyrules.testing.invariants",
    "STEP_INVARIANTS": "buddyrules.testing.invariants",
    "Step": "buddyrules.testing.invariants",
    "StepInvariant": "buddyrules.testing.invariants",
    "play": "buddyrules.testing.invariants",
    "buddy_states": "buddyrules.testing.strategies",
    "events": "buddyrules.testing.strategies",
    "histories": "buddyrules.testing.strategies",
    "invalid_events": "buddyrules.testing.strategies",
    "properties": "buddyrules.testing.strategies",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    # Lazy: importing buddyrules.testing must not import pytest or Hypothesis.
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
