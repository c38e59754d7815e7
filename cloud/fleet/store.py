"""Where the fleet's retained messages live: what `config` and `devices` read and write.

Two stores, one per side: `MqttStore` (cloud.fleet.mqtt_store) on the local stack's
Mosquitto, `IotDataStore` (cloud.fleet.iot_store) on AWS IoT Core. Both keep the same
retained messages on the same topics, which is why the fleet uses retained messages rather
than AWS's Device Shadow (README, Managing the fleet).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from device.payload import SENSOR_ID_RE

#: Every retained message a device or the cloud keeps about a device.
FLEET_FILTERS = ("sensors/+/status", "sensors/+/health", "sensors/+/config/+")


@dataclass(frozen=True)
class Retained:
    payload: bytes
    #: When the broker stored it (epoch ms), where the broker says so (AWS IoT does,
    #: Mosquitto does not).
    modified_ms: int | None = None


class RetainedStore(Protocol):
    def read(self, filters: Sequence[str]) -> dict[str, Retained]:
        """Every retained message on topics matching `filters` (MQTT wildcards `+` only)."""
        ...

    def publish(self, topic: str, payload: bytes) -> None:
        """Publish retained at QoS 1; returns once the broker has it."""
        ...

    def close(self) -> None: ...


def matches(topic_filter: str, topic: str) -> bool:
    """MQTT's matching of `+` (one level) and a trailing `#` (the rest)."""
    wanted, levels = topic_filter.split("/"), topic.split("/")
    for i, part in enumerate(wanted):
        if part == "#":
            return True
        if i >= len(levels) or (part != "+" and part != levels[i]):
            return False
    return len(wanted) == len(levels)


def device_of(topic: str) -> tuple[str, str] | None:
    """(device id, what: status, health, config/desired ...) of a fleet topic, or None."""
    parts = topic.split("/", 2)
    if len(parts) != 3 or parts[0] != "sensors" or not SENSOR_ID_RE.fullmatch(parts[1]):
        return None
    return parts[1], parts[2]
