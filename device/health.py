"""The device's health message: what the agent already tracks, sent retained on
sensors/<id>/health every health_interval seconds, and soon after something changed that
an operator would want to see (a reconnect, a reading dropped or failed, the clock's sync,
a new remote config).
"""

from __future__ import annotations

import importlib.metadata
import logging
import resource
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from device.clock import WallClock
from device.errors import OutboxError
from device.outbox import Outbox
from device.payload import Health, encode_health, health_topic
from device.transport import Transport

if TYPE_CHECKING:
    from device.agent import Summary

log = logging.getLogger(__name__)

#: A change is sent this soon at most after the previous message.
MIN_GAP_S = 1.0
SOC_TEMP = Path("/sys/class/thermal/thermal_zone0/temp")


def agent_version() -> str:
    try:
        return importlib.metadata.version("sensor-pipeline")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"  # run from a checkout that was never installed


def soc_temp_c(path: Path = SOC_TEMP) -> float | None:
    """The SoC's temperature (a Raspberry Pi's thermal zone 0), None where there is none."""
    try:
        return int(path.read_text().strip()) / 1000
    except (OSError, ValueError):
        return None


def peak_rss_kib() -> int:
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)  # KiB on Linux


class HealthReporter:
    """Builds and sends one device's health messages; the agent's thread calls `tick`."""

    def __init__(
        self,
        summary: Summary,
        outbox: Outbox,
        transport: Transport,
        wall: WallClock,
        config_version: Callable[[], int | None],
        clock: Callable[[], float],
    ) -> None:
        self._summary = summary
        self._outbox = outbox
        self._dropped_at_start = outbox.dropped
        self._transport = transport
        self._wall = wall
        self._config_version = config_version
        self._clock = clock
        self._started = clock()
        self._topic = health_topic(summary.sensor_id)
        self._version = agent_version()
        self.reconnects = 0
        self._ever_connected = False
        self._sent_at: float | None = None
        self._sent_marks: tuple[object, ...] | None = None
        self._next_look = 0.0
        self._next_try = 0.0
        self._clock_synced: bool | None = None

    def connection(self, up: bool) -> None:
        if up and self._ever_connected:
            self.reconnects += 1
        self._ever_connected = self._ever_connected or up

    def _dropped(self) -> int:
        # This run's: lost to a full outbox, plus batches an outbox write error lost.
        return self._summary.dropped + self._outbox.dropped - self._dropped_at_start

    def _marks(self) -> tuple[object, ...]:
        """The values whose change is sent soon, not only at the next interval."""
        s = self._summary
        return (self.reconnects, self._dropped(), s.read_errors, self._clock_synced,
                self._config_version())  # fmt: skip

    def tick(self, interval: float, connected: bool) -> float:
        """Send a message if one is due; return the seconds until the next is due."""
        now = self._clock()
        if not connected:
            return interval  # a reconnect is a change: one goes out soon after it
        if now >= self._next_look:
            # adjtimex is a system call: once a second at most.
            self._next_look = now + MIN_GAP_S
            self._clock_synced = self._wall.synchronized()
        due = now if self._sent_at is None else self._sent_at + interval
        if self._marks() != self._sent_marks:
            due = min(due, now if self._sent_at is None else self._sent_at + MIN_GAP_S)
        due = max(due, self._next_try)
        if now >= due:
            # Not sent (the link just went): the next try waits, rather than spin.
            self._next_try = now + MIN_GAP_S
            due = now + interval if self._send(now) else self._next_try
        return max(0.0, due - now)

    def health(self) -> Health:
        now_ms = self._wall.now_ms()
        try:
            oldest = self._outbox.oldest_unsent_ts()
        except OutboxError as exc:
            log.debug("health without the oldest reading's age: %s", exc)
            oldest = None
        version = self._transport.mqtt_version
        mqtt_version: Literal["5", "3.1.1"] = "3.1.1" if version == "3.1.1" else "5"
        return Health(
            sensor_id=self._summary.sensor_id,
            ts=now_ms,
            agent_version=self._version,
            uptime_s=round(self._clock() - self._started, 3),
            mqtt_version=mqtt_version,
            outbox_depth=len(self._outbox),
            oldest_unsent_age_s=None if oldest is None else max(0.0, (now_ms - oldest) / 1000),
            dropped=self._dropped(),
            read_errors=self._summary.read_errors,
            reconnects=self.reconnects,
            clock_synced=self._clock_synced,
            peak_rss_kib=peak_rss_kib(),
            soc_temp_c=soc_temp_c(),
            config_version=self._config_version(),
        )

    def _send(self, now: float) -> bool:
        marks = self._marks()
        if not self._transport.publish_state(self._topic, encode_health(self.health())):
            return False
        self._sent_at, self._sent_marks = now, marks
        return True
