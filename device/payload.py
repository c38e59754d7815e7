"""Payload v1 and the topics: the contract between devices and the cloud.

`{"v": 1, "sensor_id": "sensor-3", "ts": 1764345600123, "seq": 42, "temperature": 21.37}`
plus optional numeric metrics, and the receipts `cloud ingest` sends back. The same module
encodes on the device and validates in the cloud, so the two sides cannot disagree about
what a reading is. The fleet's messages (desired and reported config, health) are part of
the same contract, so they live here too, past the 400 lines a module usually keeps to.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

from device.columns import COLUMNS, Column
from device.errors import PayloadError

VERSION = 1
#: Metrics a reading may carry besides the temperature: the optional columns.
OPTIONAL_METRICS = tuple(c.payload for c in COLUMNS if c.payload is not None and not c.required)
#: AWS IoT Core refuses messages over 128 KiB; a reading is ~100 bytes.
MAX_PAYLOAD_BYTES = 4096
#: Thing names on AWS IoT: letters, digits, colon, underscore, hyphen; MQTT wildcards and
#: slashes would break the topic scheme, so they are refused here too.
SENSOR_ID_RE = re.compile(r"[A-Za-z0-9_:-]{1,128}")


def check_sensor_id(sensor_id: str) -> str:
    if not isinstance(sensor_id, str) or not SENSOR_ID_RE.fullmatch(sensor_id):
        raise PayloadError(
            "bad sensor_id",
            f"{sensor_id!r}: use 1-128 letters, digits, '-', '_' or ':'",
        )
    return sensor_id


def device_topic(sensor_id: str, leaf: str) -> str:
    """A device's own topic, `sensors/<id>/<leaf>`: the id checked, so no wildcard or `/`
    in it can reach another device's topics."""
    return f"sensors/{check_sensor_id(sensor_id)}/{leaf}"


def data_topic(sensor_id: str) -> str:
    return device_topic(sensor_id, "data")


def status_topic(sensor_id: str) -> str:
    return device_topic(sensor_id, "status")


def receipt_topic(sensor_id: str) -> str:
    """Where `cloud ingest` confirms a device's readings once they are in the table."""
    return device_topic(sensor_id, "receipt")


def _finite_number(name: str, value: Any) -> float:
    # bool is an int in Python, but `true` is not a temperature.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PayloadError(f"non-numeric {name}", repr(value))
    if not math.isfinite(value):
        raise PayloadError(f"non-finite {name}", repr(value))
    return float(value)


def _integer(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise PayloadError(f"non-integer {name}", repr(value))
    return value


def _whole_number(name: str, value: Any, minimum: int) -> int:
    number = _integer(name, value)
    if number < minimum:
        raise PayloadError(f"negative {name}", repr(number))
    return number


# -- the fields of payload v1, as data ------------------------------------------------------
# One table says what each field must be, made from the reading's columns
# (`device.columns.COLUMNS`) and the version. `parse_payload` applies it here, and
# `cloud.ingest.rule` turns the same table into the AWS IoT rule's WHERE clause, so the deployed
# rule and `cloud ingest` refuse the same readings (tests/cloud/test_rule_checks.py).


@dataclass(frozen=True)
class FieldRule:
    """What one field of payload v1 must be.

    `kind` is "version" (equal to VERSION), "sensor_id" (a valid id, the topic's), "integer"
    or "number" (finite); `minimum` (inclusive) and `below` (exclusive) bound an integer.
    """

    name: str
    kind: Literal["version", "sensor_id", "integer", "number"]
    required: bool = True
    minimum: int | None = None
    below: int | None = None
    #: Said with an out-of-range value, so a dead letter tells the device's author the fix.
    meaning: str = ""

    @property
    def reasons(self) -> tuple[str, ...]:
        """Every PayloadError reason `check` can give for this field."""
        n = self.name
        if self.kind == "version":
            return ("unsupported version",)
        missing = (f"missing {n}",) if self.required else ()
        if self.kind == "sensor_id":
            return (*missing, "bad sensor_id", "sensor_id differs from topic")
        if self.kind == "integer":
            low = () if self.minimum is None else (self._too_low_reason,)
            high = () if self.below is None else (f"{n} out of range",)
            return tuple(dict.fromkeys((*missing, f"non-integer {n}", *low, *high)))
        return (*missing, f"non-numeric {n}", f"non-finite {n}")

    @property
    def _too_low_reason(self) -> str:
        # "negative seq" reads better than "seq out of range" and is the reason devices
        # and dead-letter readers already know.
        return f"negative {self.name}" if self.minimum == 0 else f"{self.name} out of range"

    def check(self, body: Mapping[str, Any], topic_sensor_id: str | None) -> None:
        """PayloadError (with one of `reasons`) unless `body` holds this field as it must."""
        n = self.name
        if self.kind == "version":
            # bool is an int in Python, but `true` is not version 1.
            value = body.get(n)
            if value != VERSION or isinstance(value, bool):
                raise PayloadError("unsupported version", repr(value))
            return
        if n not in body:
            if self.required:
                raise PayloadError(f"missing {n}")
            return
        value = body[n]
        if self.kind == "sensor_id":
            if not isinstance(value, str):
                raise PayloadError("bad sensor_id", repr(value))
            if topic_sensor_id is not None and value != topic_sensor_id:
                raise PayloadError(
                    "sensor_id differs from topic", f"{value!r} published on {topic_sensor_id!r}"
                )
            check_sensor_id(value)
        elif self.kind == "integer":
            value = _integer(n, value)
            hint = f" ({self.meaning})" if self.meaning else ""
            if self.minimum is not None and value < self.minimum:
                raise PayloadError(self._too_low_reason, f"{value} < {self.minimum}{hint}")
            if self.below is not None and value >= self.below:
                raise PayloadError(f"{n} out of range", f"{value} >= {self.below}{hint}")
        else:
            _finite_number(n, value)


def _field_rule(column: Column) -> FieldRule:
    assert column.payload is not None
    return FieldRule(
        column.payload,
        column.kind,
        required=column.required,
        minimum=column.minimum,
        below=column.below,
        meaning=column.meaning,
    )


#: Payload v1, field by field, in the order they are checked: the version, then what names
#: the reading (whose, when, which count), then what it measured, each in the columns' order.
FIELDS = (
    FieldRule("v", "version"),
    *(
        _field_rule(column)
        for column in sorted(
            (c for c in COLUMNS if c.payload is not None), key=lambda c: c.kind == "number"
        )
    ),
)


@dataclass(frozen=True)
class Reading:
    """One reading, validated on construction."""

    sensor_id: str
    ts: int  # epoch milliseconds, strictly increasing per sensor
    seq: int  # 0, 1, 2, ... per sensor, across restarts
    temperature: float
    metrics: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_sensor_id(self.sensor_id)
        _whole_number("ts", self.ts, 0)
        _whole_number("seq", self.seq, 0)
        object.__setattr__(self, "temperature", _finite_number("temperature", self.temperature))
        clean = {}
        for name, value in self.metrics.items():
            if name not in OPTIONAL_METRICS:
                raise PayloadError("unknown metric", repr(name))
            clean[name] = _finite_number(name, value)
        object.__setattr__(self, "metrics", MappingProxyType(clean))

    @property
    def topic(self) -> str:
        return data_topic(self.sensor_id)

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "v": VERSION,
            "sensor_id": self.sensor_id,
            "ts": self.ts,
            "seq": self.seq,
            "temperature": self.temperature,
        }
        body.update(self.metrics)
        return body

    def to_payload(self) -> bytes:
        return json.dumps(self.to_dict(), separators=(",", ":"), allow_nan=False).encode()


def _refuse_constant(name: str) -> float:
    # json.loads would otherwise accept NaN and Infinity, which are not JSON.
    raise PayloadError("non-finite value", name)


def parse_payload(payload: bytes, topic_sensor_id: str | None = None) -> Reading:
    """Validate a raw message; the topic's sensor id, when given, must match the payload's."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise PayloadError("oversize payload", f"{len(payload)} bytes > {MAX_PAYLOAD_BYTES}")
    try:
        body = json.loads(payload.decode("utf-8"), parse_constant=_refuse_constant)
    except UnicodeDecodeError as exc:
        raise PayloadError("not UTF-8", str(exc)) from None
    except json.JSONDecodeError as exc:
        raise PayloadError("not JSON", str(exc)) from None
    except RecursionError:
        raise PayloadError("not JSON", "nested too deeply") from None
    if not isinstance(body, dict):
        raise PayloadError("not a JSON object", type(body).__name__)
    for rule in FIELDS:
        rule.check(body, topic_sensor_id)
    unknown = set(body) - {rule.name for rule in FIELDS}
    if unknown:
        raise PayloadError("unknown field", ", ".join(sorted(unknown)))
    return Reading(
        sensor_id=body["sensor_id"],
        ts=body["ts"],
        seq=body["seq"],
        temperature=body["temperature"],
        metrics={name: body[name] for name in OPTIONAL_METRICS if name in body},
    )


# -- receipts: the readings of one sensor now in the table ----------------------------------
# `{"v": 1, "confirmed": [[seq, ts], ...]}`. The ts (the table's key) makes a receipt match
# only the reading it was sent for: a device whose outbox was replaced starts again at seq 0,
# and a late receipt for the old seq 5 must not remove the new one.

#: Readings in one receipt at most; ingest confirms one write batch (<= 25) at a time.
MAX_RECEIPT_READINGS = 1000


def encode_receipt(confirmed: list[tuple[int, int]]) -> bytes:
    body = {"v": VERSION, "confirmed": [list(pair) for pair in sorted(confirmed)]}
    return json.dumps(body, separators=(",", ":")).encode()


def parse_receipt(payload: bytes) -> dict[int, int]:
    """The readings a receipt confirms, as {seq: ts}; PayloadError if it is not a receipt."""
    try:
        body = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise PayloadError("bad receipt", str(exc)) from None
    pairs = body.get("confirmed") if isinstance(body, dict) and body.get("v") == VERSION else None
    if (
        not isinstance(pairs, list)
        or len(pairs) > MAX_RECEIPT_READINGS
        or not all(isinstance(p, list) and len(p) == 2 for p in pairs)
    ):
        raise PayloadError("bad receipt", 'expected {"v": 1, "confirmed": [[seq, ts], ...]}')
    return {_whole_number("seq", seq, 0): _whole_number("ts", ts, 0) for seq, ts in pairs}


# -- fleet management: desired and reported config, health ----------------------------------
# Retained messages beside a device's readings (docs: the issue 15 contract). The cloud
# writes `config/desired`; the device answers on `config/reported` and sends `health`.
# Each is JSON, compact, at most MAX_PAYLOAD_BYTES.

CONFIG_STATUSES = ("applied", "refused")
#: Longest `error` a reported config carries: one line for a log or a table cell.
MAX_ERROR_CHARS = 300


def config_desired_topic(sensor_id: str) -> str:
    return device_topic(sensor_id, "config/desired")


def config_reported_topic(sensor_id: str) -> str:
    return device_topic(sensor_id, "config/reported")


def health_topic(sensor_id: str) -> str:
    return device_topic(sensor_id, "health")


def _object(payload: bytes, what: str) -> dict[str, Any]:
    """A JSON object of payload v1, bounded in size; PayloadError("bad <what>") if not."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise PayloadError("oversize payload", f"{len(payload)} bytes > {MAX_PAYLOAD_BYTES}")
    try:
        body = json.loads(payload.decode("utf-8"), parse_constant=_refuse_constant)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise PayloadError(f"bad {what}", str(exc)) from None
    if not isinstance(body, dict):
        raise PayloadError(f"bad {what}", "not a JSON object")
    if body.get("v") != VERSION or isinstance(body.get("v"), bool):
        raise PayloadError("unsupported version", repr(body.get("v")))
    return body


def _encode(body: Mapping[str, Any]) -> bytes:
    payload = json.dumps(body, separators=(",", ":"), allow_nan=False).encode()
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise PayloadError("oversize payload", f"{len(payload)} bytes > {MAX_PAYLOAD_BYTES}")
    return payload


def _settings(value: Any, what: str) -> Mapping[str, str | int | float | bool]:
    # Names and scalar values only; which names and values are allowed is the agent's
    # config rules' call (device.config.check_remote_settings).
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str | int | float | bool) for k, v in value.items()
    ):
        raise PayloadError(f"bad {what}", "expected an object of names to scalar values")
    return MappingProxyType(dict(value))


def _keys(body: Mapping[str, Any], allowed: set[str], what: str) -> None:
    unknown = set(body) - allowed
    if unknown:
        raise PayloadError(f"bad {what}", "unknown field " + ", ".join(sorted(unknown)))


@dataclass(frozen=True)
class Desired:
    """The settings the cloud wants a device to run with, at a version (>= 1)."""

    version: int
    settings: Mapping[str, str | int | float | bool]

    def __post_init__(self) -> None:
        if _integer("version", self.version) < 1:
            raise PayloadError("version out of range", repr(self.version))
        object.__setattr__(self, "settings", _settings(self.settings, "settings"))


def encode_desired(desired: Desired) -> bytes:
    return _encode({"v": VERSION, "version": desired.version, "settings": dict(desired.settings)})


def parse_desired(payload: bytes) -> Desired:
    body = _object(payload, "desired config")
    _keys(body, {"v", "version", "settings"}, "desired config")
    if "version" not in body or "settings" not in body:
        raise PayloadError("bad desired config", "expected version and settings")
    return Desired(body["version"], body["settings"])


@dataclass(frozen=True)
class Reported:
    """What a device did with a desired config: applied it, or refused it (with why)."""

    sensor_id: str
    version: int
    status: Literal["applied", "refused"]
    #: The remote settings now in force (a refused config leaves the previous ones).
    applied: Mapping[str, str | int | float | bool]
    error: str | None = None
    #: Names the remote config set that a command-line flag keeps.
    overridden: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        check_sensor_id(self.sensor_id)
        _whole_number("version", self.version, 0)
        if self.status not in CONFIG_STATUSES:
            raise PayloadError("bad reported config", f"status {self.status!r}")
        if (self.error is None) != (self.status == "applied"):
            raise PayloadError("bad reported config", "an error goes with refused, only")
        if self.error is not None:
            if not isinstance(self.error, str):
                raise PayloadError("bad reported config", "error is not a string")
            line = " ".join(self.error.split())
            object.__setattr__(self, "error", line[:MAX_ERROR_CHARS])
        object.__setattr__(self, "applied", _settings(self.applied, "applied"))
        if not isinstance(self.overridden, tuple | list) or not all(
            isinstance(n, str) for n in self.overridden
        ):
            raise PayloadError("bad reported config", "overridden is not a list of names")
        object.__setattr__(self, "overridden", tuple(self.overridden))


def encode_reported(reported: Reported) -> bytes:
    body: dict[str, Any] = {
        "v": VERSION,
        "sensor_id": reported.sensor_id,
        "version": reported.version,
        "status": reported.status,
        "applied": dict(reported.applied),
    }
    if reported.error is not None:
        body["error"] = reported.error
    body["overridden"] = list(reported.overridden)
    return _encode(body)


def parse_reported(payload: bytes, topic_sensor_id: str | None = None) -> Reported:
    body = _object(payload, "reported config")
    _keys(
        body,
        {"v", "sensor_id", "version", "status", "applied", "error", "overridden"},
        "reported config",
    )
    missing = {"sensor_id", "version", "status", "applied"} - set(body)
    if missing:
        raise PayloadError("bad reported config", "missing " + ", ".join(sorted(missing)))
    if topic_sensor_id is not None and body["sensor_id"] != topic_sensor_id:
        raise PayloadError("sensor_id differs from topic", repr(body["sensor_id"]))
    return Reported(
        sensor_id=body["sensor_id"],
        version=body["version"],
        status=body["status"],
        applied=body["applied"],
        error=body.get("error"),
        overridden=body.get("overridden", []),
    )


@dataclass(frozen=True)
class Health:
    """A device's vital signs, sent every health_interval seconds (retained)."""

    sensor_id: str
    ts: int  # epoch ms
    agent_version: str
    uptime_s: float
    mqtt_version: Literal["5", "3.1.1"]
    outbox_depth: int
    oldest_unsent_age_s: float | None
    dropped: int
    read_errors: int
    reconnects: int
    clock_synced: bool | None
    peak_rss_kib: int
    soc_temp_c: float | None
    config_version: int | None

    def __post_init__(self) -> None:
        check_sensor_id(self.sensor_id)
        if not isinstance(self.agent_version, str) or not 0 < len(self.agent_version) <= 64:
            raise PayloadError("bad health", f"agent_version {self.agent_version!r}")
        if self.mqtt_version not in ("5", "3.1.1"):
            raise PayloadError("bad health", f"mqtt_version {self.mqtt_version!r}")
        for name in ("ts", "outbox_depth", "dropped", "read_errors", "reconnects", "peak_rss_kib"):
            _whole_number(name, getattr(self, name), 0)
        if self.config_version is not None:
            _whole_number("config_version", self.config_version, 0)
        for name in ("uptime_s", "oldest_unsent_age_s", "soc_temp_c"):
            value = getattr(self, name)
            if value is not None or name == "uptime_s":
                object.__setattr__(self, name, _finite_number(name, value))
        if self.clock_synced is not None and not isinstance(self.clock_synced, bool):
            raise PayloadError("bad health", f"clock_synced {self.clock_synced!r}")


HEALTH_FIELDS = tuple(Health.__dataclass_fields__)


def encode_health(health: Health) -> bytes:
    return _encode({"v": VERSION, **{name: getattr(health, name) for name in HEALTH_FIELDS}})


def parse_health(payload: bytes, topic_sensor_id: str | None = None) -> Health:
    body = _object(payload, "health")
    _keys(body, {"v", *HEALTH_FIELDS}, "health")
    missing = set(HEALTH_FIELDS) - set(body)
    if missing:
        raise PayloadError("bad health", "missing " + ", ".join(sorted(missing)))
    if topic_sensor_id is not None and body["sensor_id"] != topic_sensor_id:
        raise PayloadError("sensor_id differs from topic", repr(body["sensor_id"]))
    return Health(**{name: body[name] for name in HEALTH_FIELDS})
