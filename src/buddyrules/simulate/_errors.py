"""Typed errors of the simulation (all :class:`~buddyrules.errors.ValidationFailed`)."""

from __future__ import annotations

from buddyrules.errors import ValidationFailed

__all__ = ["BadEventLine", "MissingDependency", "SimulationInputError"]


class SimulationInputError(ValidationFailed):
    """The simulation's input cannot be used (a file, a header, an initial state, an option)."""


class BadEventLine(SimulationInputError):
    """An event line is bad and ``on_bad_line="stop"``.

    ``details`` holds ``line`` (1-based; the item number for in-memory events and JSON
    arrays), ``code`` (``invalid_json``, ``validation_failed``, ``missing_audience``,
    ``unknown_audience``, ``event_type_not_registered`` or ``idempotency_key_conflict``),
    ``reason`` and ``bad_lines`` (how many bad lines were found in all).
    """


class MissingDependency(SimulationInputError, ImportError):
    """An optional package (pyarrow, pandas, polars) is needed and is not installed."""

    def __init__(self, package: str, feature: str, extra: str | None = None) -> None:
        hint = f'pip install "buddyrules[{extra}]"' if extra else f"pip install {package}"
        super().__init__(
            f"{feature} needs the optional package {package!r}, which is not installed ({hint})",
            {"package": package, "feature": feature},
        )
