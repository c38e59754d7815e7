"""The columns of a reading, defined once: payload v1, the table, the exports and the SQL.

Each `Column` says what a value is called and typed in every layer it passes through: the
payload v1 field a device sends, the `SensorData` item attribute (and its DynamoDB type) the
rule and `cloud ingest` write, and the column of the flat `readings` table (Parquet/Arrow,
Athena and DuckDB types). The payload checks (`device.payload.FIELDS`), the AWS IoT rule
(`cloud.ingest.rule`), the item mapping (`cloud.table.Row`), the Parquet schema and rows
(`cloud.export`), the query tables (`cloud.query.schema`) and the Glue tables
(`cloud.stack.template`) are all made from `COLUMNS`, so a new metric is one new line here
(tests/test_columns.py adds one and follows it through every layer).

It lives with the device because the agent installs without the cloud half, and the cloud
imports the device's payload contract already.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

#: The sane range of a reading's `ts` (epoch ms): 2000-01-01T00:00:00Z <= ts < 2100-01-01.
#: A time in seconds or microseconds falls outside it, and Parquet's timestamps (and
#: Python's datetime) cannot hold a year like 58888.
TS_MIN_MS = 946_684_800_000
TS_MAX_MS = 4_102_444_800_000

#: Parquet's encoding for values that climb steadily (times, counters): a dictionary of
#: millions of distinct times overflows and falls back to 8 plain bytes a value. With times
#: and seq delta-encoded, the summary over 5,000,000 readings reads 14 MB of columns instead
#: of 31, with a fifth less CPU (bench/query_report.py).
DELTA = "DELTA_BINARY_PACKED"
#: Times in Parquet are plain `timestamp[ms]` holding UTC, as Athena's `timestamp` is. The
#: zoned type exports wrote before (`tz=UTC`) made DuckDB convert every row to the plain type
#: the table declares: that summary took four times the CPU.
TIME = "timestamp[ms]"


@dataclass(frozen=True)
class Column:
    """One value of a reading, as each layer names and types it.

    `kind` is how the payload check and the export read it: "sensor_id" (the topic's id),
    "integer" (bounded by `minimum` inclusive and `below` exclusive) or "number" (finite).
    The defaults are those of a measurement: a finite number, DynamoDB N, Parquet double.
    """

    name: str  # the `readings` column (Parquet, Athena, DuckDB)
    attribute: str  # the SensorData item's attribute
    #: The payload v1 field, or None for a value the cloud adds (`source` says which).
    payload: str | None
    #: The payload must carry it. A cloud-made value is always there.
    required: bool = True
    #: Some items lack it: it is optional, or older items were written without it.
    #: None means "when it is optional".
    nullable: bool | None = None
    doc: str = ""  # the unit or meaning, the Glue column's comment
    kind: Literal["sensor_id", "integer", "number"] = "number"
    minimum: int | None = None
    below: int | None = None
    #: Said with an out-of-range value, so a dead letter tells the device's author the fix.
    meaning: str = ""
    #: What the AWS IoT rule selects, when not the payload field: an IoT SQL function.
    rule_sql: str | None = None
    dynamodb_type: Literal["S", "N"] = "N"
    arrow_type: str = "double"  # pyarrow type name, e.g. "string", "timestamp[ms]"
    athena_type: str = "double"  # DuckDB's comes from it (cloud.query.schema.duckdb_type)
    #: A Parquet encoding instead of the dictionary, e.g. DELTA.
    encoding: str | None = None
    #: The value's type in the tutorial's `sensor_data` table (struct columns over Data
    #: Pipeline JSON), for the three columns that table has; None leaves it out.
    tutorial_type: str | None = None

    def __post_init__(self) -> None:
        if self.nullable is None:
            object.__setattr__(self, "nullable", not self.required)
        if self.payload is None and self.rule_sql is None:
            raise ValueError(f"column {self.name}: no payload field and no rule_sql")

    @property
    def source(self) -> str:
        """What the rule's SELECT takes for it: the payload field or the IoT SQL function."""
        source = self.rule_sql or self.payload
        assert source is not None  # __post_init__ refuses a column with neither
        return source


#: The reading's columns, in the table's order (the item's, the rule's SELECT, Parquet's).
COLUMNS = (
    # The identity comes from the topic, which the broker's ACL / IoT policy ties to the
    # device's certificate; the payload's sensor_id is only checked against it.
    Column(
        "sensor_id",
        "SensorId",
        "sensor_id",
        doc="the device id (SensorId)",
        kind="sensor_id",
        rule_sql="topic(2)",
        dynamodb_type="S",
        arrow_type="string",
        athena_type="string",
        tutorial_type="string",
    ),
    # A time in seconds or microseconds would be written as a year no export can hold.
    Column(
        "time",
        "CurrentTime",
        "ts",
        doc="the reading's time (CurrentTime)",
        kind="integer",
        minimum=TS_MIN_MS,
        below=TS_MAX_MS,
        meaning="epoch milliseconds from 2000-01-01 up to 2100-01-01 UTC",
        arrow_type=TIME,
        athena_type="timestamp",
        encoding=DELTA,
        tutorial_type="bigint",
    ),
    Column(
        "temperature", "Temperature", "temperature", doc="degrees Celsius", tutorial_type="float"
    ),
    # Items written before devices counted their readings have no Seq.
    Column(
        "seq",
        "Seq",
        "seq",
        nullable=True,
        doc="per-device counter",
        kind="integer",
        minimum=0,
        arrow_type="int64",
        athena_type="bigint",
        encoding=DELTA,
    ),
    Column("humidity", "Humidity", "humidity", required=False, doc="percent"),
    Column("pressure", "Pressure", "pressure", required=False, doc="hPa"),
    # When the cloud received it (IoT SQL's timestamp()): exports take what arrived since
    # their last run by this, so readings a device kept offline for hours are not skipped.
    # Older items have none.
    Column(
        "received_at",
        "ReceivedAt",
        None,
        nullable=True,
        doc="when the cloud received it",
        kind="integer",
        rule_sql="timestamp()",
        arrow_type=TIME,
        athena_type="timestamp",
        encoding=DELTA,
    ),
)
