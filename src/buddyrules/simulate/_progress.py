"""A click progress bar for simulations (stderr), opened once the total is known."""

from __future__ import annotations

import sys
from typing import Any

import click

__all__ = ["ProgressBar"]


class ProgressBar:
    """A ``progress(done, total)`` callback drawing a click progress bar on stderr."""

    def __init__(self, enabled: bool = True, label: str = "Replaying events") -> None:
        self.enabled = enabled
        self.label = label
        self.bar: Any = None
        self.done = 0

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled:
            return
        if self.bar is None:
            self.bar = click.progressbar(
                length=max(total, 1), label=self.label, file=sys.stderr, show_pos=True
            )
            self.bar.__enter__()
        self.bar.update(done - self.done)
        self.done = done

    def close(self) -> None:
        """Finish the bar (a newline on stderr)."""
        if self.bar is not None:
            self.bar.__exit__(None, None, None)
            self.bar = None
