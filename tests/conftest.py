"""Test configuration: Hypothesis profiles and shared fixtures."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

from buddyrules.errors import StoreError

# CI: deterministic and bounded, so a run is reproducible and its length predictable.
settings.register_profile(
    "ci",
    derandomize=True,
    max_examples=60,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile("dev", max_examples=100, deadline=None)
settings.register_profile("thorough", max_examples=1000, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "rules_examples"


@pytest.fixture(scope="session")
def examples_dir() -> Path:
    """The rules_examples folder."""
    return EXAMPLES


@pytest.fixture(scope="session")
def language_rulebook_path() -> Path:
    """Path of the language-learning example rulebook."""
    return EXAMPLES / "language_learning" / "rulebook.yaml"


class _PutBuddyFails:
    """A store's unit of work whose ``put_buddy`` fails (after the quota was reserved)."""

    def __init__(self, unit: Any) -> None:
        self.unit = unit

    def __enter__(self) -> _PutBuddyFails:
        self.unit.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.unit.__exit__(*exc)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.unit, name)

    def put_buddy(self, state: Any) -> None:
        raise StoreError("disk on fire")


@contextmanager
def _units_fail_to_put_buddy(store: Any) -> Iterator[None]:
    open_unit = store.unit_of_work
    store.unit_of_work = lambda tenant, key: _PutBuddyFails(open_unit(tenant, key))
    try:
        yield
    finally:
        store.unit_of_work = open_unit


@pytest.fixture
def put_buddy_fails() -> Callable[[Any], AbstractContextManager[None]]:
    """``with put_buddy_fails(store):`` every unit the store opens fails in ``put_buddy``
    with ``StoreError("disk on fire")``, after the unit reserved its quota."""
    return _units_fail_to_put_buddy
