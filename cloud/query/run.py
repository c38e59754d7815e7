"""`cloud query`: SQL over an export, on DuckDB (in process) or Athena, and its output.

columns, rows = run_query("SELECT ... FROM sensor_data", "/path/to/export")
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from cloud import target as targets
from cloud.aws import Endpoint
from cloud.errors import ConfigError
from cloud.export.location import ExportRoot, Where
from cloud.query.engines import (
    ENGINES,
    Engine,
    Param,
    QueryError,
    QueryResult,
)
from cloud.query.engines.athena import AthenaSettings
from cloud.query.reports import Window, report_query

__all__ = [
    "ENGINES",
    "QueryError",
    "QueryResult",
    "QueryTarget",
    "format_result",
    "open_engine",
    "resolve_target",
    "run_query",
    "run_report",
]


@dataclass(frozen=True)
class QueryTarget:
    """What a query reads, and the AWS endpoint to read it through."""

    data: ExportRoot
    endpoint: Endpoint


def resolve_target(
    data: str | None, target: str | None = None, endpoint_url: str | None = None
) -> QueryTarget:
    """--data if given, else the local stack's exports folder; a folder needs no AWS at all."""
    if data is not None:
        location = ExportRoot.to_read(data)
        if not location.is_s3:
            return QueryTarget(location, Endpoint())
    chosen = targets.resolve(target, endpoint_url)
    if chosen.stack is not None and data is None and not chosen.stack.exports_dir.is_dir():
        # Not "--data: ... is not a folder": the user gave no --data.
        raise ConfigError(
            f"no export yet in {chosen.stack.exports_dir}: `cloud export` writes the local "
            "stack's table there (or give --data DIR)"
        )
    location = ExportRoot.to_read(chosen.exports(data, "--data"))
    if chosen.stack is not None:
        return QueryTarget(location, Endpoint())
    return QueryTarget(location, chosen.endpoint)


def open_engine(
    engine: str,
    data: Where,
    endpoint: Endpoint | None = None,
    athena: AthenaSettings | None = None,
) -> Engine:
    """An engine over the export at `data`; close it when done (or use `engine_for`)."""
    location = ExportRoot.of(data)
    if engine == "duckdb":
        from cloud.query.engines.duckdb import DuckDBEngine

        return DuckDBEngine(location, endpoint)
    if engine == "athena":
        from cloud.query.engines.athena import AthenaEngine

        return AthenaEngine(location, endpoint or Endpoint(), athena or AthenaSettings.resolve())
    raise ConfigError(f"--engine: {engine!r} is not one of {', '.join(ENGINES)}")


@contextmanager
def engine_for(
    engine: str,
    data: Where,
    endpoint: Endpoint | None = None,
    athena: AthenaSettings | None = None,
) -> Iterator[Engine]:
    opened = open_engine(engine, data, endpoint, athena)
    try:
        yield opened
    finally:
        opened.close()


def run_query(
    sql: str,
    data_location: Where,
    engine: str = "duckdb",
    params: Sequence[Param] | None = None,
    *,
    endpoint: Endpoint | None = None,
    athena: AthenaSettings | None = None,
) -> QueryResult:
    """Run `sql` (with `?` bound to `params`) over the export; (columns, rows)."""
    if not sql.strip():
        raise QueryError("the SQL is empty", "Empty")
    with engine_for(engine, data_location, endpoint, athena) as opened:
        return opened.execute(sql, list(params) if params else None)


def run_report(
    name: str,
    data_location: Where,
    window: Window | None = None,
    engine: str = "duckdb",
    *,
    endpoint: Endpoint | None = None,
    athena: AthenaSettings | None = None,
) -> QueryResult:
    with engine_for(engine, data_location, endpoint, athena) as opened:
        sql, params = report_query(name, opened.tables(), window or Window())
        return opened.execute(sql, params)


# -- output ----------------------------------------------------------------------------


def format_result(result: QueryResult, fmt: str) -> Iterator[str]:
    """Lines to print: an aligned table, CSV with a header, or one JSON object per row."""
    if fmt == "json":
        for row in result.rows:
            yield json.dumps(
                {c: _json_value(v) for c, v in zip(result.columns, row, strict=True)},
                ensure_ascii=False,
            )
    elif fmt == "csv":
        for values in [result.columns, *([_text(v) for v in r] for r in result.rows)]:
            buffer = io.StringIO()
            csv.writer(buffer, lineterminator="").writerow(values)
            yield buffer.getvalue()
    elif fmt == "table":
        cells = [[_text(v, table=True) for v in row] for row in result.rows]
        numeric = [
            all(isinstance(r[i], int | float | Decimal) or r[i] is None for r in result.rows)
            for i in range(len(result.columns))
        ]
        widths = [
            max([len(c), *(len(row[i]) for row in cells)]) for i, c in enumerate(result.columns)
        ]

        def line(values: list[str]) -> str:
            return "  ".join(
                v.rjust(w) if num else v.ljust(w)
                for v, w, num in zip(values, widths, numeric, strict=True)
            ).rstrip()

        yield line(list(result.columns))
        yield line(["-" * w for w in widths])
        for texts in cells:
            yield line(texts)
    else:
        raise ConfigError(f"--format: {fmt!r} is not one of table, csv, json")


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
