"""Where exports put things, and the Parquet columns: the contract between export and query.

Under an export root (a folder or s3://bucket/prefix):

    <root>/sensor_data/...            datapipeline JSON lines (the tutorial's LOCATION)
    <root>/readings/dt=YYYY-MM-DD/... Parquet, Hive-partitioned by the reading's UTC day
    <root>/_manifests/<format>/...    run manifests and the watermark, never among the data

Only whole data files appear under the data prefixes, so Athena or DuckDB pointed at one
never reads a marker, a manifest, or half a file.
"""

from __future__ import annotations

from dataclasses import dataclass

FORMATS = ("datapipeline", "parquet")
DATA_PREFIX = {"datapipeline": "sensor_data", "parquet": "readings"}
MANIFEST_PREFIX = "_manifests"
PARTITION_KEY = "dt"  # dt=YYYY-MM-DD, the UTC day of the reading's time


@dataclass(frozen=True)
class ParquetColumn:
    name: str
    arrow_type: str  # pyarrow type name, e.g. "string", "timestamp[ms, tz=UTC]"
    athena_type: str
    nullable: bool = False
    doc: str = ""


#: The flat `readings` table, in column order (the partition column `dt` comes last).
PARQUET_COLUMNS = (
    ParquetColumn("sensor_id", "string", "string", doc="the device id (SensorId)"),
    ParquetColumn(
        "time", "timestamp[ms, tz=UTC]", "timestamp", doc="the reading's time (CurrentTime)"
    ),
    ParquetColumn("temperature", "double", "double", doc="degrees Celsius"),
    ParquetColumn("seq", "int64", "bigint", nullable=True, doc="per-device counter"),
    ParquetColumn("humidity", "double", "double", nullable=True, doc="percent"),
    ParquetColumn("pressure", "double", "double", nullable=True, doc="hPa"),
    ParquetColumn(
        "received_at",
        "timestamp[ms, tz=UTC]",
        "timestamp",
        nullable=True,
        doc="when the cloud received it",
    ),
)


def data_prefix(fmt: str) -> str:
    return DATA_PREFIX[fmt]


def manifest_prefix(fmt: str) -> str:
    return f"{MANIFEST_PREFIX}/{fmt}"
