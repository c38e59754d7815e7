"""The dashboard's state between the live stream, the table and the pages: what each device
last said, whether the broker and the table can be reached, and the active alerts."""

from __future__ import annotations

import threading
import time
from typing import Any

from cloud.dashboard.fleet_view import FleetView
from cloud.dashboard.history import history
from cloud.dashboard.hub import Hub
from cloud.live.events import LiveEvent

#: Until the stream says otherwise.
CONNECTING = "connecting to the broker"


class Live:
    """Fed by the live stream (`on_event`, `on_state`, from its thread) and by the app."""

    def __init__(self, ddb: Any, table: str, source: str) -> None:
        self.view = FleetView()
        self.hub = Hub()
        self._ddb = ddb
        self.table = table
        #: Which side it shows: "local stack", or "AWS us-east-1".
        self.source = source
        self._lock = threading.Lock()
        #: What keeps the broker and the table from the page, None when nothing does.
        self._problems: dict[str, str | None] = {"broker": CONNECTING, "table": None}
        self._alerts: list[dict[str, Any]] = []

    # -- from the live stream -----------------------------------------------------------

    def on_event(self, event: LiveEvent) -> None:
        message = self.view.apply(event)
        if message is not None:
            self.hub.publish(message)

    def on_state(self, problem: str | None) -> None:
        self._set_problem("broker", problem)

    # -- from the app -------------------------------------------------------------------

    def history(self, sensor_id: str, since_ms: int, until_ms: int) -> dict[str, Any]:
        """One sensor's readings of a time range, from the table (blocks: boto3)."""
        return history(self._ddb, self.table, sensor_id, since_ms, until_ms)

    def set_table_problem(self, problem: str | None) -> None:
        self._set_problem("table", problem)

    def _set_problem(self, part: str, problem: str | None) -> None:
        with self._lock:
            if self._problems[part] == problem:
                return
            self._problems[part] = problem
            # Under the lock: publishing only schedules the message, and two threads'
            # changes must reach the pages in the order they were made.
            self.hub.publish({"type": "sources", "sources": dict(self._problems)})

    def set_alerts(self, active: list[dict[str, Any]]) -> None:
        with self._lock:
            if active == self._alerts:
                return
            self._alerts = active
        self.hub.publish({"type": "alerts", "active": active})

    def sources(self) -> dict[str, Any]:
        with self._lock:
            return dict(self._problems)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            alerts = list(self._alerts)
        return {
            "type": "snapshot",
            "now_ms": int(time.time() * 1000),
            "source": self.source,
            "sources": self.sources(),
            "devices": self.view.snapshot(),
            "alerts": alerts,
        }
