"""`cloud readings | summary`: the table itself, read straight from DynamoDB's API."""

from __future__ import annotations

import itertools

import click

from cloud import target as targets
from cloud.cli import options
from cloud.cli.errors import reports_errors
from cloud.cli.output import READING_COLUMNS, echo_rows, reading_values
from cloud.table import query_readings, summarize, wait_for_items
from cloud.timeparse import parse_time_ms


@click.command()
@click.option("--id", "sensor_id", required=True, help="The sensor id.")
@options.since()
@options.until()
@click.option("--limit", type=click.IntRange(min=1), help="At most this many readings.")
@options.output_format
@options.target_options
@reports_errors
def readings(
    sensor_id: str,
    since: str | None,
    until: str | None,
    limit: int | None,
    fmt: str,
    target: str | None,
    endpoint_url: str | None,
) -> None:
    """One sensor's readings from the table, newest first."""
    since_ms = parse_time_ms(since, "--since") if since else None
    until_ms = parse_time_ms(until, "--until") if until else None
    chosen = targets.resolve(target, endpoint_url)
    rows = iter(
        query_readings(
            chosen.endpoint.client("dynamodb"), chosen.table, sensor_id, since_ms, until_ms, limit
        )
    )
    # The first row before any header: a failing query then prints its error alone.
    first = next(rows, None)
    if first is None:
        click.echo(f"no readings for {sensor_id!r} in {chosen.table}", err=True)
        return
    echo_rows(READING_COLUMNS, map(reading_values, itertools.chain([first], rows)), fmt)


@click.command()
@options.since("Only readings from this time: ISO 8601, epoch ms, or -1h, -7d.")
@click.option(
    "--wait-for",
    type=click.IntRange(min=1),
    metavar="N",
    help="First wait until the table holds at least N readings (ingest may still be writing).",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0),
    default=120,
    show_default=True,
    help="Seconds --wait-for waits.",
)
@options.target_options
@reports_errors
def summary(
    since: str | None,
    wait_for: int | None,
    timeout: float,
    target: str | None,
    endpoint_url: str | None,
) -> None:
    """Per-sensor count, min, avg and max temperature, straight from the table."""
    since_ms = parse_time_ms(since, "--since") if since else None
    chosen = targets.resolve(target, endpoint_url)
    ddb = chosen.endpoint.client("dynamodb")
    if wait_for is not None:
        wait_for_items(ddb, chosen.table, wait_for, timeout)
    stats = summarize(ddb, chosen.table, since_ms)
    if not stats:
        raise click.ClickException(f"no readings in {chosen.table}")
    echo_rows(
        ("sensor", "count", "min", "avg", "max"),
        [(sensor, s.count, s.minimum, s.average, s.maximum) for sensor, s in stats.items()],
        "table",
    )
    total = sum(s.count for s in stats.values())
    click.echo(f"{len(stats)} sensor(s), {total} reading(s)")
