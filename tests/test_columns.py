"""A new metric is one line in `device.columns.COLUMNS`, and every layer then carries it.

The layers build their tables from COLUMNS when they are imported, so the new line is added
in a fresh interpreter before anything else is imported (a reload here would give the other
tests' modules a second PayloadError class). That interpreter walks the metric through
each layer and reports what it saw; the assertions are made here.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from device.errors import PayloadError
from device.payload import parse_payload

ROOT = Path(__file__).resolve().parents[1]
TOPIC = "sensors/s-1/data"
BODY = {"v": 1, "sensor_id": "s-1", "ts": 1764345600123, "seq": 7, "temperature": 21.5}

#: The one new line, as a metric's author would write it.
NEW_COLUMN = 'Column("wind_speed", "WindSpeed", "wind_speed", required=False, doc="m/s")'

_WALK = """
import json, sys
import device.columns as columns

columns.COLUMNS = (*columns.COLUMNS, columns.{new_column})

import pyarrow as pa
import pyarrow.parquet as pq

from cloud.export import layout
from cloud.export.encoding import parquet_row, parquet_schema
from cloud.export.location import ExportRoot
from cloud.ingest.rule import CHECKS, rejected_rule_sql, rule_sql, to_item
from cloud.query import schema
from cloud.query.engines.duckdb import DuckDBEngine
from cloud.stack import template
from cloud.table import Row
from device.errors import PayloadError
from device.payload import OPTIONAL_METRICS, Reading, parse_payload

body = json.loads(sys.argv[1])
export = sys.argv[2]
seen = {{"optional_metrics": list(OPTIONAL_METRICS)}}

with_metric = json.dumps({{**body, "wind_speed": 3.5}}).encode()
seen["parsed"] = dict(parse_payload(with_metric, "s-1").metrics)
seen["sent"] = json.loads(Reading("s-1", 1, 0, 20.0, {{"wind_speed": 1.25}}).to_payload())
try:
    parse_payload(json.dumps({{**body, "wind_speed": "fast"}}).encode(), "s-1")
except PayloadError as err:
    seen["refused"] = err.reason
seen["without"] = dict(parse_payload(json.dumps(body).encode(), "s-1").metrics)

seen["rule_sql"] = rule_sql()
seen["rejected_rule_sql"] = rejected_rule_sql()
seen["checks"] = [[c.refusal, c.reasons] for c in CHECKS if "wind_speed" in c.sql]

item = to_item("sensors/s-1/data", with_metric, received_ms=1764345600500)
seen["item"] = item
seen["row_metrics"] = Row.from_item(item).metrics

parquet = parquet_schema()
seen["parquet_schema"] = [[f.name, str(f.type), f.nullable] for f in parquet]
row = parquet_row(item)
seen["parquet_row"] = row
folder = f"{{export}}/{{layout.data_prefix('parquet')}}/dt=2025-11-28"
__import__("os").makedirs(folder)
table = pa.Table.from_pylist([row], schema=parquet)
pq.write_table(table, f"{{folder}}/part-0.parquet", **layout.parquet_writer_options())

seen["athena_ddl"] = schema.athena_ddl(schema.READINGS, "s3://bucket/exports")
seen["duckdb_view"] = schema.duckdb_view(schema.READINGS, export)
engine = DuckDBEngine(ExportRoot(export))
seen["queried"] = engine.execute("SELECT sensor_id, wind_speed FROM readings").rows
engine.close()

glue = template.build()["Resources"]
seen["glue_readings"] = glue["ReadingsGlueTable"]["Properties"]["TableInput"][
    "StorageDescriptor"
]["Columns"]
seen["glue_sensor_data"] = glue["SensorDataGlueTable"]["Properties"]["TableInput"][
    "StorageDescriptor"
]["Columns"]
print(json.dumps(seen))
"""


@pytest.fixture(scope="module")
def seen(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """What each layer does with a reading once COLUMNS has the new line."""
    export = tmp_path_factory.mktemp("export")
    script = textwrap.dedent(_WALK.format(new_column=NEW_COLUMN))
    done = subprocess.run(
        [sys.executable, "-c", script, json.dumps(BODY), str(export)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def test_without_the_line_the_metric_is_an_unknown_field() -> None:
    with pytest.raises(PayloadError) as err:
        parse_payload(json.dumps({**BODY, "wind_speed": 3.5}).encode(), "s-1")
    assert err.value.reason == "unknown field"


def test_the_payload_accepts_and_checks_it(seen: dict[str, Any]) -> None:
    assert seen["optional_metrics"] == ["humidity", "pressure", "wind_speed"]
    assert seen["parsed"] == {"wind_speed": 3.5}
    assert seen["sent"]["wind_speed"] == 1.25
    assert seen["refused"] == "non-numeric wind_speed"
    assert seen["without"] == {}  # optional: a reading without it is still valid


def test_the_rule_selects_and_checks_it(seen: dict[str, Any]) -> None:
    select = seen["rule_sql"].split(" FROM ")[0]
    assert select.endswith(", timestamp() AS ReceivedAt, wind_speed AS WindSpeed")
    assert seen["checks"] == [["bad wind_speed", ["non-numeric wind_speed"]]]
    assert "'bad wind_speed'" in seen["rejected_rule_sql"]


def test_the_item_and_the_table_row_carry_it(seen: dict[str, Any]) -> None:
    assert seen["item"]["WindSpeed"] == {"N": "3.5"}
    assert seen["item"]["Temperature"] == {"N": "21.5"}
    assert seen["row_metrics"] == {"wind_speed": 3.5}


def test_the_parquet_schema_and_row_carry_it(seen: dict[str, Any]) -> None:
    assert seen["parquet_schema"][-1] == ["wind_speed", "double", True]
    assert [name for name, _, _ in seen["parquet_schema"][:2]] == ["sensor_id", "time"]
    assert seen["parquet_row"]["wind_speed"] == 3.5
    assert seen["parquet_row"]["seq"] == 7


def test_athena_and_duckdb_read_it(seen: dict[str, Any]) -> None:
    columns = seen["athena_ddl"].split(")\nPARTITIONED BY")[0]
    assert columns.rstrip().endswith("`wind_speed`  double")
    assert 'CAST("wind_speed" AS DOUBLE) AS "wind_speed"' in seen["duckdb_view"]
    assert seen["queried"] == [["s-1", 3.5]]


def test_the_glue_tables_carry_it(seen: dict[str, Any]) -> None:
    assert seen["glue_readings"][-1] == {"Name": "wind_speed", "Type": "double", "Comment": "m/s"}
    # The tutorial's table keeps its three columns: a metric joins it only if it says so.
    assert [c["Name"] for c in seen["glue_sensor_data"]] == [
        "sensorid",
        "currenttime",
        "temperature",
    ]
