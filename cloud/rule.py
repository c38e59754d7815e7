"""The IoT rule, defined once: the SQL deployed to AWS IoT and the mapping `cloud ingest` runs.

Both are generated from `COLUMNS`, so the deployed rule and the local bridge cannot drift.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from cloud.table import number
from device.payload import PayloadError, parse_payload

TOPIC_FILTER = "sensors/+/data"


@dataclass(frozen=True)
class Column:
    attribute: str  # the item's attribute in SensorData
    source: str  # the payload field, or an IoT SQL function of the topic
    kind: str  # DynamoDB type: "S" or "N"
    required: bool = True


COLUMNS = (
    # The identity comes from the topic, which the broker's ACL / IoT policy ties to the
    # device's certificate; the payload's sensor_id is only checked against it.
    Column("SensorId", "topic(2)", "S"),
    Column("CurrentTime", "ts", "N"),
    Column("Temperature", "temperature", "N"),
    Column("Seq", "seq", "N"),
    Column("Humidity", "humidity", "N", required=False),
    Column("Pressure", "pressure", "N", required=False),
    # When the cloud received it (IoT SQL's timestamp()): exports take what arrived since
    # their last run by this, so readings a device kept offline for hours are not skipped.
    Column("ReceivedAt", "timestamp()", "N"),
)


def rule_sql() -> str:
    """The topic rule's SQL (version 2016-03-23)."""
    selected = ", ".join(f"{c.source} AS {c.attribute}" for c in COLUMNS)
    # Built from our own constants only; no user value reaches this string.
    return f"SELECT {selected} FROM '{TOPIC_FILTER}' WHERE v = 1"  # noqa: S608


def _storable(name: str, value: float | int) -> str:
    """DynamoDB's N: at most 38 significant digits, magnitude 1E-130 up to 1E+126, or 0."""
    text = number(value)
    d = Decimal(text)
    if d != 0 and (len(d.normalize().as_tuple().digits) > 38 or not -130 <= d.adjusted() <= 125):
        raise PayloadError("number out of range", f"{name} {text}: DynamoDB cannot store it")
    return text


def topic_sensor_id(topic: str) -> str:
    """`topic(2)`: the second level of `sensors/<id>/data`."""
    parts = topic.split("/")
    if len(parts) != 3 or parts[0] != "sensors" or parts[2] != "data":
        raise PayloadError("unexpected topic", topic)
    return parts[1]


def to_item(topic: str, payload: bytes, received_ms: int | None = None) -> dict[str, Any]:
    """The DynamoDB item the rule writes for this message; PayloadError says why not."""
    sensor_id = topic_sensor_id(topic)
    reading = parse_payload(payload, sensor_id)
    fields: dict[str, Any] = {
        "timestamp()": int(time.time() * 1000) if received_ms is None else received_ms,
        "topic(2)": sensor_id,
        "ts": reading.ts,
        "temperature": reading.temperature,
        "seq": reading.seq,
        **reading.metrics,
    }
    item: dict[str, Any] = {}
    for column in COLUMNS:
        if column.source not in fields:
            continue
        value = fields[column.source]
        item[column.attribute] = {
            column.kind: value if column.kind == "S" else _storable(column.source, value)
        }
    return item
