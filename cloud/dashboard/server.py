"""Runs the dashboard: the live stream, the table's watch, and the app under uvicorn.

The socket is bound here, before uvicorn starts, so a port in use is one clear line (and
`--port 0` a free port, printed), and the address printed is the one that answers.
"""

from __future__ import annotations

import errno
import logging
import socket
import threading
from collections.abc import Callable
from typing import Any

import click
import uvicorn
from botocore.exceptions import BotoCoreError, ClientError

from cloud.cli.errors import aws_error_line
from cloud.dashboard.app import create_app
from cloud.dashboard.assets import uplot_dir
from cloud.dashboard.live import Live
from cloud.errors import ConfigError, aws_code
from cloud.live.stream import open_live
from cloud.target import Target

log = logging.getLogger(__name__)

#: How often the table is checked while no page asks for history: a table that went away
#: shows on the page within this.
TABLE_CHECK_S = 5.0
#: How often the active alerts are read again.
ALERTS_CHECK_S = 1.0


def table_problem(ddb: Any, table: str) -> str | None:
    """None when the table answers, else one line saying why not."""
    try:
        ddb.describe_table(TableName=table)
    except ClientError as exc:
        if aws_code(exc) == "ResourceNotFoundException":
            return f"table {table} not found; is the stack up?"
        return aws_error_line(exc)
    except BotoCoreError as exc:
        return aws_error_line(exc)
    return None


def bind(host: str, port: int) -> socket.socket:
    try:
        return socket.create_server((host, port))
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise ConfigError(
                f"--port {port}: something else listens on {host}:{port}; give another "
                "--port (0 picks a free one)"
            ) from None
        raise ConfigError(f"--host {host}: cannot listen there ({exc.strerror or exc})") from None


def _every(seconds: float, stop: threading.Event, work: Callable[[], None]) -> threading.Thread:
    def run() -> None:
        while True:
            work()
            if stop.wait(seconds):
                return

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def serve(
    target: Target,
    host: str,
    port: int,
    active_alerts: Callable[[], list[dict[str, Any]]] | None = None,
) -> None:
    """Serve until interrupted (Ctrl-C, SIGTERM). `active_alerts` reads the alerts watcher's
    active episodes, when there is a watcher to read."""
    sock = bind(host, port)
    vendor = uplot_dir()
    ddb = target.endpoint.client("dynamodb")
    region = target.endpoint.region
    source = "local stack" if target.stack is not None else f"AWS {region or ''}".strip()
    live = Live(ddb, target.table, source)
    stream = open_live(target, "dashboard", live.on_event, live.on_state)
    stop = threading.Event()
    _every(TABLE_CHECK_S, stop, lambda: live.table_problem(table_problem(ddb, target.table)))
    if active_alerts is not None:
        read = active_alerts
        _every(ALERTS_CHECK_S, stop, lambda: live.set_alerts(read()))
    config = uvicorn.Config(
        create_app(live, vendor), log_level="warning", lifespan="on", access_log=False
    )
    address, bound_port = sock.getsockname()[:2]
    shown = f"[{address}]" if ":" in address else address
    stream.start()
    click.echo(f"dashboard: http://{shown}:{bound_port}/ (Ctrl-C stops it)")
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        stop.set()
        stream.stop()
        sock.close()
