"""`cloud query | plot`: SQL, ready-made reports and charts over an export (or the table)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from cloud import target as targets
from cloud.cli import options
from cloud.cli.errors import reports_errors
from cloud.cli.output import echo_rows
from cloud.query.engines import ENGINES


def _query_report_names() -> list[str]:
    from cloud.query.reports import REPORTS

    return sorted(REPORTS)


@click.command()
@click.argument("sql", required=False)
@options.data(
    "The export: a folder, or s3://BUCKET/PREFIX [on the local stack: its exports folder]."
)
@click.option(
    "--engine",
    type=click.Choice(ENGINES),
    default="duckdb",
    show_default=True,
    help="DuckDB in this process, or Athena (S3 only).",
)
@options.output_format
@click.option(
    "--report",
    type=click.Choice(_query_report_names()),
    help="A ready-made query instead of SQL.",
)
@options.since("Reports: from this time (ISO 8601, epoch ms, or -1h, -7d).")
@options.until("Reports: up to this time (same forms).")
@click.option("--id", "sensor_ids", multiple=True, help="Reports: only this sensor (repeatable).")
@click.option("--workgroup", help="Athena workgroup [ATHENA_WORKGROUP, or primary].")
@click.option("--database", help="Athena database [ATHENA_DATABASE, or sensor_pipeline].")
@click.option(
    "--athena-output",
    metavar="s3://BUCKET/PREFIX/",
    help="Where Athena writes results [ATHENA_OUTPUT, or the workgroup's setting].",
)
@options.target_options
@reports_errors
def query(
    sql: str | None,
    data: str | None,
    engine: str,
    fmt: str,
    report: str | None,
    since: str | None,
    until: str | None,
    sensor_ids: tuple[str, ...],
    workgroup: str | None,
    database: str | None,
    athena_output: str | None,
    target: str | None,
    endpoint_url: str | None,
) -> None:
    """Run SQL (or a --report) over an export; `-` reads the SQL from standard input.

    Tables: `sensor_data` (the tutorial's: sensorid.s, currenttime.n, temperature.n) from a
    datapipeline or DynamoDB export, and `readings` (sensor_id, time, temperature, seq, ...,
    dt) from a parquet export. Reports: summary, latest, hourly, gaps, series.
    """
    from cloud.query.engines.athena import AthenaSettings
    from cloud.query.reports import Window
    from cloud.query.run import resolve_target, run_query, run_report

    if (sql is None) == (report is None):
        raise click.UsageError("give either SQL or --report NAME")
    if sql is not None and (sensor_ids or since or until):
        raise click.UsageError("--id, --since and --until go with --report")
    where = resolve_target(data, target, endpoint_url)
    athena = (
        AthenaSettings.resolve(workgroup, database, athena_output) if engine == "athena" else None
    )
    if report is not None:
        window = Window.parse(sensor_ids, since, until)
        result = run_report(
            report, where.data, window, engine, endpoint=where.endpoint, athena=athena
        )
    else:
        text = sys.stdin.read() if sql == "-" else str(sql)
        result = run_query(text, where.data, engine, endpoint=where.endpoint, athena=athena)
    echo_rows(result.columns, result.rows, fmt)
    click.echo(f"{len(result.rows)} row(s) from {where.data} ({engine})", err=True)


@click.command()
@click.option("--id", "sensor_ids", multiple=True, required=True, help="A sensor (repeatable).")
@options.since()
@options.until()
@click.option(
    "--out",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The PNG file to write.",
)
@options.data("Plot from this export instead of the table.")
@click.option("--title", help="The chart's title [Temperature of <ids>].")
@options.target_options
@reports_errors
def plot(
    sensor_ids: tuple[str, ...],
    since: str | None,
    until: str | None,
    out: Path,
    data: str | None,
    title: str | None,
    target: str | None,
    endpoint_url: str | None,
) -> None:
    """Temperature over time for one or more sensors, as a PNG (from the table, or --data)."""
    from cloud.query.plot import render, series_from_export, series_from_table
    from cloud.query.reports import Window
    from cloud.query.run import resolve_target

    window = Window.parse(sensor_ids, since, until)
    if data is None:
        chosen = targets.resolve(target, endpoint_url)
        series = series_from_table(chosen.endpoint.client("dynamodb"), chosen.table, window)
    else:
        where = resolve_target(data, target, endpoint_url)
        series = series_from_export(where.data, window, where.endpoint)
    written = render(series, out, title)
    points = sum(len(p) for p in series.values())
    click.echo(f"wrote {written} ({points} reading(s) of {len(series)} sensor(s))")
