"""Athena over an export on S3: the tables of `cloud.query.schema`, then the query, then its rows.

Settings: flag > environment (ATHENA_WORKGROUP, ATHENA_DATABASE, ATHENA_OUTPUT) > default.
Tables are (re)created only when Glue does not already hold them at this export's location,
so pointing --data at another export never leaves a table reading the old one.
"""

from __future__ import annotations

import datetime as dt
import math
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError

from cloud.aws import Endpoint
from cloud.errors import ConfigError, QueryError, aws_code, aws_message
from cloud.export.location import ExportRoot
from cloud.query import schema
from cloud.query.engines import Param, QueryResult, first_line, is_data_file

DEFAULT_WORKGROUP = "primary"
DEFAULT_DATABASE = "sensor_pipeline"
CATALOG = "AwsDataCatalog"
PAGE_SIZE = 1000  # GetQueryResults' maximum

_DATABASE = re.compile(r"^[a-z0-9_]{1,255}$")
_WORKGROUP = re.compile(r"^[a-zA-Z0-9._-]{1,128}$")


@dataclass(frozen=True)
class AthenaSettings:
    workgroup: str = DEFAULT_WORKGROUP
    database: str = DEFAULT_DATABASE
    #: s3://... for result files; None leaves it to the workgroup's own setting.
    output: str | None = None
    first_poll: float = 0.2
    max_poll: float = 5.0
    timeout: float = 900.0

    def __post_init__(self) -> None:
        if not _DATABASE.match(self.database):
            raise ConfigError(
                f"database {self.database!r}: use lower-case letters, digits and _ "
                "(--database or ATHENA_DATABASE)"
            )
        if not _WORKGROUP.match(self.workgroup):
            raise ConfigError(
                f"workgroup {self.workgroup!r} is not a workgroup name "
                "(--workgroup or ATHENA_WORKGROUP)"
            )
        if self.output is not None and not self.output.startswith("s3://"):
            raise ConfigError(
                f"output {self.output!r}: give s3://BUCKET/PREFIX/ "
                "(--athena-output or ATHENA_OUTPUT)"
            )

    @classmethod
    def resolve(
        cls,
        workgroup: str | None = None,
        database: str | None = None,
        output: str | None = None,
        default_output: str | None = None,
    ) -> AthenaSettings:
        env = os.environ
        return cls(
            workgroup=workgroup or env.get("ATHENA_WORKGROUP") or DEFAULT_WORKGROUP,
            database=database or env.get("ATHENA_DATABASE") or DEFAULT_DATABASE,
            output=output or env.get("ATHENA_OUTPUT") or default_output,
        )


def athena_literal(value: Param) -> str:
    """An ExecutionParameters entry: Athena takes each as one SQL literal, so a string is
    quoted (its quotes doubled) and can never become SQL of its own."""
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise QueryError(f"parameter {value!r} is not a finite number", "BadParameter")
        return repr(value)
    if isinstance(value, dt.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(dt.UTC).replace(tzinfo=None)
        return f"TIMESTAMP '{value.isoformat(sep=' ', timespec='milliseconds')}'"
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    raise QueryError(f"parameter {value!r}: unsupported type {type(value).__name__}")


class AthenaEngine:
    name = "athena"

    def __init__(
        self,
        data: ExportRoot,
        endpoint: Endpoint,
        settings: AthenaSettings,
        *,
        clients: dict[str, Any] | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not data.is_s3:
            raise ConfigError(
                f"--engine athena reads S3 only, not {data}; use the duckdb engine for a folder"
            )
        self.data = data
        self.settings = settings
        clients = clients or {}
        self._athena = clients.get("athena") or endpoint.client("athena")
        self._glue = clients.get("glue") or endpoint.client("glue")
        self._s3 = clients.get("s3") or endpoint.client("s3")
        self._sleep = sleep
        self._clock = clock
        self._tables: frozenset[str] | None = None
        self._prepared = False
        #: Every QueryExecutionId this engine started, in order (DDL included).
        self.executions: list[str] = []

    def tables(self) -> frozenset[str]:
        if self._tables is None:
            present = frozenset(t for t in schema.TABLES if self._has_data(t))
            if not present:
                raise QueryError(
                    f"no export data at {self.data}: expected sensor_data/ (datapipeline) or "
                    f"readings/ (parquet); write one with `cloud export --to {self.data}`",
                    "EmptyExport",
                )
            self._tables = present
        return self._tables

    def execute(self, sql: str, params: list[Param] | None = None) -> QueryResult:
        self.prepare()
        query_id = self.start(sql, params)
        execution = self.wait(query_id)
        return self.fetch(query_id, execution.get("StatementType", "DML"))

    def close(self) -> None:
        """Nothing to release: boto3 clients close their pools themselves."""

    # -- the tables -----------------------------------------------------------------------

    def prepare(self) -> None:
        """Create the database, and each table with data here unless Glue has it already."""
        if self._prepared:
            return
        tables = self.tables()
        db = self.settings.database
        if not self._glue_has_database(db):
            # No database context: it is the thing that does not exist yet.
            self._run_ddl(f"CREATE DATABASE IF NOT EXISTS {db}", in_database=False)
        for table in sorted(tables):
            current = self._glue_location(db, table)
            wanted = schema.table_location(table, self.data)
            if current is not None and current.rstrip("/") == wanted.rstrip("/"):
                continue
            if current is not None:
                # An external table's DROP removes only the definition, never the data.
                self._run_ddl(f"DROP TABLE IF EXISTS {table}")
            self._run_ddl(schema.athena_ddl(table, self.data))
        self._prepared = True

    def _run_ddl(self, statement: str, in_database: bool = True) -> None:
        self.wait(self.start(statement, in_database=in_database))

    def _has_data(self, table: str) -> bool:
        prefix = f"{self.data.key_prefix}{schema.table_prefix(table)}/"
        try:
            # One page (up to 1,000 keys) is enough: a prefix holding only markers is small.
            page = self._s3.list_objects_v2(Bucket=self.data.bucket, Prefix=prefix)
        except ClientError as exc:
            raise QueryError(f"cannot list {self.data}: {exc}", _code(exc)) from None
        return any(is_data_file(o["Key"], prefix) for o in page.get("Contents", []))

    def _glue_has_database(self, db: str) -> bool:
        try:
            self._glue.get_database(Name=db)
        except ClientError as exc:
            if aws_code(exc) == "EntityNotFoundException":
                return False
            raise QueryError(f"cannot read database {db}: {exc}", _code(exc)) from None
        return True

    def _glue_location(self, db: str, table: str) -> str | None:
        try:
            found = self._glue.get_table(DatabaseName=db, Name=table)
        except ClientError as exc:
            if aws_code(exc) == "EntityNotFoundException":
                return None
            raise QueryError(f"cannot read table {db}.{table}: {exc}", _code(exc)) from None
        return str(found["Table"].get("StorageDescriptor", {}).get("Location", ""))

    # -- one query ------------------------------------------------------------------------

    def start(self, sql: str, params: list[Param] | None = None, in_database: bool = True) -> str:
        kwargs: dict[str, Any] = {"QueryString": sql, "WorkGroup": self.settings.workgroup}
        if in_database:
            kwargs["QueryExecutionContext"] = {
                "Database": self.settings.database,
                "Catalog": CATALOG,
            }
        if self.settings.output:
            kwargs["ResultConfiguration"] = {"OutputLocation": self.settings.output}
        if params:
            kwargs["ExecutionParameters"] = [athena_literal(p) for p in params]
        try:
            query_id = str(self._athena.start_query_execution(**kwargs)["QueryExecutionId"])
        except ClientError as exc:
            message = first_line(aws_message(exc))
            if "output location" in message.lower():
                message += " (set --athena-output or ATHENA_OUTPUT to s3://BUCKET/PREFIX/)"
            raise QueryError(f"Athena refused the query: {message}", _code(exc)) from None
        self.executions.append(query_id)
        return query_id

    def wait(self, query_id: str) -> dict[str, Any]:
        """Poll with capped exponential backoff until the query ends; its QueryExecution."""
        delay = self.settings.first_poll
        deadline = self._clock() + self.settings.timeout
        while True:
            execution: dict[str, Any] = self._athena.get_query_execution(QueryExecutionId=query_id)[
                "QueryExecution"
            ]
            status = execution["Status"]
            state = status["State"]
            if state == "SUCCEEDED":
                return execution
            if state in ("FAILED", "CANCELLED"):
                reason = (
                    status.get("StateChangeReason")
                    or status.get("AthenaError", {}).get("ErrorMessage")
                    or "no reason given"
                )
                verb = "failed" if state == "FAILED" else "was cancelled"
                raise QueryError(f"Athena query {query_id} {verb}: {first_line(reason)}", state)
            if self._clock() + delay > deadline:
                self._athena.stop_query_execution(QueryExecutionId=query_id)
                raise QueryError(
                    f"Athena query {query_id} still {state} after {self.settings.timeout:g}s; "
                    "stopped it",
                    "Timeout",
                )
            self._sleep(delay)
            delay = min(self.settings.max_poll, delay * 2)

    def fetch(self, query_id: str, statement_type: str = "DML") -> QueryResult:
        """Every page of the results; a SELECT's first row repeats the column names."""
        kwargs: dict[str, Any] = {"QueryExecutionId": query_id, "MaxResults": PAGE_SIZE}
        columns: list[str] = []
        types: list[str] = []
        rows: list[tuple[Any, ...]] = []
        first = True
        while True:
            try:
                page = self._athena.get_query_results(**kwargs)
            except ClientError as exc:
                raise QueryError(
                    f"cannot read the results of {query_id}: {exc}", _code(exc)
                ) from None
            result = page["ResultSet"]
            if first:
                info = result.get("ResultSetMetadata", {}).get("ColumnInfo", [])
                columns = [c.get("Label") or c["Name"] for c in info]
                types = [c.get("Type", "varchar").lower() for c in info]
            page_rows = result.get("Rows", [])
            if first and statement_type == "DML" and page_rows:
                page_rows = page_rows[1:]
            first = False
            rows.extend(_convert(row["Data"], types) for row in page_rows)
            token = page.get("NextToken")
            if not token:
                return QueryResult(columns, rows)
            kwargs["NextToken"] = token


def _convert(data: list[dict[str, str]], types: list[str]) -> tuple[Any, ...]:
    """Athena returns every value as text; give numbers and times their Python types."""
    values: list[Any] = []
    for i, cell in enumerate(data):
        text = cell.get("VarCharValue")
        kind = types[i] if i < len(types) else "varchar"
        values.append(None if text is None else _typed(text, kind))
    return tuple(values)


def _typed(text: str, kind: str) -> Any:
    try:
        if kind in ("tinyint", "smallint", "integer", "int", "bigint"):
            return int(text)
        if kind in ("double", "float", "real") or kind.startswith("decimal"):
            return float(text)
        if kind == "boolean":
            return text.lower() == "true"
        if kind.startswith("timestamp"):
            return dt.datetime.fromisoformat(text.replace(" UTC", "+00:00"))
    except ValueError:
        return text
    return text


def _code(exc: ClientError) -> str:
    return aws_code(exc) or "ClientError"
