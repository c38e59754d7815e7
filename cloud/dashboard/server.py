"""Runs the dashboard: the live stream, the table's watch, and the app under uvicorn.

The socket is bound here, before uvicorn starts, so a port in use is one clear line (and
`--port 0` a free port, printed), and the address printed is the one that answers.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import socket
import threading
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import click
import uvicorn
from botocore.exceptions import BotoCoreError, ClientError

from cloud.alerts.state import active_alerts
from cloud.cli.errors import aws_error_line
from cloud.dashboard.app import create_app
from cloud.dashboard.assets import uplot_dir
from cloud.dashboard.live import Live
from cloud.errors import ConfigError, PipelineError, aws_code
from cloud.live.stream import open_live
from cloud.target import Target

log = logging.getLogger(__name__)

#: How often the table is checked: a table that went away shows on the page within this
#: (a failed history request says so at once).
TABLE_CHECK_S = 5.0
#: How often the active alerts are read again.
ALERTS_CHECK_S = 1.0
#: How long a stop waits for open pages' streams to end.
GRACE_S = 2


def check_table(ddb: Any, table: str) -> str | None:
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
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        return socket.create_server((host, port), family=family)
    except socket.gaierror as exc:
        raise ConfigError(f"--host {host}: not an address of this machine ({exc})") from None
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


class Dashboard:
    """The dashboard of `target`, bound to host:port; `run` serves until `stop` (or Ctrl-C,
    SIGTERM: uvicorn's own handlers, in the main thread)."""

    def __init__(
        self,
        target: Target,
        host: str,
        port: int,
        active_alerts: Callable[[], list[dict[str, Any]]] | None = None,
    ) -> None:
        vendor = uplot_dir()
        self._sock = bind(host, port)
        self._target = target
        self._active_alerts = active_alerts
        self._ddb = target.endpoint.client("dynamodb")
        region = target.endpoint.region_name()
        source = "local stack" if target.stack is not None else f"AWS {region}"
        self.live = Live(self._ddb, target.table, source)
        try:
            self._stream = open_live(target, "dashboard", self.live.on_event, self.live.on_state)
        except BaseException:
            self._sock.close()
            raise
        self._stop = threading.Event()
        address, bound_port = self._sock.getsockname()[:2]
        loopback = ipaddress.ip_address(address).is_loopback
        config = uvicorn.Config(
            create_app(self.live, vendor, loopback),
            log_level="warning",
            lifespan="on",
            access_log=False,
            # Ctrl-C with pages open: their streams would otherwise hold the server forever.
            timeout_graceful_shutdown=GRACE_S,
        )
        self._server = uvicorn.Server(config)
        shown = f"[{address}]" if ":" in address else address
        self.url = f"http://{shown}:{bound_port}/"

    def run(self) -> None:
        live, ddb, table = self.live, self._ddb, self._target.table
        _every(TABLE_CHECK_S, self._stop, lambda: live.set_table_problem(check_table(ddb, table)))
        if self._active_alerts is not None:
            read = self._active_alerts
            _every(ALERTS_CHECK_S, self._stop, lambda: live.set_alerts(read()))
        self._stream.start()
        try:
            self._server.run(sockets=[self._sock])
        finally:
            self._stop.set()
            self._stream.stop()
            self._sock.close()

    def stop(self) -> None:
        self.live.hub.close_all()
        self._server.should_exit = True


def alerts_reader(path: Path) -> Callable[[], list[dict[str, Any]]]:
    """The active alerts in the state file of `cloud alerts watch`, as the page shows them.
    A file that cannot be read shows none, and says why in the log once per change."""
    said: list[str] = []

    def read() -> list[dict[str, Any]]:
        try:
            active = [asdict(a) for a in active_alerts(path)]
        except PipelineError as exc:
            if str(exc) not in said:
                said[:] = [str(exc)]
                log.warning("active alerts unknown: %s", exc)
            return []
        said.clear()
        return active

    return read


def serve(
    target: Target,
    host: str,
    port: int,
    active_alerts: Callable[[], list[dict[str, Any]]] | None = None,
) -> None:
    """Serve until interrupted, the page's address printed first. `active_alerts` reads the
    alerts watcher's active episodes, when there is a watcher to read."""
    dashboard = Dashboard(target, host, port, active_alerts)
    click.echo(f"dashboard: {dashboard.url} (Ctrl-C stops it)")
    dashboard.run()
