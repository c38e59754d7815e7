"""The `SensorData` table: a time series keyed by sensor (hash) and epoch-ms time (range)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from botocore.exceptions import ClientError

from cloud.errors import TableError, aws_code
from device.columns import COLUMNS

KEY_SCHEMA = [
    {"AttributeName": "SensorId", "KeyType": "HASH"},
    {"AttributeName": "CurrentTime", "KeyType": "RANGE"},
]
_TYPES = {c.attribute: c.dynamodb_type for c in COLUMNS}
ATTRIBUTES = [
    {"AttributeName": key["AttributeName"], "AttributeType": _TYPES[key["AttributeName"]]}
    for key in KEY_SCHEMA
]


def create_table(ddb: Any, name: str) -> None:
    """Create the table (on demand) if it does not exist, and wait until it is active."""
    try:
        ddb.create_table(
            TableName=name,
            KeySchema=KEY_SCHEMA,
            AttributeDefinitions=ATTRIBUTES,
            BillingMode="PAY_PER_REQUEST",
        )
    except ClientError as exc:
        if aws_code(exc) != "ResourceInUseException":
            raise TableError(f"cannot create table {name}: {exc}", aws_code(exc)) from None
    ddb.get_waiter("table_exists").wait(
        TableName=name, WaiterConfig={"Delay": 1, "MaxAttempts": 60}
    )


def item_count(ddb: Any, name: str) -> int:
    """Exact count by a Select=COUNT scan (DescribeTable's count is refreshed every ~6 hours)."""
    total = 0
    kwargs: dict[str, Any] = {"TableName": name, "Select": "COUNT"}
    while True:
        page = ddb.scan(**kwargs)
        total += int(page["Count"])
        if "LastEvaluatedKey" not in page:
            return total
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def wait_for_items(ddb: Any, table: str, wanted: int, timeout: float) -> None:
    """Poll the table's count until it holds `wanted` items (`cloud summary --wait-for`),
    and say what to look at when they do not come."""
    deadline = time.monotonic() + timeout
    while (count := item_count(ddb, table)) < wanted:
        if time.monotonic() > deadline:
            raise TableError(
                f"{table} holds {count} of {wanted} reading(s) after {timeout:g}s; "
                "is `cloud ingest` running? (`cloud status`, and its log)"
            )
        time.sleep(0.5)  # a Select=COUNT scan is not free: poll gently


#: (payload name, item attribute) of the metrics a reading may carry: `Row.metrics`' keys.
_OPTIONAL_METRICS = tuple(
    (c.payload, c.attribute) for c in COLUMNS if c.payload is not None and not c.required
)


@dataclass(frozen=True)
class Row:
    sensor_id: str
    time_ms: int
    temperature: float
    seq: int | None
    metrics: dict[str, float]

    @classmethod
    def from_item(cls, item: dict[str, Any]) -> Row:
        metrics = {
            name: float(item[attribute]["N"])
            for name, attribute in _OPTIONAL_METRICS
            if "N" in item.get(attribute, {})
        }
        return cls(
            sensor_id=item["SensorId"]["S"],
            time_ms=int(item["CurrentTime"]["N"]),
            temperature=float(item["Temperature"]["N"]),
            seq=int(item["Seq"]["N"]) if "Seq" in item else None,
            metrics=metrics,
        )


def query_readings(
    ddb: Any,
    table: str,
    sensor_id: str,
    since_ms: int | None = None,
    until_ms: int | None = None,
    limit: int | None = None,
    newest_first: bool = True,
) -> Iterator[Row]:
    """One sensor's readings in a time range, paginated; the values are query parameters."""
    condition = "SensorId = :id"
    values: dict[str, Any] = {":id": {"S": sensor_id}}
    if since_ms is not None and until_ms is not None:
        condition += " AND CurrentTime BETWEEN :lo AND :hi"
        values[":lo"] = {"N": str(since_ms)}
        values[":hi"] = {"N": str(until_ms)}
    elif since_ms is not None:
        condition += " AND CurrentTime >= :lo"
        values[":lo"] = {"N": str(since_ms)}
    elif until_ms is not None:
        condition += " AND CurrentTime <= :hi"
        values[":hi"] = {"N": str(until_ms)}
    kwargs: dict[str, Any] = {
        "TableName": table,
        "KeyConditionExpression": condition,
        "ExpressionAttributeValues": values,
        "ScanIndexForward": not newest_first,
    }
    returned = 0
    while True:
        if limit is not None:
            kwargs["Limit"] = min(1000, limit - returned)
        try:
            page = ddb.query(**kwargs)
        except ClientError as exc:
            code = aws_code(exc)
            if code == "ResourceNotFoundException":
                raise TableError(f"table {table} not found; is the stack up?", code) from None
            raise TableError(f"query on {table} failed: {exc}", code) from None
        for item in page["Items"]:
            yield Row.from_item(item)
            returned += 1
            if limit is not None and returned >= limit:
                return
        if "LastEvaluatedKey" not in page:
            return
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def number(value: float | int) -> str:
    """DynamoDB's N type is a decimal string; repr() of a float round-trips exactly."""
    return str(Decimal(repr(value))) if isinstance(value, float) else str(value)


@dataclass
class SensorStats:
    count: int = 0
    minimum: float = float("inf")
    maximum: float = float("-inf")
    total: float = 0.0

    def add(self, value: float) -> None:
        self.count += 1
        self.minimum = min(self.minimum, value)
        self.maximum = max(self.maximum, value)
        self.total += value

    @property
    def average(self) -> float:
        return self.total / self.count if self.count else float("nan")


def _scan(ddb: Any, table: str, **kwargs: Any) -> Iterator[dict[str, Any]]:
    """Every item a paginated Scan of `table` returns (`kwargs`: its projection, filter)."""
    kwargs["TableName"] = table
    while True:
        try:
            page = ddb.scan(**kwargs)
        except ClientError as exc:
            raise TableError(f"scan of {table} failed: {exc}", aws_code(exc)) from None
        yield from page["Items"]
        if "LastEvaluatedKey" not in page:
            return
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def sensor_ids(ddb: Any, table: str, since_ms: int, until_ms: int) -> set[str]:
    """Every sensor with a reading in [since_ms, until_ms], by a Scan of the ids alone (the
    table's key has no other way to list its sensors)."""
    items = _scan(
        ddb,
        table,
        ProjectionExpression="SensorId",
        FilterExpression="CurrentTime BETWEEN :lo AND :hi",
        ExpressionAttributeValues={":lo": {"N": str(since_ms)}, ":hi": {"N": str(until_ms)}},
    )
    return {item["SensorId"]["S"] for item in items}


def summarize(ddb: Any, table: str, since_ms: int | None = None) -> dict[str, SensorStats]:
    """Per-sensor count, min, avg and max by a paginated Scan (a small table; exports and
    `cloud query` are the way for large ones)."""
    kwargs: dict[str, Any] = {"ProjectionExpression": "SensorId, CurrentTime, Temperature"}
    if since_ms is not None:
        kwargs["FilterExpression"] = "CurrentTime >= :since"
        kwargs["ExpressionAttributeValues"] = {":since": {"N": str(since_ms)}}
    stats: dict[str, SensorStats] = {}
    for item in _scan(ddb, table, **kwargs):
        sensor = item["SensorId"]["S"]
        stats.setdefault(sensor, SensorStats()).add(float(item["Temperature"]["N"]))
    return dict(sorted(stats.items()))
