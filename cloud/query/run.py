"""`cloud query`: SQL over an export, on DuckDB (in process) or Athena, and its output.

columns, rows = run_query("SELECT ... FROM sensor_data", "/path/to/export")
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from cloud import target as targets
from cloud.aws import Endpoint
from cloud.errors import ConfigError, QueryError
from cloud.export.location import ExportRoot, Where
from cloud.query.engines import ENGINES, Engine, Param, QueryResult
from cloud.query.engines.athena import AthenaSettings
from cloud.query.reports import Window, report_query

__all__ = [
    "ENGINES",
    "QueryResult",
    "QueryTarget",
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
