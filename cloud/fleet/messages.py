"""The cloud's side of the fleet payloads (the issue 15 contract): desired configs it
writes, and the reported configs and health it reads.

Written here until device.payload holds the contract's own parse/encode functions; the
shapes are the contract's, so the two agree on the wire.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from device.errors import PayloadError
from device.payload import MAX_PAYLOAD_BYTES, VERSION, check_sensor_id

#: The settings a remote config may set (the contract); the device refuses anything else.
REMOTE_SETTINGS = (
    "interval",
    "sensor",
    "health_interval",
    "qos",
    "pin",
    "w1_id",
    "i2c_address",
    "receipt_timeout",
)


def config_desired_topic(sensor_id: str) -> str:
    return f"sensors/{check_sensor_id(sensor_id)}/config/desired"


def config_reported_topic(sensor_id: str) -> str:
    return f"sensors/{check_sensor_id(sensor_id)}/config/reported"


def health_topic(sensor_id: str) -> str:
    return f"sensors/{check_sensor_id(sensor_id)}/health"


@dataclass(frozen=True)
class Desired:
    version: int
    settings: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.version, bool) or not isinstance(self.version, int):
            raise PayloadError("non-integer version", repr(self.version))
        if self.version < 1:
            raise PayloadError("version out of range", f"{self.version} < 1")
        if not isinstance(self.settings, dict):
            raise PayloadError("bad settings", "expected a JSON object")


def encode_desired(desired: Desired) -> bytes:
    body = {"v": VERSION, "version": desired.version, "settings": desired.settings}
    payload = json.dumps(body, separators=(",", ":"), allow_nan=False).encode()
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise PayloadError("oversize payload", f"{len(payload)} bytes > {MAX_PAYLOAD_BYTES}")
    return payload


def parse_desired(payload: bytes) -> Desired:
    body = _json_object(payload)
    return Desired(body.get("version"), body.get("settings", {}))  # type: ignore[arg-type]


def parse_reported(payload: bytes) -> dict[str, Any]:
    """A device's reported config, as the object it sent (version, status, applied ...)."""
    body = _json_object(payload)
    version = body.get("version")
    if isinstance(version, bool) or not isinstance(version, int):
        raise PayloadError("non-integer version", repr(version))
    return body


def parse_health(payload: bytes) -> dict[str, Any]:
    """A device's last health message, as the object it sent."""
    return _json_object(payload)


def _json_object(payload: bytes) -> dict[str, Any]:
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise PayloadError("oversize payload", f"{len(payload)} bytes > {MAX_PAYLOAD_BYTES}")
    try:
        body = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise PayloadError("not JSON", str(exc)) from None
    if not isinstance(body, dict):
        raise PayloadError("not a JSON object", type(body).__name__)
    if body.get("v") != VERSION or isinstance(body.get("v"), bool):
        raise PayloadError("unsupported version", repr(body.get("v")))
    return body
