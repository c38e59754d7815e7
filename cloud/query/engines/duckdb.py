"""DuckDB in process over an export in a folder or on S3 (AWS, or the local stack's moto).

S3 goes through DuckDB's httpfs extension, loaded from the `duckdb-extension-httpfs`
package rather than downloaded (`INSTALL httpfs` needs the internet, which a laptop demo
or CI may not have). That package carries DuckDB's own signed build for one DuckDB version,
so pyproject pins duckdb to the same minor version.
"""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path
from urllib.parse import urlsplit

import boto3
import duckdb

from cloud.aws import DEFAULT_REGION, LOCAL_CREDENTIALS, Endpoint
from cloud.errors import QueryError
from cloud.export.layout import manifest_prefix
from cloud.export.location import ExportRoot
from cloud.query import schema
from cloud.query.engines import Param, QueryResult, first_line, is_data_file
from cloud.query.engines import sql_literal as _literal

HTTPFS_PACKAGE = "duckdb_extension_httpfs"

# The manifest area of `cloud export --method native` (cloud.export.spec.NATIVE); kept apart so
# reading an export never imports the exporter.
NATIVE = "native"

# A data file of a DynamoDB export, as a native export's manifest lists it.
_NATIVE_KEY = re.compile(
    r"^(?:[A-Za-z0-9!_.()=+,@~-]+/)*AWSDynamoDB/[A-Za-z0-9._-]+/data/[A-Za-z0-9._-]+$"
)

# Functions Athena (Trino) has and DuckDB names differently, so the ready-made reports and
# SQL written for Athena run here unchanged. Trino returns a zoned timestamp; ours is plain
# UTC, like the `readings` view's `time`.
_ATHENA_COMPAT_MACROS = (
    "CREATE OR REPLACE TEMP MACRO from_unixtime(x) AS to_timestamp(x)::TIMESTAMP",
)


class DuckDBEngine:
    """Views `sensor_data` and `readings` over the export, created only where data exists."""

    name = "duckdb"

    def __init__(self, data: ExportRoot, endpoint: Endpoint | None = None) -> None:
        self.data = data
        self._con = duckdb.connect(
            config={
                # Never reach for the network to fetch an extension: fail clearly instead.
                "autoinstall_known_extensions": False,
            }
        )
        try:
            # Plain timestamps are UTC; zoned ones print as UTC too. (TimeZone needs the
            # statically linked icu, which is loaded only after connect.)
            self._con.execute("SET TimeZone = 'UTC'")
            for macro in _ATHENA_COMPAT_MACROS:
                self._con.execute(macro)
            if data.is_s3:
                self._configure_s3(endpoint or Endpoint())
            self._tables = self._create_views()
        except BaseException:
            self._con.close()
            raise
        if not self._tables:
            self._con.close()
            raise QueryError(empty_export_message(data), "EmptyExport")

    def tables(self) -> frozenset[str]:
        return self._tables

    def execute(self, sql: str, params: list[Param] | None = None) -> QueryResult:
        try:
            cursor = self._con.execute(sql, params or None)
            columns = [d[0] for d in cursor.description] if cursor.description else []
            rows = cursor.fetchall() if columns else []
        except duckdb.CatalogException as exc:
            raise QueryError(f"{first_line(str(exc))} {self._tables_hint()}", "Catalog") from None
        except duckdb.Error as exc:
            raise QueryError(first_line(str(exc)), type(exc).__name__) from None
        return QueryResult(columns, rows)

    def close(self) -> None:
        self._con.close()

    def _tables_hint(self) -> str:
        missing = [t for t in schema.TABLES if t not in self._tables]
        hint = f"(tables in {self.data}: {', '.join(sorted(self._tables))}"
        for table in missing:
            hint += f"; {table} needs a `cloud export --format {schema.TABLE_FORMAT[table]}` there"
        return hint + ")"

    # -- views ----------------------------------------------------------------------------

    def _create_views(self) -> frozenset[str]:
        present = set()
        for table in schema.TABLES:
            base = schema.table_location(table, self.data)
            files = [
                f for f in self._files(schema.data_glob(table, self.data)) if is_data_file(f, base)
            ]
            if files:
                self._run(schema.duckdb_view(table, self.data, files))
                present.add(table)
        if schema.SENSOR_DATA not in present:
            files = self._dynamodb_export_files()
            if files:
                self._run(schema.duckdb_dynamodb_export_view(files))
                present.add(schema.SENSOR_DATA)
        return frozenset(present)

    def _dynamodb_export_files(self) -> list[str]:
        """The data files of the DynamoDB export here: those the newest `cloud export
        --method native` manifest names, else those of the one export folder found."""
        manifests = [
            f
            for f in self._files(self.data.join(manifest_prefix(NATIVE), "*.json"))
            if not f.endswith("/watermark.json")
        ]
        if manifests:
            # While DynamoDB writes a new snapshot, or before the old one is removed, a glob
            # sees two; the newest committed manifest (run ids sort by time) names one.
            return self._files_of_manifest(max(manifests))
        files = self._files(schema.dynamodb_export_files(self.data.url))
        if files:
            return files  # --data points at one export's own folder
        files = self._files(schema.dynamodb_export_files(self.data.join("AWSDynamoDB", "*")))
        exports = sorted({f.rsplit("/data/", 1)[0] for f in files})
        if len(exports) > 1:
            # Each export is a whole snapshot of the table: reading two would count twice.
            raise QueryError(
                f"{self.data} holds {len(exports)} DynamoDB exports; point --data at one: "
                + ", ".join(exports),
                "AmbiguousExport",
            )
        return files

    def _files_of_manifest(self, manifest: str) -> list[str]:
        try:
            row = self._con.execute("SELECT content FROM read_text(?)", [manifest]).fetchone()
            body = json.loads(row[0]) if row else {}
            keys = [str(f["key"]) for f in body.get("files", [])]
        except (duckdb.Error, ValueError, TypeError, KeyError, AttributeError) as exc:
            raise QueryError(f"cannot read the export manifest {manifest}: {exc}") from None
        bad = [k for k in keys if not _NATIVE_KEY.match(k)]
        if bad or not keys:
            raise QueryError(
                f"the export manifest {manifest} names no DynamoDB data files"
                + (f" (unexpected: {', '.join(bad[:3])})" if bad else ""),
                "BadManifest",
            )
        return [self.data.join(k) for k in keys]

    def _files(self, pattern: str) -> list[str]:
        try:
            cursor = self._con.execute("SELECT file FROM glob(?) ORDER BY file", [pattern])
            return [row[0] for row in cursor.fetchall()]
        except duckdb.Error as exc:
            raise QueryError(
                f"cannot list {self.data}: {first_line(str(exc))}", type(exc).__name__
            ) from None

    def _run(self, statement: str) -> None:
        try:
            self._con.execute(statement)
        except duckdb.Error as exc:
            raise QueryError(
                f"cannot read the export at {self.data}: {first_line(str(exc))}",
                type(exc).__name__,
            ) from None

    # -- S3 -------------------------------------------------------------------------------

    def _configure_s3(self, endpoint: Endpoint) -> None:
        self._con.execute(f"LOAD {_literal(str(httpfs_extension_path()))}")
        options = {"TYPE": "s3"}
        if endpoint.url:
            # moto (or another S3-compatible endpoint): host:port, path-style buckets.
            parts = urlsplit(endpoint.url)
            options["ENDPOINT"] = parts.netloc
            options["URL_STYLE"] = "path"
            options["USE_SSL"] = "true" if parts.scheme == "https" else "false"
        if endpoint.is_local:
            key, secret, token = (
                LOCAL_CREDENTIALS["aws_access_key_id"],
                LOCAL_CREDENTIALS["aws_secret_access_key"],
                None,
            )
            region = endpoint.region or DEFAULT_REGION
        else:
            session = boto3.session.Session()
            credentials = session.get_credentials()
            if credentials is None:
                raise QueryError(
                    f"no AWS credentials to read {self.data}: set AWS_PROFILE or "
                    "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY",
                    "NoCredentials",
                )
            frozen = credentials.get_frozen_credentials()
            key, secret, token = frozen.access_key, frozen.secret_key, frozen.token
            region = endpoint.region or session.region_name or DEFAULT_REGION
        options.update({"KEY_ID": key, "SECRET": secret, "REGION": region})
        if token:
            options["SESSION_TOKEN"] = token
        body = ", ".join(
            f"{name} {value if value in ('true', 'false') else _literal(value)}"
            for name, value in options.items()
        )
        self._con.execute(f"CREATE OR REPLACE TEMPORARY SECRET export_s3 ({body})")


def httpfs_extension_path() -> Path:
    """The httpfs build shipped by `duckdb-extension-httpfs` for this DuckDB version."""
    spec = importlib.util.find_spec(HTTPFS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise QueryError(
            f"reading s3:// with DuckDB needs the package duckdb-extension-httpfs=="
            f"{duckdb.__version__} (pip install it, or query a local folder)",
            "MissingExtension",
        )
    folder = Path(next(iter(spec.submodule_search_locations)))
    path = folder / "extensions" / f"v{duckdb.__version__}" / "httpfs.duckdb_extension"
    if not path.is_file():
        built = sorted(p.name for p in (folder / "extensions").glob("v*"))
        raise QueryError(
            f"duckdb-extension-httpfs has builds for {', '.join(built) or 'nothing'}, not "
            f"for duckdb {duckdb.__version__}: install matching versions",
            "MissingExtension",
        )
    return path


def empty_export_message(data: ExportRoot) -> str:
    return (
        f"no export data at {data}: expected sensor_data/ (datapipeline JSON lines), "
        "readings/dt=YYYY-MM-DD/*.parquet, or a DynamoDB export (AWSDynamoDB/<id>/data/); "
        f"write one with `cloud export --to {data}`"
    )
