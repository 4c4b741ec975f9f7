"""Garbage-collector pauses around bulk loading.

Reading a log and validating a shard create a million long-lived objects in a row; the
cyclic collector would traverse them again and again while they accumulate (for no garbage:
nothing in them is cyclic), which more than triples the cost of those phases. Pausing it for
those phases removes that cost; the collector is re-enabled (if it was enabled) as soon as
the phase ends. A shard also freezes what it built (``gc.freeze``) before the collector is
back, so that the replay's collections never traverse its events (see ``run_shard``).
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["paused_gc"]


@contextmanager
def paused_gc() -> Iterator[None]:
    """Disable the cyclic collector for the block (re-enabled only if it was enabled)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
