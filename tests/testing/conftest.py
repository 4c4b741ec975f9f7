"""Load pytester, and the buddyrules pytest plugin unless its ``pytest11`` entry point is
installed already (registering the same plugin twice is an error in pytest)."""

from __future__ import annotations

from .rulebooks import PLUGIN_MODULE, PLUGIN_REGISTERED

pytest_plugins = ["pytester"] if PLUGIN_REGISTERED else ["pytester", PLUGIN_MODULE]
