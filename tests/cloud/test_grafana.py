"""The Grafana dashboard (config/grafana/sensor-readings.json) over a real parquet export.

A table on moto's DynamoDB is exported by `cloud export`'s own code to a folder; every
panel's SQL, its Athena-plugin macros expanded for a time range as the plugin expands them,
runs on DuckDB through `cloud query`'s engine, and each panel's rows are compared with what
the readings say it should show. A panel whose SQL stops matching the export's columns fails
here, as it would in Grafana.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from click.testing import CliRunner

from cloud.aws import Endpoint
from cloud.cli import main as cloud_main
from cloud.errors import ConfigError, QueryError
from cloud.export.encoding import parquet_schema
from cloud.export.run import run_export
from cloud.export.spec import ExportSpec
from cloud.query import schema
from cloud.query.engines.athena import CATALOG
from cloud.query.grafana import (
    DASHBOARD,
    PLUGIN_ID,
    PanelQuery,
    TimeRange,
    expand,
    load_dashboard,
    panel_queries,
    panel_query,
    panels,
)
from cloud.query.run import run_query
from cloud.table import create_table

PROVISIONING = DASHBOARD.parent / "athena-datasource.yaml"
DATASOURCE_REF = {"type": PLUGIN_ID, "uid": "${datasource}"}

TEMPERATURE = "Temperature per sensor"
LATEST = "Latest reading per sensor"
PER_HOUR = "Readings per hour"
HUMIDITY = "Humidity per sensor"

# -- the readings ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Reading:
    sensor: str
    time: dt.datetime  # UTC, naive: as DuckDB returns the table's timestamps
    temperature: float
    seq: int
    humidity: float | None


DAY_1 = dt.datetime(2025, 11, 28)
# The dashboard's range crosses midnight, so its panels read two dt= partitions.
WINDOW = TimeRange(
    dt.datetime(2025, 11, 28, 22, 30, tzinfo=dt.UTC),
    dt.datetime(2025, 11, 29, 2, 0, tzinfo=dt.UTC),
)
START, END = (w.replace(tzinfo=None) for w in (WINDOW.start, WINDOW.end))


def make_readings() -> list[Reading]:
    readings = []
    for s, (sensor, until_hour) in enumerate(
        (("sensor-0", 32), ("sensor-1", 32), ("sensor-2", 23))
    ):
        # Every 10 minutes from 20:00 until `until_hour` (hours from day 1's midnight); halves
        # and quarters are exact, so averages compare exactly.
        steps = (until_hour - 20) * 6
        for i in range(steps + 1):
            readings.append(
                Reading(
                    sensor,
                    DAY_1 + dt.timedelta(hours=20, minutes=10 * i),
                    15.0 + s + i * 0.25,
                    i,
                    None if sensor == "sensor-2" else 40.0 + (i % 8) * 0.5,
                )
            )
    # A second reading in one minute: the per-minute panels show the mean of the two.
    readings.append(
        Reading("sensor-0", DAY_1 + dt.timedelta(hours=23, seconds=30), 30.5, 1000, 55.0)
    )
    # Long before the range, in its own partition.
    readings.append(Reading("sensor-1", DAY_1 - dt.timedelta(days=8), -5.0, 2000, 10.0))
    return readings


READINGS = make_readings()
IN_RANGE = [r for r in READINGS if START <= r.time <= END]

#: A reading filed under a day its time is not in. No export writes that; it is here to show
#: each panel reads only the range's partitions, as Athena's projection on `dt` then does.
MISFILED = Reading("sensor-misfiled", DAY_1 + dt.timedelta(hours=23), 99.0, 0, 99.0)
MISFILED_DAY = "2025-11-20"


def ms(when: dt.datetime) -> int:
    return int(when.replace(tzinfo=dt.UTC).timestamp() * 1000)


def item(r: Reading) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "SensorId": {"S": r.sensor},
        "CurrentTime": {"N": str(ms(r.time))},
        "Temperature": {"N": repr(r.temperature)},
        "Seq": {"N": str(r.seq)},
        "ReceivedAt": {"N": str(ms(r.time) + 250)},
    }
    if r.humidity is not None:
        fields["Humidity"] = {"N": repr(r.humidity)}
    return fields


@pytest.fixture(scope="module")
def export(aws: Endpoint, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The readings in a table of their own, exported as `cloud export --format parquet`
    does, plus the misfiled file."""
    ddb = aws.client("dynamodb")
    table = f"SensorData-grafana-{uuid.uuid4().hex[:8]}"
    create_table(ddb, table)
    items = [item(r) for r in READINGS]
    for k in range(0, len(items), 25):
        batch = [{"PutRequest": {"Item": i}} for i in items[k : k + 25]]
        assert not ddb.batch_write_item(RequestItems={table: batch}).get("UnprocessedItems")
    root = tmp_path_factory.mktemp("grafana") / "export"
    result = run_export(aws, table, ExportSpec(str(root), fmt="parquet", settle_seconds=0))
    assert result.items == len(READINGS)

    folder = root / schema.table_prefix(schema.READINGS) / f"dt={MISFILED_DAY}"
    folder.mkdir(parents=True, exist_ok=True)  # sensor-1's old reading is there
    when = MISFILED.time.replace(tzinfo=dt.UTC)
    row = {
        "sensor_id": MISFILED.sensor,
        "time": when,
        "temperature": MISFILED.temperature,
        "seq": MISFILED.seq,
        "humidity": MISFILED.humidity,
        "pressure": None,
        "received_at": when,
    }
    pq.write_table(pa.Table.from_pylist([row], schema=parquet_schema()), folder / "x.parquet")
    return root


def panel_rows(export: Path, title: str) -> tuple[list[str], list[tuple[Any, ...]]]:
    sql = expand(panel_query(load_dashboard(), title).raw_sql, WINDOW)
    columns, rows = run_query(sql, export)
    return columns, rows


def minute(when: dt.datetime) -> dt.datetime:
    return when.replace(second=0, microsecond=0)


def per_minute_means(value: str) -> list[tuple[dt.datetime, str, float]]:
    groups: dict[tuple[dt.datetime, str], list[float]] = defaultdict(list)
    for r in IN_RANGE:
        v = getattr(r, value)
        if v is not None:
            groups[(minute(r.time), r.sensor)].append(v)
    return [(t, s, sum(vs) / len(vs)) for (t, s), vs in sorted(groups.items())]


# -- each panel's rows ----------------------------------------------------------------------


@pytest.mark.parametrize("query", panel_queries(load_dashboard()), ids=lambda q: q.panel)
def test_every_panel_runs_on_the_export_and_reads_only_the_range(
    export: Path, query: PanelQuery
) -> None:
    """Every query of the dashboard, whatever its panel: its columns exist in the export, it
    returns rows, and none is outside the range or the misfiled one."""
    sql = expand(query.raw_sql, WINDOW)
    columns, rows = run_query(sql, export)
    assert rows, sql
    assert MISFILED.sensor not in {v for row in rows for v in row}, rows
    if query.format == "time_series":
        # Grafana wants the time first, ascending, and a series per sensor from sensor_id.
        assert columns[:2] == ["time", "sensor_id"], columns
        times = [row[0] for row in rows]
        assert times == sorted(times)
        # Buckets of a minute or an hour: the first may start before the range does.
        assert all(START.replace(minute=0) <= t <= END for t in times), times


def test_temperature_panel_is_each_sensors_mean_per_minute_in_the_range(export: Path) -> None:
    columns, rows = panel_rows(export, TEMPERATURE)
    assert columns == ["time", "sensor_id", "temperature"]
    assert rows == per_minute_means("temperature")
    # The range's first and last readings are in (BETWEEN is inclusive), the next ones not.
    assert (START, "sensor-0", 15.0 + 15 * 0.25) in rows
    assert (END, "sensor-1", 16.0 + 36 * 0.25) in rows
    assert not [r for r in rows if r[0] > END or r[0] < START]
    # 23:00 holds two readings of sensor-0: 15 + 18 * 0.25 = 19.5 and 30.5.
    assert (DAY_1 + dt.timedelta(hours=23), "sensor-0", 25.0) in rows


def test_latest_panel_is_each_sensors_newest_reading_in_the_range(export: Path) -> None:
    columns, rows = panel_rows(export, LATEST)
    assert columns == ["sensor", "time", "temperature", "seq"]
    assert rows == [
        # sensor-0 and sensor-1 go on until 08:00 the next day: the range ends at 02:00.
        ("sensor-0", END, 15.0 + 36 * 0.25, 36),
        ("sensor-1", END, 16.0 + 36 * 0.25, 36),
        # sensor-2 stopped at 23:00.
        ("sensor-2", DAY_1 + dt.timedelta(hours=23), 17.0 + 18 * 0.25, 18),
    ]


def test_readings_per_hour_panel_counts_each_sensors_readings(export: Path) -> None:
    columns, rows = panel_rows(export, PER_HOUR)
    assert columns == ["time", "sensor_id", "readings"]
    counts = Counter((r.time.replace(minute=0, second=0), r.sensor) for r in IN_RANGE)
    assert rows == sorted((t, s, n) for (t, s), n in counts.items())
    hour_22 = DAY_1 + dt.timedelta(hours=22)
    # 22:30, 22:40, 22:50 of the 22:00 hour are in the range; the extra 23:00:30 reading counts.
    assert (hour_22, "sensor-0", 3) in rows
    assert (hour_22 + dt.timedelta(hours=1), "sensor-0", 7) in rows
    assert sum(n for _, _, n in rows) == len(IN_RANGE)


def test_humidity_panel_leaves_out_the_sensor_without_humidity(export: Path) -> None:
    columns, rows = panel_rows(export, HUMIDITY)
    assert columns == ["time", "sensor_id", "humidity"]
    assert rows == per_minute_means("humidity")
    assert {r[1] for r in rows} == {"sensor-0", "sensor-1"}


def test_the_expanded_sql_runs_in_cloud_query_as_grafana_sends_it(export: Path) -> None:
    sql = expand(panel_query(load_dashboard(), LATEST).raw_sql, WINDOW)
    result = CliRunner().invoke(
        cloud_main, ["query", "-", "--data", str(export), "--format", "json"], input=sql
    )
    assert result.exit_code == 0, result.output
    assert [json.loads(line) for line in result.stdout.splitlines()][-1] == {
        "sensor": "sensor-2",
        "time": "2025-11-28T23:00:00.000Z",
        "temperature": 21.5,
        "seq": 18,
    }


# -- the macros, as the plugin writes them out ----------------------------------------------

# The plugin's own documented examples (docs/sources/query-editor.md): 11:15:52 to 11:25:52.
DOC_RANGE = TimeRange(
    dt.datetime(2017, 7, 18, 11, 15, 52, 640_000, tzinfo=dt.UTC),
    dt.datetime(2017, 7, 18, 11, 25, 52, tzinfo=dt.UTC),
)


@pytest.mark.parametrize(
    ("macro", "sql"),
    [
        (
            "$__timeFilter(time)",
            "time BETWEEN TIMESTAMP '2017-07-18 11:15:52' AND TIMESTAMP '2017-07-18 11:25:52'",
        ),
        ("$__timeFrom()", "TIMESTAMP '2017-07-18 11:15:52'"),
        ("$__timeTo()", "TIMESTAMP '2017-07-18 11:25:52'"),
        ("$__rawTimeFrom('yyyy-MM-dd HH:mm:ss')", "'2017-07-18 11:15:52'"),
        ("$__rawTimeFrom()", "'2017-07-18 11:15:52'"),
        ("$__rawTimeTo('yyyy-MM-dd')", "'2017-07-18'"),
    ],
)
def test_macros_expand_as_the_plugin_expands_them(macro: str, sql: str) -> None:
    assert expand(f"SELECT 1 WHERE {macro}", DOC_RANGE) == f"SELECT 1 WHERE {sql}"


def test_every_panel_filters_the_partition_and_the_time() -> None:
    """The dt predicate is what lets Athena's projection skip the other days."""
    for query in panel_queries(load_dashboard()):
        sql = expand(query.raw_sql, WINDOW)
        assert "dt BETWEEN '2025-11-28' AND '2025-11-29'" in sql, query.panel
        assert (
            "time BETWEEN TIMESTAMP '2025-11-28 22:30:00' AND TIMESTAMP '2025-11-29 02:00:00'"
            in sql
        ), query.panel


@pytest.mark.parametrize(
    ("sql", "message"),
    [
        ("SELECT $__timeGroup(time, '5m')", "$__timeGroup is not supported: it expands to"),
        ("SELECT $__table", "$__table is not supported: the macros expanded here are"),
        ("SELECT 1 WHERE sensor_id = '$sensor'", "the Grafana variable $sensor"),
        ("SELECT 1 WHERE x = ${__interval}", "the Grafana variable ${__interval}"),
        ("SELECT $__timeFrom(time)", "$__timeFrom takes 0 argument(s), not 1"),
        ("SELECT $__rawTimeFrom('yyyy-MM-dd EEE')", "'EEE' is not one of yyyy, MM"),
        ("SELECT $__timeFilter(t, 'yyyy-MM-dd')", "DuckDB lacks"),
    ],
)
def test_what_is_not_expanded_is_refused_by_name(sql: str, message: str) -> None:
    with pytest.raises(QueryError) as caught:
        expand(sql, WINDOW)
    assert message in str(caught.value)


def test_a_range_that_ends_before_it_starts_is_refused() -> None:
    with pytest.raises(ConfigError, match="is after to"):
        TimeRange.parse("2025-11-29T00:00:00Z", "2025-11-28T00:00:00Z")


def test_an_unknown_panel_names_the_dashboards_panels() -> None:
    with pytest.raises(ConfigError) as caught:
        panel_query(load_dashboard(), "Pressure")
    assert str(caught.value) == (
        f"the dashboard has no panel 'Pressure'; its panels: "
        f"{TEMPERATURE}, {LATEST}, {PER_HOUR}, {HUMIDITY}"
    )


# -- the files Grafana reads ---------------------------------------------------------------


def test_the_dashboard_is_an_importable_grafana_dashboard_on_its_datasource_variable() -> None:
    dashboard = load_dashboard()
    assert dashboard["id"] is None  # Import gives it one
    assert dashboard["uid"] and dashboard["title"] and dashboard["schemaVersion"] >= 36
    assert dashboard["time"] == {"from": "now-24h", "to": "now"}
    (variable,) = dashboard["templating"]["list"]
    assert (variable["name"], variable["type"], variable["query"]) == (
        "datasource",
        "datasource",
        PLUGIN_ID,
    )
    shown = list(panels(dashboard))
    assert len({p["id"] for p in shown}) == len(shown) == 4
    for panel in shown:
        assert panel["datasource"] == DATASOURCE_REF, panel["title"]
        assert set(panel["gridPos"]) == {"h", "w", "x", "y"}
        assert panel["type"] in ("timeseries", "table")
        (target,) = panel["targets"]
        assert target["datasource"] == DATASOURCE_REF
        assert target["refId"] == "A"
        assert target["format"] == (1 if panel["type"] == "table" else 0)
        # The data source's own region, catalog and database (the provisioning file's).
        assert target["connectionArgs"] == {
            "region": "__default",
            "catalog": "__default",
            "database": "__default",
        }
        assert "FROM readings" in target["rawSQL"]


def test_the_provisioning_file_is_the_plugins_format_with_the_stacks_values() -> None:
    provisioning = yaml.safe_load(PROVISIONING.read_text())
    assert provisioning["apiVersion"] == 1
    (source,) = provisioning["datasources"]
    assert source["type"] == PLUGIN_ID
    # The dashboard's variable starts on this data source.
    (variable,) = load_dashboard()["templating"]["list"]
    assert source["uid"] == variable["current"]["value"]
    assert source["name"] == variable["current"]["text"]
    assert source["jsonData"] == {
        "authType": "default",
        "defaultRegion": "${AWS_REGION}",
        "catalog": CATALOG,
        # The variables `cloud query --engine athena` reads.
        "database": "${ATHENA_DATABASE}",
        "workgroup": "${ATHENA_WORKGROUP}",
        "outputLocation": "${ATHENA_OUTPUT}",
    }
