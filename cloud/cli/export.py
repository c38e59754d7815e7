"""`cloud export`: the table to a folder or S3, incrementally, for SQL."""

from __future__ import annotations

import dataclasses
from typing import Any

import click

from cloud import target as targets
from cloud.cli import options
from cloud.cli.errors import reports_errors
from cloud.export.layout import FORMATS
from cloud.export.run import ExportSpec, run_export, terminal_progress
from cloud.export.spec import MAX_SEGMENTS, METHODS
from cloud.timeparse import parse_time_ms

#: The flags' defaults are the spec's own, so `--help` and a library caller agree.
DEFAULTS: dict[str, Any] = {f.name: f.default for f in dataclasses.fields(ExportSpec)}


@click.command("export")
@click.option(
    "--to",
    "destination",
    metavar="DIR|s3://BUCKET/PREFIX",
    help="A folder, or S3 [on the local stack: its exports folder].",
)
@options.choice_format(
    FORMATS,
    DEFAULTS["fmt"],
    "datapipeline: JSON lines the tutorial's Athena table reads; parquet: typed, by day.",
)
@options.since(
    "Readings from this time (ISO 8601, epoch ms, -1h, -7d) instead of what is new; "
    "on an existing export only with --full."
)
@click.option(
    "--segments",
    type=click.IntRange(1, MAX_SEGMENTS),
    default=DEFAULTS["segments"],
    show_default=True,
    help="Parallel scan segments, one thread each.",
)
@click.option("--full", is_flag=True, help="Export everything, replacing earlier files.")
@click.option(
    "--method",
    type=click.Choice(METHODS),
    default=DEFAULTS["method"],
    show_default=True,
    help="native: DynamoDB's own export to S3 (needs point-in-time recovery on the table).",
)
@click.option(
    "--settle",
    type=click.FloatRange(min=0),
    default=DEFAULTS["settle_seconds"],
    show_default=True,
    help="Seconds; readings received more recently wait for the next run, as their writes "
    "may still be landing. 0 once ingest has stopped.",
)
@options.target_options
@reports_errors
def export(
    destination: str | None,
    fmt: str,
    since: str | None,
    segments: int,
    full: bool,
    method: str,
    settle: float,
    target: str | None,
    endpoint_url: str | None,
) -> None:
    """Copy the table to a folder or S3 for SQL; by default only what is new since last time.

    Files appear whole, and a run counts only once its manifest (under _manifests/) is
    written, so a failed run can simply be run again.
    """
    chosen = targets.resolve(target, endpoint_url)
    spec = ExportSpec(
        destination=chosen.exports(destination, "--to"),
        fmt=fmt,
        method=method,
        since_ms=parse_time_ms(since, "--since") if since else None,
        full=full,
        segments=segments,
        settle_seconds=settle,
    )
    result = run_export(chosen.endpoint, chosen.table, spec, progress=terminal_progress())
    click.echo(result.line())
