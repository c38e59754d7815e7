"""What the live stream hands its users: one event per message a device sent."""

from __future__ import annotations

from dataclasses import dataclass

from device.payload import Health, Reading

KINDS = ("reading", "status", "health")


@dataclass(frozen=True)
class LiveEvent:
    """A reading, a status change (online/offline) or a health report of one device."""

    kind: str  # one of KINDS
    sensor_id: str
    #: When this process received it (epoch ms): a status carries no time of its own.
    received_ms: int
    reading: Reading | None = None
    status: str | None = None  # "online" or "offline"
    health: Health | None = None
    #: The broker's retained copy, sent at subscribe time: the last known state, not news.
    retained: bool = False
