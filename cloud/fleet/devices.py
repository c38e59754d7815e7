"""The fleet at a glance (`cloud devices`): each device's status, newest reading, health
and config, ordered so that a stale or unhealthy one comes first."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from cloud.fleet.config import ConfigView, views_from
from cloud.fleet.store import FLEET_FILTERS, Retained, RetainedStore, device_of
from cloud.table import Row, query_readings
from cloud.timeparse import iso_ms
from device.errors import PayloadError
from device.payload import Health, health_topic, parse_health, status_topic

COLUMNS = (
    "sensor_id",
    "status",
    "last_seen",
    "last_reading",
    "reading_age_s",
    "temperature",
    "health_age_s",
    "outbox_depth",
    "oldest_unsent_age_s",
    "dropped",
    "read_errors",
    "reconnects",
    "clock_synced",
    "config_version",
    "desired_version",
    "config",
)


@dataclass(frozen=True)
class DeviceView:
    sensor_id: str
    status: str  # online, offline, or unknown (no retained status)
    status_ms: int | None  # when the broker stored the status, where it says (AWS)
    reading: Row | None
    health: Health | None
    config: ConfigView

    @property
    def last_seen_ms(self) -> int | None:
        """The newest sign of life: a reading, a health message or a status change."""
        ts = self.health.ts if self.health else None
        times = [
            t
            for t in (self.reading.time_ms if self.reading else None, ts, self.status_ms)
            if t is not None
        ]
        return max(times) if times else None

    def sort_key(self) -> tuple[int, int, str]:
        """Offline first, then no status, then the oldest newest reading (none is oldest)."""
        rank = {"offline": 0, "unknown": 1}.get(self.status, 2)
        return (rank, self.reading.time_ms if self.reading else -1, self.sensor_id)

    def values(self, now_ms: int) -> tuple[Any, ...]:
        """The row of COLUMNS."""
        h, reading, config = self.health, self.reading, self.config
        seen = self.last_seen_ms
        applied = config.reported.version if config.reported else None
        return (
            self.sensor_id,
            self.status,
            iso_ms(seen) if seen is not None else None,
            iso_ms(reading.time_ms) if reading else None,
            _age(now_ms, reading.time_ms if reading else None),
            reading.temperature if reading else None,
            _age(now_ms, h.ts if h else None),
            h.outbox_depth if h else None,
            h.oldest_unsent_age_s if h else None,
            h.dropped if h else None,
            h.read_errors if h else None,
            h.reconnects if h else None,
            h.clock_synced if h else None,
            applied if applied is not None else (h.config_version if h else None),
            config.desired.version if config.desired else None,
            config.state,
        )


def _age(now_ms: int, then_ms: int | None) -> float | None:
    return None if then_ms is None else round(max(0, now_ms - then_ms) / 1000, 1)


def _health(found: Mapping[str, Retained], sensor_id: str) -> Health | None:
    retained = found.get(health_topic(sensor_id))
    if retained is None:
        return None
    try:
        return parse_health(retained.payload, sensor_id)
    except PayloadError:
        return None  # a device's garbled health says nothing; its other columns still do


def fleet(
    store: RetainedStore, newest: Callable[[str], Row | None], also: Iterable[str] = ()
) -> list[DeviceView]:
    """Every device with a retained status, health or config (and those in `also`: on AWS
    the things of the stack's policy), the most worrying first; `newest(id)` is a device's
    newest reading (`newest_reading`)."""
    found = store.read(FLEET_FILTERS)
    ids = sorted({d[0] for t in found if (d := device_of(t))} | set(also))
    configs = {v.sensor_id: v for v in views_from(found, ids)}
    views = []
    for sensor_id in ids:
        status = found.get(status_topic(sensor_id))
        text = status.payload.decode("utf-8", "replace").strip() if status else "unknown"
        views.append(
            DeviceView(
                sensor_id,
                text if text in ("online", "offline") else "unknown",
                status.modified_ms if status else None,
                newest(sensor_id),
                _health(found, sensor_id),
                configs[sensor_id],
            )
        )
    return sorted(views, key=DeviceView.sort_key)


def newest_reading(ddb: Any, table: str, sensor_id: str) -> Row | None:
    return next(iter(query_readings(ddb, table, sensor_id, limit=1)), None)


def now_ms() -> int:
    return int(time.time() * 1000)
