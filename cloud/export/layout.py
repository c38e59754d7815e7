"""Where exports put things, and the Parquet columns: the contract between export and query.

Under an export root (a folder or s3://bucket/prefix):

    <root>/sensor_data/...            datapipeline JSON lines (the tutorial's LOCATION)
    <root>/readings/dt=YYYY-MM-DD/... Parquet, Hive-partitioned by the reading's UTC day
    <root>/_manifests/<format>/...    run manifests and the watermark, never among the data

Only whole data files appear under the data prefixes, so Athena or DuckDB pointed at one
never reads a marker, a manifest, or half a file.
"""

from __future__ import annotations

from typing import Any

from device.columns import COLUMNS

FORMATS = ("datapipeline", "parquet")
DATA_PREFIX = {"datapipeline": "sensor_data", "parquet": "readings"}
MANIFEST_PREFIX = "_manifests"
PARTITION_KEY = "dt"  # dt=YYYY-MM-DD, the UTC day of the reading's time


#: The flat `readings` table holds every column of a reading (`device.columns.COLUMNS`,
#: which gives each its Arrow type and encoding), in their order; the partition column `dt`
#: comes last.
PARQUET_COLUMNS = COLUMNS


def parquet_writer_options() -> dict[str, Any]:
    """Keyword arguments for pyarrow's ParquetWriter: each column's encoding, the dictionary
    for the others (sensor ids, and temperatures of a few thousand distinct values)."""
    return {
        "use_dictionary": [c.name for c in PARQUET_COLUMNS if c.encoding is None],
        "column_encoding": {c.name: c.encoding for c in PARQUET_COLUMNS if c.encoding},
    }


def data_prefix(fmt: str) -> str:
    return DATA_PREFIX[fmt]


def manifest_prefix(fmt: str) -> str:
    return f"{MANIFEST_PREFIX}/{fmt}"
