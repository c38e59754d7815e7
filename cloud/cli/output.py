"""What `cloud` commands print: one writer of rows as an aligned table, CSV or JSON lines.

Every command that prints rows (`cloud readings`, `cloud summary`, `cloud query` and its
reports, the local stack's parts) goes through `format_rows`, so a format means the same
everywhere and a reading's metrics (temperature, humidity, pressure) are in every one.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import math
from collections.abc import Iterable, Iterator, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

import click

from cloud.errors import ConfigError
from cloud.query.engines import QueryResult
from cloud.table import Row
from cloud.timeparse import iso_ms
from device.payload import OPTIONAL_METRICS

OUTPUT_FORMATS = ("table", "csv", "json")

#: A reading's columns in every format, each optional metric (device.columns) included; a
#: metric it did not carry is empty (null in JSON).
READING_COLUMNS = ("sensor_id", "time", "time_ms", "temperature", *OPTIONAL_METRICS, "seq")


def reading_values(row: Row) -> tuple[Any, ...]:
    metrics = (row.metrics.get(name) for name in OPTIONAL_METRICS)
    return (row.sensor_id, iso_ms(row.time_ms), row.time_ms, row.temperature, *metrics, row.seq)


def format_result(result: QueryResult, fmt: str) -> Iterator[str]:
    """A query's result as lines to print (see format_rows)."""
    return format_rows(result.columns, result.rows, fmt)


def format_rows(columns: Sequence[str], rows: Iterable[Sequence[Any]], fmt: str) -> Iterator[str]:
    """Lines to print: an aligned table, CSV with a header, or one JSON object per row.

    CSV and JSON go out row by row as `rows` yields them; a table needs them all first, for
    its widths.
    """
    if fmt == "json":
        for row in rows:
            yield json.dumps(
                {c: _json_value(v) for c, v in zip(columns, row, strict=True)},
                ensure_ascii=False,
            )
    elif fmt == "csv":
        yield _csv_line(columns)
        for row in rows:
            yield _csv_line([_text(v) for v in row])
    elif fmt == "table":
        kept = list(rows)
        cells = [[_text(v, table=True) for v in row] for row in kept]
        numeric = [
            all(isinstance(r[i], int | float | Decimal) or r[i] is None for r in kept)
            for i in range(len(columns))
        ]
        widths = [max([len(c), *(len(row[i]) for row in cells)]) for i, c in enumerate(columns)]

        def line(values: Sequence[str]) -> str:
            return "  ".join(
                v.rjust(w) if num else v.ljust(w)
                for v, w, num in zip(values, widths, numeric, strict=True)
            ).rstrip()

        yield line(columns)
        yield line(["-" * w for w in widths])
        for texts in cells:
            yield line(texts)
    else:
        raise ConfigError(f"--format: {fmt!r} is not one of {', '.join(OUTPUT_FORMATS)}")


def echo_rows(columns: Sequence[str], rows: Iterable[Sequence[Any]], fmt: str) -> None:
    for text in format_rows(columns, rows, fmt):
        click.echo(text)


def _csv_line(values: Sequence[Any]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="").writerow(values)
    return buffer.getvalue()


def _text(value: Any, table: bool = False) -> str:
    if value is None:
        return ""
    if isinstance(value, dt.datetime):
        return _iso(value)
    if isinstance(value, float) and table and math.isfinite(value):
        # Enough digits for a temperature or an average; CSV and JSON keep them all.
        text = f"{value:.4f}".rstrip("0")
        return text + "0" if text.endswith(".") else text
    if isinstance(value, dict | list):
        return json.dumps(_json_value(value), ensure_ascii=False)
    return str(value)


def _json_value(value: Any) -> Any:
    if value is None:
        return None  # SQL's NULL, a metric not measured: null, not "None"
    if isinstance(value, dt.datetime):
        return _iso(value)
    if isinstance(value, dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _json_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_value(v) for v in value]
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, str | int | float | bool):
        return value
    return str(value)


def _iso(value: dt.datetime) -> str:
    """Plain timestamps in our tables are UTC; say so, as `cloud readings` does."""
    if value.tzinfo is not None:
        value = value.astimezone(dt.UTC).replace(tzinfo=None)
    return value.isoformat(timespec="milliseconds") + "Z"


# -- lines about the command's own work ---------------------------------------------------


class Header:
    """A line on stderr that heads what follows (the target, progress events), printed only
    once something does follow: a command failing first prints its error alone."""

    def __init__(self, line: str) -> None:
        self._line: str | None = line

    def __call__(self, text: str | None = None) -> None:
        if self._line is not None:
            click.echo(self._line, err=True)
            self._line = None
        if text is not None:
            click.echo(text, err=True)


def size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def relative(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)
