"""What-if simulation: replay an event log under a candidate rulebook and show what changes.

::

    from buddyrules.simulate import simulate

    report = simulate("events.jsonl", baseline="rules.yaml", candidate="rules_v2.yaml")
    print(report.summary_table())
    report.to_html("report.html")

The log is split by user into shards replayed in parallel (processes, or any
``concurrent.futures.Executor`` such as a Dask client's); the report is the same whatever
the number of workers. See :func:`simulate` and :class:`SimulationReport`.
"""

from buddyrules.simulate._cli import cli_main, simulate_command
from buddyrules.simulate._errors import BadEventLine, MissingDependency, SimulationInputError
from buddyrules.simulate._inputs import BadLine
from buddyrules.simulate._report import RulebookOutcome, SimulationReport
from buddyrules.simulate._run import simulate
from buddyrules.simulate._tally import BuddyOutcome

__all__ = [
    "BadEventLine",
    "BadLine",
    "BuddyOutcome",
    "MissingDependency",
    "RulebookOutcome",
    "SimulationInputError",
    "SimulationReport",
    "cli_main",
    "simulate",
    "simulate_command",
]
