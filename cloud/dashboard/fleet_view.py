"""What the dashboard knows of each device, from the live stream, and its JSON for the page."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from cloud.live.events import LiveEvent
from device.payload import Health, Reading


def reading_json(reading: Reading) -> dict[str, Any]:
    return {
        "ts": reading.ts,
        "seq": reading.seq,
        "temperature": reading.temperature,
        **reading.metrics,
    }


def health_json(health: Health) -> dict[str, Any]:
    return {
        "ts": health.ts,
        "agent_version": health.agent_version,
        "uptime_s": health.uptime_s,
        "outbox_depth": health.outbox_depth,
        "oldest_unsent_age_s": health.oldest_unsent_age_s,
        "dropped": health.dropped,
        "read_errors": health.read_errors,
        "reconnects": health.reconnects,
        "clock_synced": health.clock_synced,
    }


@dataclass
class DeviceState:
    sensor_id: str
    status: str = "unknown"  # online, offline, or unknown (no status seen)
    #: When this dashboard learned the status (a retained one: when it subscribed).
    status_ms: int | None = None
    reading: Reading | None = None
    health: Health | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.sensor_id,
            "status": self.status,
            "status_ms": self.status_ms,
            "reading": reading_json(self.reading) if self.reading else None,
            "health": health_json(self.health) if self.health else None,
        }


class FleetView:
    """Every device the stream has told of; `apply` is called from the stream's thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._devices: dict[str, DeviceState] = {}

    def apply(self, event: LiveEvent) -> dict[str, Any] | None:
        """Take in an event; the message for the pages, or None when it changes nothing
        (a reading older than the newest one known still goes to the charts)."""
        with self._lock:
            device = self._devices.setdefault(event.sensor_id, DeviceState(event.sensor_id))
            if event.reading is not None:
                newer = device.reading is None or event.reading.ts >= device.reading.ts
                if newer:
                    device.reading = event.reading
                return {
                    "type": "reading",
                    "id": event.sensor_id,
                    "reading": reading_json(event.reading),
                }
            if event.status is not None:
                device.status, device.status_ms = event.status, event.received_ms
                return {"type": "device", "device": device.to_json()}
            if event.health is not None:
                device.health = event.health
                return {"type": "device", "device": device.to_json()}
        return None

    def snapshot(self) -> list[dict[str, Any]]:
        with self._lock:
            return [d.to_json() for _, d in sorted(self._devices.items())]
