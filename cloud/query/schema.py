"""The export's tables, defined once: Athena's DDL and DuckDB's views both come from here.

(The statements are built from constants and `ExportRoot`s, hence the S608 waivers.)

- `sensor_data`: the tutorial's table over Data Pipeline JSON lines, struct columns
  (`sensorid.s`, `currenttime.n`, `temperature.n`), so its SQL runs unchanged on both engines.
- `readings`: flat typed columns over day-partitioned Parquet
  (`cloud.export.layout.PARQUET_COLUMNS`), with Athena partition projection on `dt` so no
  partition is ever registered by hand.

Locations are `ExportRoot`s (validated on construction), never text from user SQL.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from cloud.export.layout import DATA_PREFIX, PARQUET_COLUMNS, PARTITION_KEY
from cloud.export.location import ExportRoot
from cloud.query.engines import sql_literal as _literal
from device.columns import COLUMNS

SENSOR_DATA = "sensor_data"
READINGS = "readings"
TABLES = (SENSOR_DATA, READINGS)

#: Which export format fills which table (`cloud export --format`).
TABLE_FORMAT = {SENSOR_DATA: "datapipeline", READINGS: "parquet"}

#: How `sensor_data` reads the JSON lines, and `readings` the Parquet files (the Glue
#: tables of cloud.stack.template name them; Athena's DDL says STORED AS PARQUET).
JSON_SERDE = "org.openx.data.jsonserde.JsonSerDe"
PARQUET_SERDE = "org.apache.hadoop.hive.ql.io.parquet.serde.ParquetHiveSerDe"


@dataclass(frozen=True)
class JsonField:
    """One top-level key of a Data Pipeline line and its column in `sensor_data`."""

    key: str  # spelled as in the JSON: DuckDB matches JSON keys case-sensitively
    athena_type: str

    @property
    def column(self) -> str:
        return self.key.lower()  # what Athena calls it (Hive lower-cases column names)


#: The tutorial's columns, each a one-field struct named after its DynamoDB type.
SENSOR_DATA_FIELDS = tuple(
    JsonField(c.attribute, f"struct<{c.dynamodb_type.lower()}:{c.tutorial_type}>")
    for c in COLUMNS
    if c.tutorial_type is not None
)

#: Partition projection on `dt` starts here; readings before it are not seen by Athena.
PROJECTION_START = "2020-01-01"
#: Athena partition projection for `readings`: one partition per UTC day, none registered.
#: Athena computes the dt= prefixes itself, so no crawler or MSCK REPAIR is needed when an
#: export adds a day.
READINGS_PROJECTION = (
    ("projection.enabled", "true"),
    (f"projection.{PARTITION_KEY}.type", "date"),
    (f"projection.{PARTITION_KEY}.format", "yyyy-MM-dd"),
    (f"projection.{PARTITION_KEY}.range", f"{PROJECTION_START},NOW"),
    (f"projection.{PARTITION_KEY}.interval", "1"),
    (f"projection.{PARTITION_KEY}.interval.unit", "DAYS"),
)

_DUCKDB_TYPES = {
    "string": "VARCHAR",
    "bigint": "BIGINT",
    "int": "INTEGER",
    "float": "FLOAT",
    "double": "DOUBLE",
    "boolean": "BOOLEAN",
    "timestamp": "TIMESTAMP",
}
_STRUCT = re.compile(r"^struct<(.+)>$")


def duckdb_type(athena_type: str, upper_fields: bool = False) -> str:
    """The DuckDB spelling of an Athena type (flat structs only, which is all we declare).

    `upper_fields` gives struct fields as DynamoDB's own export spells them (`S`, `N`).
    """
    match = _STRUCT.match(athena_type)
    if not match:
        return _DUCKDB_TYPES[athena_type]
    fields = []
    for part in match.group(1).split(","):
        name, _, inner = part.partition(":")
        name = name.upper() if upper_fields else name
        fields.append(f'"{name}" {duckdb_type(inner)}')
    return f"STRUCT({', '.join(fields)})"


def _location(location: ExportRoot | str) -> ExportRoot:
    return location if isinstance(location, ExportRoot) else ExportRoot(location)


def table_prefix(table: str) -> str:
    """The folder under an export root that holds a table's files (`cloud.export.layout`)."""
    return DATA_PREFIX[TABLE_FORMAT[table]]


def table_location(table: str, location: ExportRoot | str) -> str:
    """Where a table's data lives under an export root, with the trailing slash Athena wants."""
    return _location(location).join(table_prefix(table)) + "/"


def data_glob(table: str, location: ExportRoot | str) -> str:
    """The files a table reads: every file under sensor_data/ (Data Pipeline names its files
    without an extension), and only `dt=*/*.parquet` under readings/."""
    base = table_location(table, location)
    return base + ("**" if table == SENSOR_DATA else f"{PARTITION_KEY}=*/*.parquet")


# -- Athena --------------------------------------------------------------------------------


def athena_ddl(table: str, location: ExportRoot | str) -> str:
    """CREATE EXTERNAL TABLE for `table` over the export rooted at `location`.

    For `sensor_data` this is the tutorial's statement, with LOCATION at the export's
    datapipeline prefix.
    """
    if table == SENSOR_DATA:
        columns = [(f.column, f.athena_type) for f in SENSOR_DATA_FIELDS]
        paths = ",".join(f.key for f in SENSOR_DATA_FIELDS)
        return (
            f"CREATE EXTERNAL TABLE IF NOT EXISTS {SENSOR_DATA} (\n"
            f"{_athena_columns(columns, quote=False)}\n"
            ")\n"
            f"ROW FORMAT SERDE {_literal(JSON_SERDE)}\n"
            f"with serdeproperties ('paths' = {_literal(paths)})\n"
            f"LOCATION {_literal(table_location(table, location))}"
        )
    if table == READINGS:
        columns = [(c.name, c.athena_type) for c in PARQUET_COLUMNS]
        where = table_location(table, location)
        properties = [
            *READINGS_PROJECTION,
            (
                "storage.location.template",
                f"{where}{PARTITION_KEY}=${{{PARTITION_KEY}}}/",
            ),
        ]
        props = ",\n".join(f"\t{_literal(k)} = {_literal(v)}" for k, v in properties)
        return (
            f"CREATE EXTERNAL TABLE IF NOT EXISTS {READINGS} (\n"
            f"{_athena_columns(columns, quote=True)}\n"
            ")\n"
            f"PARTITIONED BY (`{PARTITION_KEY}` string)\n"
            "STORED AS PARQUET\n"
            f"LOCATION {_literal(where)}\n"
            f"TBLPROPERTIES (\n{props}\n)"
        )
    raise ValueError(f"unknown table {table!r}; the tables are {', '.join(TABLES)}")


def _athena_columns(columns: list[tuple[str, str]], quote: bool) -> str:
    # Hive's DDL reserves words such as `time`, so the flat table's names are quoted.
    names = [f"`{n}`" if quote else n for n, _ in columns]
    width = max(len(n) for n in names)
    return ",\n".join(f"\t{n:<{width}} {t}" for n, (_, t) in zip(names, columns, strict=True))


# -- DuckDB --------------------------------------------------------------------------------


def _files_argument(files: str | Sequence[str]) -> str:
    if isinstance(files, str):
        return _literal(files)
    return "[" + ", ".join(_literal(f) for f in files) + "]"


def duckdb_view(table: str, location: ExportRoot | str, files: Sequence[str] | None = None) -> str:
    """CREATE VIEW giving `table` the same columns and types as its Athena table, over
    `files` (listed by the caller) or else every file `data_glob` matches."""
    files_arg = _files_argument(data_glob(table, location) if files is None else files)
    if table == SENSOR_DATA:
        spec = ", ".join(
            f"{_literal(f.key)}: {_literal(duckdb_type(f.athena_type))}" for f in SENSOR_DATA_FIELDS
        )
        select = ", ".join(f'"{f.key}" AS {f.column}' for f in SENSOR_DATA_FIELDS)
        return (
            f"CREATE OR REPLACE VIEW {SENSOR_DATA} AS SELECT {select} FROM read_json("  # noqa: S608
            f"{files_arg}, format = 'newline_delimited', columns = {{{spec}}})"
        )
    if table == READINGS:
        # Athena's columns are plain timestamps holding UTC, and so are the files' (layout):
        # there the cast is to the type the column already has, which DuckDB drops, so the
        # view costs nothing. Exports written before have timestamp[ms, tz=UTC]; DuckDB takes
        # a column's type from the first file and converts the others to it, and the cast
        # makes both plain: row by row (about a CPU-second over 5,000,000 readings) but
        # right, as the session's time zone is UTC. `cloud export --full` rewrites them.
        select = ", ".join(
            f'CAST("{c.name}" AS {duckdb_type(c.athena_type)}) AS "{c.name}"'
            for c in PARQUET_COLUMNS
        )
        return (
            f'CREATE OR REPLACE VIEW {READINGS} AS SELECT {select}, "{PARTITION_KEY}" '  # noqa: S608
            f"FROM read_parquet({files_arg}, hive_partitioning = true, "
            f"hive_types = {{{_literal(PARTITION_KEY)}: 'VARCHAR'}})"
        )
    raise ValueError(f"unknown table {table!r}; the tables are {', '.join(TABLES)}")


def duckdb_views(location: ExportRoot | str, tables: tuple[str, ...] = TABLES) -> list[str]:
    return [duckdb_view(table, location) for table in tables]


def dynamodb_export_files(export: str) -> str:
    """The data files of one DynamoDB export folder (`.../AWSDynamoDB/<export-id>`)."""
    return export.rstrip("/") + "/data/*.gz"  # AWS names them .json.gz, moto .gz


def duckdb_dynamodb_export_view(files: str | Sequence[str]) -> str:
    """`sensor_data` over DynamoDB's own export (`{"Item": {"SensorId": {"S": ...}}}` lines,
    gzip), given as a glob or a list of files: the same columns as over Data Pipeline's
    lower-case `s`/`n`."""
    item = ", ".join(
        f'"{f.key}" {duckdb_type(f.athena_type, upper_fields=True)}' for f in SENSOR_DATA_FIELDS
    )
    select = ", ".join(
        f'{{{_literal(_struct_field(f))}: "Item"."{f.key}"."{_struct_field(f).upper()}"}} '
        f"AS {f.column}"
        for f in SENSOR_DATA_FIELDS
    )
    return (
        f"CREATE OR REPLACE VIEW {SENSOR_DATA} AS SELECT {select} FROM read_json("  # noqa: S608
        f"{_files_argument(files)}, format = 'newline_delimited', "
        f"compression = 'gzip', columns = {{'Item': {_literal(f'STRUCT({item})')}}})"
    )


def _struct_field(field: JsonField) -> str:
    match = _STRUCT.match(field.athena_type)
    assert match is not None, field  # every sensor_data column is a one-field struct
    return match.group(1).partition(":")[0]
