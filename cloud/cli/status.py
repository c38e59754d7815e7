"""`cloud status`: which side commands act on, what runs there, how much the table holds."""

from __future__ import annotations

import click
from botocore.exceptions import BotoCoreError, ClientError

from cloud import target as targets
from cloud.cli import options
from cloud.cli.errors import aws_error_line, reports_errors
from cloud.cli.output import duration, echo_rows, relative, size
from cloud.local.state import StackState
from cloud.local.status import data_sizes, part_views
from cloud.table import item_count
from cloud.timeparse import iso_ms

PART_COLUMNS = ("part", "state", "pid", "uptime", "restarts", "last exit")


def echo_local_status(state: StackState) -> None:
    rows = []
    for part in part_views(state):
        # Recorded as running but its process is gone: the supervisor has not noticed yet.
        shown = (
            "running" if part.running else "DEAD" if part.state == "running" else part.state.upper()
        )
        rows.append(
            (
                part.name,
                shown,
                str(part.pid) if part.pid else "-",
                duration(part.uptime) if part.uptime is not None else "-",
                part.restarts,
                part.last_exit or "-",
            )
        )
    echo_rows(PART_COLUMNS, rows, "table")
    click.echo(f"broker   {state.broker_url}")
    click.echo(f"table    {state.endpoint.url} ({state.table})")
    for what, (path, bytes_) in data_sizes(state).items():
        click.echo(f"data     {what}: {relative(path)} ({size(bytes_)})")
    click.echo(f"logs     {relative(state.logs_dir)}/")


@click.command("status")
@options.stack_name("aws: the stack to report on.")
@options.target_options
@reports_errors
def status(target: str | None, endpoint_url: str | None, stack_name: str) -> None:
    """Say which side commands act on, what runs where, and how many readings the table holds."""
    chosen = targets.resolve(target, endpoint_url)
    if chosen.stack is not None:
        click.echo(f"target   {chosen.name} ({chosen.why})")
        echo_local_status(chosen.stack)
        views = {p.name: p for p in part_views(chosen.stack)}
        if not views["table"].running:
            click.echo("items    unknown: the table engine is not running (it is restarted)")
            return
    else:
        from cloud.stack.status import aws_status

        # Asked before anything is printed: a failure is then its one line alone.
        info = aws_status(chosen.endpoint, stack_name)
        click.echo(f"target   {chosen.name} ({chosen.why})")
        click.echo(f"aws      {chosen.endpoint.url or 'AWS (default endpoint)'}")
        click.echo(f"stack    {stack_name}: {info.stack_status or 'not deployed (cloud deploy)'}")
        if info.broker_url:
            click.echo(f"broker   {info.broker_url} (AWS IoT Core, ATS)")
        if info.table:
            approx = "" if info.item_count_exact else " (DynamoDB's estimate, updated ~6-hourly)"
            click.echo(f"table    {info.table}: {info.item_count} item(s){approx}")
        for thing, row in sorted(info.last_readings.items()):
            last = f"{iso_ms(row.time_ms)} {row.temperature:.2f}" if row else "no readings"
            click.echo(f"device   {thing}: {last}")
        return
    try:
        count = item_count(chosen.endpoint.client("dynamodb"), chosen.table)
    except (BotoCoreError, ClientError) as exc:
        # The report above is what was asked for; the table's trouble is one more line of it.
        click.echo(f"items    unknown: {aws_error_line(exc)}")
        return
    click.echo(f"items    {chosen.table}: {count} item(s)")
