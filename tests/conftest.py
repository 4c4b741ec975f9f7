"""Test configuration: Hypothesis profiles and shared fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

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
