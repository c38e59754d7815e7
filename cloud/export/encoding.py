"""How a table item becomes a line of the `datapipeline` format or a row of `parquet`.

**datapipeline** lines are what AWS Data Pipeline wrote: every attribute of the item with its
type in lower case and numbers as strings,
`{"SensorId":{"s":"sensor-1"},"CurrentTime":{"n":"1665678911000"},"Temperature":{"n":"23.5"}}`,
so the tutorial's `struct<s:string>` / openx JsonSerDe table reads them unchanged. They are not
gzipped, as Data Pipeline's were not: Athena and DuckDB would read `.json.gz` as well, but plain
files keep the tutorial's layout as it was and stay readable with `head` and `grep`; the
compact, fast layout is `parquet`.

**parquet** has the columns of `layout.PARQUET_COLUMNS` and is Hive-partitioned by the UTC day
of the reading's time (`dt=` is in the path, not in the files). Items without SensorId,
CurrentTime or a numeric Temperature cannot fill those non-null columns; they are skipped
and counted in the manifest.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import re
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from json.encoder import encode_basestring
from typing import Any

from cloud.export import layout
from device.columns import TS_MAX_MS, TS_MIN_MS

# AWS Data Pipeline serialised the Java SDK's AttributeValue bean, so its keys are that
# class's property names: lower-case types, and the odd `bOOL` and `nULLValue`.
_DATAPIPELINE_TYPES = {
    "S": "s",
    "N": "n",
    "B": "b",
    "SS": "ss",
    "NS": "ns",
    "BS": "bs",
    "M": "m",
    "L": "l",
    "BOOL": "bOOL",
    "NULL": "nULLValue",
}


def datapipeline_value(value: dict[str, Any]) -> dict[str, Any]:
    """One DynamoDB attribute value (boto3's low-level shape) in Data Pipeline's shape."""
    ((kind, inner),) = value.items()
    if kind == "M":
        inner = {k: datapipeline_value(v) for k, v in inner.items()}
    elif kind == "L":
        inner = [datapipeline_value(v) for v in inner]
    elif kind == "B":
        inner = base64.b64encode(inner).decode("ascii")
    elif kind == "BS":
        inner = [base64.b64encode(b).decode("ascii") for b in inner]
    return {_DATAPIPELINE_TYPES[kind]: inner}


#: The same encoder for every line: json.dumps with options builds a new one per call.
_LINE_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def datapipeline_line(item: dict[str, Any]) -> bytes:
    """The item as one line of Data Pipeline's JSON, exactly as json.dumps would write it.

    Our items hold only strings and numbers (S and N, whose value is a string too), so
    those are written by hand around json's own string escaper (the one json.dumps uses
    with ensure_ascii=False): about 2.7x faster, which the export's rate is made of.
    """
    parts = []
    for name, value in item.items():
        ((kind, inner),) = value.items()
        if kind == "S" or kind == "N":
            tag = _DATAPIPELINE_TYPES[kind]
            parts.append(f'{encode_basestring(name)}:{{"{tag}":{encode_basestring(inner)}}}')
        else:
            parts.append(
                f"{encode_basestring(name)}:{_LINE_ENCODER.encode(datapipeline_value(value))}"
            )
    return ("{" + ",".join(parts) + "}\n").encode()


def _int(value: dict[str, Any] | None) -> int | None:
    if value is None or "N" not in value:
        return None
    text = value["N"]
    try:
        return int(text)
    except ValueError:
        try:
            return int(Decimal(text))
        except InvalidOperation:
            return None


def time_out_of_range(item: dict[str, Any]) -> bool:
    """CurrentTime is a number but no reading's epoch ms (items without one are left to the
    writers: Parquet counts them as malformed, Data Pipeline lines carry what there is)."""
    ms = _int(item.get("CurrentTime"))
    return ms is not None and not TS_MIN_MS <= ms < TS_MAX_MS


def _float(value: dict[str, Any] | None) -> float | None:
    if value is None or "N" not in value:
        return None
    try:
        return float(value["N"])
    except ValueError:
        return None


def _string(value: dict[str, Any] | None) -> str | None:
    return value.get("S") if value else None


_READERS: dict[str, Callable[[dict[str, Any] | None], Any]] = {
    "sensor_id": _string,
    "integer": _int,
    "number": _float,
}
#: Parquet column -> item attribute and how to read it, one for each column of the layout.
_COLUMN_SOURCES = {c.name: (c.attribute, _READERS[c.kind]) for c in layout.PARQUET_COLUMNS}


def parquet_row(item: dict[str, Any]) -> dict[str, Any]:
    """The item's Parquet columns; a required one is None when the item cannot fill it."""
    return {name: read(item.get(attr)) for name, (attr, read) in _COLUMN_SOURCES.items()}


def received_at_ms(item: dict[str, Any]) -> int | None:
    """When the cloud received the item (what an incremental run selects by), if known."""
    return _int(item.get("ReceivedAt"))


_DAY_MS = 86_400_000
_TIMESTAMP = re.compile(r"^timestamp\[(s|ms|us|ns)(?:, tz=([^\]]+))?\]$")


def _arrow_type(name: str) -> Any:
    import pyarrow as pa  # type: ignore[import-untyped,unused-ignore]

    match = _TIMESTAMP.match(name)
    if match:
        return pa.timestamp(match.group(1), tz=match.group(2))
    return pa.type_for_alias(name)


def parquet_schema() -> Any:
    """The `readings` schema, from layout.PARQUET_COLUMNS (without the `dt` partition)."""
    import pyarrow as pa  # type: ignore[import-untyped,unused-ignore]

    return pa.schema(
        [
            pa.field(c.name, _arrow_type(c.arrow_type), nullable=c.nullable)
            for c in layout.PARQUET_COLUMNS
        ]
    )


def utc_day(ms: int, cache: dict[int, str]) -> str:
    number = ms // _DAY_MS
    day = cache.get(number)
    if day is None:
        day = dt.datetime.fromtimestamp(number * 86_400, dt.UTC).date().isoformat()
        cache[number] = day
    return day
