"""SQL engines over an export: DuckDB in process, or Athena on AWS. One interface for both.

An engine is bound to one export (`cloud.export.location.ExportRoot`) and exposes the tables
of `cloud.query.schema` whose data that export holds. User values reach SQL only as `?`
parameters (`Param`).
"""

from __future__ import annotations

import datetime as dt
from typing import Any, NamedTuple, Protocol

from cloud.export.location import ExportRoot

#: What may be bound to a `?` placeholder: each engine knows how to pass these as values.
Param = str | int | float | dt.datetime

ENGINES = ("duckdb", "athena")


class QueryResult(NamedTuple):
    columns: list[str]
    rows: list[tuple[Any, ...]]


class Engine(Protocol):
    """What `cloud.query.run` needs of an engine; both engines are bound to one export."""

    name: str
    data: ExportRoot

    def tables(self) -> frozenset[str]:
        """The schema tables this export has data for (never empty: opening fails first)."""
        ...

    def execute(self, sql: str, params: list[Param] | None = None) -> QueryResult: ...

    def close(self) -> None: ...


def is_data_file(path: str, base: str) -> bool:
    """Athena and Hive skip files and folders whose names start with `.` or `_` (temporary
    files, markers); so does the DuckDB engine, so both read the same rows. `path` lies
    under the folder `base` (which ends in '/')."""
    return not any(part.startswith((".", "_")) for part in path[len(base) :].split("/"))


def sql_literal(text: str) -> str:
    """A SQL string literal, for our own validated locations and settings only: user values
    are bound as parameters instead."""
    return "'" + text.replace("'", "''") + "'"


def first_line(message: str) -> str:
    """Engines explain over several lines (LINE 1: ..., a caret); a CLI error is one line."""
    return next((line.strip() for line in message.splitlines() if line.strip()), message)
