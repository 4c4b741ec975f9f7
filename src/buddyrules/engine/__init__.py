"""The pure engine: ``evaluate`` (one event), ``advance`` (time), and admin steps."""

from buddyrules.engine.advance import advance
from buddyrules.engine.evaluate import evaluate, new_buddy
from buddyrules.engine.turn import LedgerEntry, Notification, Outcome

__all__ = ["LedgerEntry", "Notification", "Outcome", "advance", "evaluate", "new_buddy"]
