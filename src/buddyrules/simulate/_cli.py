"""The ``buddyrules simulate`` command: a click command and the function behind it."""

from __future__ import annotations

import os
from typing import Literal

import click

from buddyrules.errors import BuddyRulesError
from buddyrules.simulate._progress import ProgressBar
from buddyrules.simulate._run import simulate

__all__ = ["cli_main", "simulate_command"]


def cli_main(
    baseline: str | os.PathLike[str],
    candidate: str | os.PathLike[str] | None,
    events: str | os.PathLike[str],
    *,
    html: str | os.PathLike[str] | None = None,
    json_out: str | os.PathLike[str] | None = None,
    workers: int | None = None,
    progress: bool = True,
    on_bad_line: Literal["stop", "skip"] = "stop",
    top_n: int = 20,
) -> int:
    """Run a simulation for the CLI: progress bar, summary table, optional HTML/JSON files.

    Returns the exit code: 0 on success, 1 when the input or a rulebook is invalid (the error
    is printed to stderr).
    """
    bar = ProgressBar(progress)
    try:
        report = simulate(
            events,
            baseline=baseline,
            candidate=candidate,
            workers=workers,
            on_bad_line=on_bad_line,
            progress=bar,
            top_n=top_n,
        )
    except BuddyRulesError as exc:
        bar.close()
        click.echo(f"error: {exc.message}", err=True)
        return 1
    bar.close()
    click.echo(report.summary_table(), nl=False)
    try:
        if html is not None:
            report.to_html(html)
            click.echo(f"HTML report written to {os.fspath(html)}")
        if json_out is not None:
            report.to_json(json_out)
            click.echo(f"JSON report written to {os.fspath(json_out)}")
    except OSError as exc:
        click.echo(f"error: cannot write the report: {exc}", err=True)
        return 1
    return 0


_FILE = click.Path(exists=True, dir_okay=False)
_OUT = click.Path(dir_okay=False, writable=True)


@click.command("simulate")
@click.option("--baseline", required=True, type=_FILE, help="The current rulebook.")
@click.option("--candidate", type=_FILE, help="The rulebook to compare against the baseline.")
@click.argument("events", type=_FILE)
@click.option("--html", "html", type=_OUT, help="Write a self-contained HTML report here.")
@click.option("--json", "json_out", type=_OUT, help="Write the report as JSON here.")
@click.option(
    "--workers", type=click.IntRange(min=1), help="Worker processes (default: one per CPU)."
)
@click.option("--skip-bad-lines", is_flag=True, help="Skip bad lines instead of stopping.")
@click.option("--top", "top_n", type=click.IntRange(min=0), default=20, show_default=True,
              help="How many most-changed buddies to list.")  # fmt: skip
@click.option("--no-progress", is_flag=True, help="Do not show a progress bar.")
def simulate_command(
    baseline: str,
    candidate: str | None,
    events: str,
    html: str | None,
    json_out: str | None,
    workers: int | None,
    skip_bad_lines: bool,
    top_n: int,
    no_progress: bool,
) -> None:
    """Replay EVENTS (.jsonl, .json, .csv, .parquet) under two rulebooks and show the diff."""
    code = cli_main(
        baseline,
        candidate,
        events,
        html=html,
        json_out=json_out,
        workers=workers,
        progress=not no_progress,
        on_bad_line="skip" if skip_bad_lines else "stop",
        top_n=top_n,
    )
    if code:
        click.get_current_context().exit(code)
