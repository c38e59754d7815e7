"""`cloud dashboard`: the fleet on a page, live (cloud.dashboard does the work)."""

from __future__ import annotations

from pathlib import Path

import click

from cloud import target as targets
from cloud.cli import options
from cloud.cli.errors import reports_errors


@click.command("dashboard")
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to serve on. The page has no login: keep it on loopback, or behind a "
    "proxy that has one.",
)
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=8050,
    show_default=True,
    help="Port to serve on (0: a free one, printed).",
)
@click.option(
    "--alerts-state",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The state file of `cloud alerts watch` whose active alerts the page shows [as the "
    "watcher's --state: CLOUD_ALERTS_STATE, else the local stack's data folder, else "
    "var/alerts/aws-state.json].",
)
@options.target_options
@reports_errors
def dashboard(
    host: str,
    port: int,
    alerts_state: Path | None,
    target: str | None,
    endpoint_url: str | None,
) -> None:
    """Serve a page of every device: its latest reading and that reading's age, online or
    offline, its health, a live chart per sensor (the last hour; 15 minutes to 24 hours to
    choose) and the active alerts. History comes from the table, live readings from the
    broker, as the cloud side's own identity. Prints the page's address; Ctrl-C stops it."""
    from cloud.alerts.state import default_state_path
    from cloud.dashboard.server import alerts_reader, serve  # the web framework: only here

    chosen = targets.resolve(target, endpoint_url)
    state = alerts_state or default_state_path(chosen)
    serve(chosen, host, port, alerts_reader(state))
