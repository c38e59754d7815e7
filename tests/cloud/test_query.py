"""`cloud query` over exports written here by hand in cloud/export/layout.py's layout (not by
the exporter, so these tests pin the layout contract itself): DuckDB in process, over a
folder and over S3 on the moto server."""

from __future__ import annotations

import datetime as dt
import gzip
import json
import time
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner, Result

from cloud.aws import Endpoint
from cloud.cli import main
from cloud.cli.output import format_result
from cloud.errors import ConfigError, QueryError
from cloud.export.layout import PARQUET_COLUMNS
from cloud.export.location import ExportRoot
from cloud.local.state import StackState
from cloud.query import run as query_module
from cloud.query import schema
from cloud.query.reports import Window, report_query
from cloud.query.run import resolve_target, run_query, run_report
from cloud.target import Target

# -- the data -------------------------------------------------------------------------------

# 2023-11-14T22:00:00Z: the readings run past midnight, so the parquet export has two days.
BASE = 1_699_999_200_000
HALF_HOUR = 1_800_000

Reading = tuple[str, int, float, int]  # sensor, epoch ms, °C, seq

READINGS: list[Reading] = [
    # sensor-1 lost seq 3 (23:30): one gap. Halves and quarters are exact in float32, so the
    # tutorial's `temperature struct<n:float>` averages exactly too.
    *(("sensor-1", BASE + s * HALF_HOUR, 20.0 + s * 0.5, s) for s in (0, 1, 2, 4, 5, 6, 7)),
    *(("sensor-2", BASE + s * 3 * HALF_HOUR // 2, 30.25 - s, s) for s in range(4)),
]
INJECTION = "x' OR '1'='1"
TUTORIAL_SQL = (
    "SELECT sensorid.s AS sensor, count(*), avg(temperature.n) FROM sensor_data GROUP BY 1"
)


def per_sensor(rows: Iterable[Reading] = READINGS) -> dict[str, list[Reading]]:
    by: dict[str, list[Reading]] = defaultdict(list)
    for row in rows:
        by[row[0]].append(row)
    return dict(sorted(by.items()))


def utc(ms: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).replace(tzinfo=None)


def datapipeline_line(sensor: str, ms: int, temp: float, seq: int) -> str:
    item = {
        "SensorId": {"s": sensor},
        "CurrentTime": {"n": str(ms)},
        "Temperature": {"n": repr(temp)},
        "Seq": {"n": str(seq)},
    }
    return json.dumps(item, separators=(",", ":"))


def write_datapipeline(root: Path, rows: list[Reading] = READINGS) -> None:
    """Two data files (one named as Data Pipeline named them, without an extension), plus
    what Athena skips: a marker and a half-written temporary file that is not JSON."""
    folder = root / "sensor_data"
    folder.mkdir(parents=True, exist_ok=True)
    half = len(rows) // 2
    for name, part in (("9f1c2d3e-a0b1", rows[:half]), ("run-1-00000.json", rows[half:])):
        (folder / name).write_text("".join(datapipeline_line(*r) + "\n" for r in part))
    (folder / "_SUCCESS").write_text("")
    (folder / ".run-1-00001.json.1a2b.tmp").write_text('{"SensorId": {"s": "half-writ')


_ARROW = {
    "string": pa.string(),
    "double": pa.float64(),
    "int64": pa.int64(),
    "timestamp[ms]": pa.timestamp("ms"),
}
#: What exports wrote for `time` and `received_at` before they were plain timestamps.
ZONED = pa.timestamp("ms", tz="UTC")


def write_parquet(
    root: Path, rows: list[Reading] = READINGS, zoned_days: tuple[str, ...] = ()
) -> None:
    """readings/dt=YYYY-MM-DD/*.parquet with layout.PARQUET_COLUMNS (no dt in the files);
    the days in `zoned_days` with the times as the exports of before wrote them."""
    arrow_schema = pa.schema(
        [pa.field(c.name, _ARROW[c.arrow_type], nullable=c.nullable) for c in PARQUET_COLUMNS]
    )
    zoned_schema = pa.schema(
        [f.with_type(ZONED) if pa.types.is_timestamp(f.type) else f for f in arrow_schema]
    )
    days: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for sensor, ms, temp, seq in rows:
        when = dt.datetime.fromtimestamp(ms / 1000, dt.UTC)
        days[when.date().isoformat()].append(
            {
                "sensor_id": sensor,
                "time": when,
                "temperature": temp,
                "seq": seq,
                "humidity": 40.0 + seq,
                "pressure": None,
                "received_at": when + dt.timedelta(milliseconds=150),
            }
        )
    for day, items in days.items():
        folder = root / "readings" / f"dt={day}"
        folder.mkdir(parents=True, exist_ok=True)
        kind = zoned_schema if day in zoned_days else arrow_schema
        pq.write_table(pa.Table.from_pylist(items, schema=kind), folder / "part-0.parquet")
    manifests = root / "_manifests" / "parquet"
    manifests.mkdir(parents=True, exist_ok=True)
    (manifests / "run-1.json").write_text('{"not": "data"}')


def write_export(root: Path, formats: tuple[str, ...] = ("datapipeline", "parquet")) -> Path:
    if "datapipeline" in formats:
        write_datapipeline(root)
    if "parquet" in formats:
        write_parquet(root)
    return root


@pytest.fixture
def export(tmp_path: Path) -> Path:
    return write_export(tmp_path / "export")


@pytest.fixture
def pipeline_export(tmp_path: Path) -> Path:
    return write_export(tmp_path / "pipeline", ("datapipeline",))


def cloud(*args: str, input: str | None = None) -> Result:
    return CliRunner().invoke(main, list(args), input=input)


def failed_with_one_line(result: Result, code: int = 1) -> str:
    assert result.exit_code == code, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 if code == 1 else lines, result.stderr
    return result.stderr


# -- the tutorial's SQL, and the flat table ---------------------------------------------------


def expected_counts_and_averages() -> list[tuple[str, int, float]]:
    return [
        (sensor, len(rows), sum(r[2] for r in rows) / len(rows))
        for sensor, rows in per_sensor().items()
    ]


def test_the_tutorials_sql_runs_unchanged_on_the_datapipeline_layout(export: Path):
    columns, rows = run_query(TUTORIAL_SQL + " ORDER BY 1", export)
    assert columns[0] == "sensor"
    assert [tuple(r) for r in rows] == expected_counts_and_averages()


def test_sensor_data_has_athenas_columns_and_values(export: Path):
    columns, rows = run_query(
        "SELECT * FROM sensor_data WHERE sensorid.s = ? ORDER BY currenttime.n",
        export,
        params=["sensor-2"],
    )
    assert columns == ["sensorid", "currenttime", "temperature"]
    assert rows[0] == ({"s": "sensor-2"}, {"n": BASE}, {"n": 30.25})
    assert len(rows) == 4


def test_readings_gives_the_same_answers_with_athenas_types(export: Path):
    columns, rows = run_query(
        "SELECT sensor_id, count(*), avg(temperature) FROM readings GROUP BY 1 ORDER BY 1", export
    )
    assert [tuple(r) for r in rows] == expected_counts_and_averages()
    columns, rows = run_query("SELECT * FROM readings ORDER BY time, sensor_id LIMIT 1", export)
    assert columns == [c.name for c in PARQUET_COLUMNS] + ["dt"]
    first = dict(zip(columns, rows[0], strict=True))
    # Plain UTC timestamps, as Athena's `timestamp` columns; dt is Athena's partition string.
    assert first["time"] == utc(BASE) and first["dt"] == "2023-11-14"
    assert first["received_at"] == utc(BASE + 150)
    described = run_query("DESCRIBE readings", export).rows
    assert [(r[0], r[1]) for r in described] == [
        *((c.name, schema.duckdb_type(c.athena_type)) for c in PARQUET_COLUMNS),
        ("dt", "VARCHAR"),
    ]


def test_only_the_tables_with_data_exist(pipeline_export: Path):
    with query_module.engine_for("duckdb", pipeline_export) as engine:
        assert engine.tables() == {"sensor_data"}
    with pytest.raises(QueryError, match=r"readings does not exist.*--format parquet"):
        run_query("SELECT count(*) FROM readings", pipeline_export)


def test_athena_functions_used_by_the_reports_exist_locally(export: Path):
    _, rows = run_query(
        "SELECT from_unixtime(currenttime.n / 1e3) FROM sensor_data ORDER BY 1 LIMIT 1", export
    )
    assert rows == [(utc(BASE),)]


# -- reports ------------------------------------------------------------------------------


def summary_of(rows: list[Reading]) -> list[tuple[Any, ...]]:
    out = []
    for sensor, rs in per_sensor(rows).items():
        temps = [r[2] for r in rs]
        times = [r[1] for r in rs]
        out.append(
            (
                sensor,
                len(rs),
                min(temps),
                sum(temps) / len(temps),
                max(temps),
                utc(min(times)),
                utc(max(times)),
            )
        )
    return out


@pytest.mark.parametrize("formats", [("datapipeline", "parquet"), ("datapipeline",), ("parquet",)])
def test_summary_is_the_same_from_either_table(tmp_path: Path, formats: tuple[str, ...]):
    root = write_export(tmp_path / "x", formats)
    columns, rows = run_report("summary", root)
    assert columns == [
        "sensor",
        "readings",
        "min_temperature",
        "avg_temperature",
        "max_temperature",
        "first_time",
        "last_time",
    ]
    assert [tuple(r) for r in rows] == summary_of(READINGS)


@pytest.mark.parametrize("formats", [("parquet",), ("datapipeline",)])
def test_summary_over_a_time_window(tmp_path: Path, formats: tuple[str, ...]):
    root = write_export(tmp_path / "x", formats)
    since, until = BASE + 2 * HALF_HOUR, BASE + 5 * HALF_HOUR  # inclusive, across midnight
    _, rows = run_report("summary", root, Window(since_ms=since, until_ms=until))
    assert [tuple(r) for r in rows] == summary_of([r for r in READINGS if since <= r[1] <= until])


@pytest.mark.parametrize(
    "zoned_days",
    [("2023-11-14", "2023-11-15"), ("2023-11-14",), ("2023-11-15",)],
    ids=["all zoned", "first day zoned", "last day zoned"],
)
def test_exports_written_with_zoned_times_read_the_same(
    tmp_path: Path, zoned_days: tuple[str, ...]
):
    # Exports wrote timestamp[ms, tz=UTC] before; an incremental export adds plain files
    # beside them. DuckDB takes the type of the first file listed, either kind.
    root = tmp_path / "x"
    write_parquet(root, zoned_days=zoned_days)
    _, rows = run_report("summary", root)
    assert [tuple(r) for r in rows] == summary_of(READINGS)
    since, until = BASE + 2 * HALF_HOUR, BASE + 5 * HALF_HOUR
    _, rows = run_report("summary", root, Window(since_ms=since, until_ms=until))
    assert [tuple(r) for r in rows] == summary_of([r for r in READINGS if since <= r[1] <= until])
    _, rows = run_query("SELECT time, received_at FROM readings ORDER BY time", root)
    assert rows == [(utc(r[1]), utc(r[1] + 150)) for r in sorted(READINGS, key=lambda r: r[1])]
    described = {r[0]: r[1] for r in run_query("DESCRIBE readings", root).rows}
    assert described["time"] == described["received_at"] == "TIMESTAMP"


def test_a_window_reads_only_the_days_it_covers(tmp_path: Path):
    root = write_export(tmp_path / "x", ("parquet",))
    # A day outside the window whose file no reader can open: a report that read it fails.
    # A window reaches SQL as a `dt` condition too (for Athena's partition projection), and
    # DuckDB leaves out the files of the other days without opening them.
    later = root / "readings" / "dt=2023-11-20"
    later.mkdir()
    (later / "part-0.parquet").write_bytes(b"not parquet")
    with pytest.raises(QueryError):
        run_report("summary", root)
    since, until = BASE, BASE + 7 * HALF_HOUR
    _, rows = run_report("summary", root, Window(since_ms=since, until_ms=until))
    assert [tuple(r) for r in rows] == summary_of(READINGS)
    _, rows = run_report("summary", root, Window(until_ms=BASE + HALF_HOUR))
    assert [tuple(r) for r in rows] == summary_of([r for r in READINGS if r[1] <= BASE + HALF_HOUR])


def test_latest_is_each_sensors_last_reading(export: Path):
    columns, rows = run_report("latest", export)
    assert columns == ["sensor", "time", "temperature", "seq"]
    expected = [(s, utc(rs[-1][1]), rs[-1][2], rs[-1][3]) for s, rs in per_sensor().items()]
    assert [tuple(r) for r in rows] == expected


def test_hourly_averages_per_sensor_and_hour(export: Path):
    buckets: dict[tuple[str, int], list[float]] = defaultdict(list)
    for sensor, ms, temp, _ in READINGS:
        buckets[(sensor, ms - ms % 3_600_000)].append(temp)
    expected = [(s, utc(h), len(v), sum(v) / len(v)) for (s, h), v in sorted(buckets.items())]
    for root in (export, write_export(export.parent / "only-json", ("datapipeline",))):
        columns, rows = run_report("hourly", root)
        assert columns == ["sensor", "hour", "readings", "avg_temperature"]
        assert [tuple(r) for r in rows] == expected


def test_gaps_counts_lost_readings_from_seq(export: Path):
    _, rows = run_report("gaps", export)
    # sensor-1 has seq 0..7 without 3; sensor-2 0..3 complete.
    assert [tuple(r) for r in rows] == [("sensor-1", 7, 0, 7, 1), ("sensor-2", 4, 0, 3, 0)]
    _, rows = run_report("gaps", export, Window(sensor_ids=("sensor-2",)))
    assert [r[0] for r in rows] == ["sensor-2"]


def test_gaps_needs_the_parquet_layout(pipeline_export: Path):
    with pytest.raises(QueryError, match="only the parquet layout"):
        run_report("gaps", pipeline_export)


# -- parameters, never spliced --------------------------------------------------------------


@pytest.mark.parametrize("formats", [("parquet",), ("datapipeline",)])
def test_user_values_are_parameters_not_sql(tmp_path: Path, formats: tuple[str, ...]):
    root = write_export(tmp_path / "x", formats)
    with query_module.engine_for("duckdb", root) as engine:
        sql, params = report_query("summary", engine.tables(), Window(sensor_ids=(INJECTION,)))
    assert INJECTION not in sql and params == [INJECTION]
    # Spliced in, the quote would close the string and `OR '1'='1` match every row.
    assert run_report("summary", root, Window(sensor_ids=(INJECTION,))).rows == []
    assert len(run_report("summary", root, Window(sensor_ids=("sensor-2",))).rows) == 1
    _, rows = (
        run_query("SELECT count(*) FROM sensor_data WHERE sensorid.s = ?", root, params=[INJECTION])
        if "datapipeline" in formats
        else run_query(
            "SELECT count(*) FROM readings WHERE sensor_id = ?", root, params=[INJECTION]
        )
    )
    assert rows == [(0,)]


def test_cli_report_with_an_injection_id_finds_nothing(export: Path):
    result = cloud(
        "query", "--report", "summary", "--data", str(export), "--id", INJECTION, "--format", "json"
    )
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    result = cloud(
        "query",
        "--report",
        "summary",
        "--data",
        str(export),
        "--id",
        "sensor-1",
        "--format",
        "json",
    )
    assert [json.loads(line)["sensor"] for line in result.stdout.splitlines()] == ["sensor-1"]


# -- the command line -----------------------------------------------------------------------


def test_cli_formats(export: Path):
    result = cloud("query", TUTORIAL_SQL + " ORDER BY 1", "--data", str(export))
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["sensor", "count_star()", "avg(temperature.n)"]
    # The table rounds to 4 places (CSV and JSON keep every digit): 152.5 / 7.
    assert lines[2].split() == ["sensor-1", "7", "21.7857"]
    assert "2 row(s)" in result.stderr

    result = cloud("query", "--report", "latest", "--data", str(export), "--format", "csv")
    assert result.stdout.splitlines()[:2] == [
        "sensor,time,temperature,seq",
        "sensor-1,2023-11-15T01:30:00.000Z,23.5,7",
    ]

    result = cloud(
        "query",
        "-",
        "--data",
        str(export),
        "--format",
        "json",
        input="SELECT * FROM sensor_data ORDER BY currenttime.n, sensorid.s LIMIT 1",
    )
    assert json.loads(result.stdout) == {
        "sensorid": {"s": "sensor-1"},
        "currenttime": {"n": BASE},
        "temperature": {"n": 20.0},
    }


def test_cli_report_window_options(export: Path):
    since = dt.datetime.fromtimestamp((BASE + 4 * HALF_HOUR) / 1000, dt.UTC).isoformat()
    result = cloud(
        "query",
        "--report",
        "summary",
        "--data",
        str(export),
        "--since",
        since,
        "--id",
        "sensor-1",
        "--format",
        "json",
    )
    assert result.exit_code == 0, result.output
    (row,) = [json.loads(line) for line in result.stdout.splitlines()]
    assert row["sensor"] == "sensor-1" and row["readings"] == 4
    assert row["first_time"] == "2023-11-15T00:00:00.000Z"


@pytest.mark.parametrize(
    ("sql", "message"),
    [
        ("SELECT * FROM nope", "Table with name nope does not exist"),
        ("SELECT nope FROM sensor_data", 'column "nope" not found'),
        ("SELEC 1", "syntax error"),
        ("SELECT count(*) FROM readings", "readings needs a `cloud export --format parquet`"),
    ],
)
def test_cli_sql_errors_are_one_line_and_exit_1(pipeline_export: Path, sql: str, message: str):
    result = cloud("query", sql, "--data", str(pipeline_export))
    assert message in failed_with_one_line(result)


def test_cli_empty_or_missing_export_exits_1(tmp_path: Path):
    empty = tmp_path / "empty"
    (empty / "sensor_data").mkdir(parents=True)
    (empty / "sensor_data" / "_SUCCESS").write_text("")
    (empty / "_manifests" / "datapipeline").mkdir(parents=True)
    (empty / "_manifests" / "datapipeline" / "run.json").write_text("{}")
    result = cloud("query", "SELECT 1", "--data", str(empty))
    assert "no export data at" in failed_with_one_line(result)
    result = cloud("query", "SELECT 1", "--data", str(tmp_path / "missing"))
    assert "is not a folder" in failed_with_one_line(result)


def test_cli_usage_errors_exit_2(export: Path):
    assert cloud("query", "--data", str(export)).exit_code == 2
    assert cloud("query", "SELECT 1", "--report", "summary", "--data", str(export)).exit_code == 2
    assert cloud("query", "SELECT 1", "--id", "a", "--data", str(export)).exit_code == 2
    assert cloud("query", "--report", "nope", "--data", str(export)).exit_code == 2


def test_without_data_and_without_a_local_stack_says_what_is_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CLOUD_TARGET", raising=False)
    result = cloud("query", "SELECT 1")
    assert "--data is missing" in failed_with_one_line(result)


def test_bad_locations_are_refused():
    for bad in ("s3://", "s3://UPPER/x", "s3://bucket/it's", "s3://bucket/a*b", "/tmp/it's"):
        with pytest.raises(ConfigError):
            ExportRoot(bad)
    assert ExportRoot.to_read("s3://bucket/pre/fix/").url == "s3://bucket/pre/fix"
    assert ExportRoot.to_read("s3://bucket").key_prefix == ""
    assert ExportRoot.to_read("s3://bucket/a/b").key_prefix == "a/b/"


def test_table_output_aligns_numbers_right():
    lines = list(
        format_result(query_module.QueryResult(["name", "n"], [("a", 1.5), ("bbb", 10.0)]), "table")
    )
    assert lines == ["name     n", "----  ----", "a      1.5", "bbb   10.0"]


# -- S3 on the moto server ------------------------------------------------------------------

_buckets = iter(range(10**6))


def upload(s3: Any, folder: Path, bucket: str, prefix: str) -> None:
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            key = path.relative_to(folder).as_posix()
            s3.upload_file(str(path), bucket, f"{prefix}/{key}" if prefix else key)


@pytest.fixture(scope="module")
def s3(aws: Endpoint) -> Any:
    return aws.client("s3")  # one per module: a boto3 client takes tenths of a second to make


@pytest.fixture
def bucket(s3: Any) -> str:
    name = f"query-test-{next(_buckets)}-{int(time.time())}"
    s3.create_bucket(Bucket=name)
    return name


def test_s3_export_on_the_moto_server(aws: Endpoint, s3: Any, export: Path, bucket: str):
    upload(s3, export, bucket, "exports/run")
    s3_args = (
        "--data",
        f"s3://{bucket}/exports/run",
        "--endpoint-url",
        str(aws.url),
        "--target",
        "aws",
    )
    result = cloud("query", TUTORIAL_SQL + " ORDER BY 1", *s3_args, "--format", "json")
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(r["sensor"], r["count_star()"], r["avg(temperature.n)"]) for r in rows] == (
        expected_counts_and_averages()
    )
    _, rows2 = run_report("gaps", f"s3://{bucket}/exports/run", endpoint=aws)
    assert [tuple(r) for r in rows2] == [("sensor-1", 7, 0, 7, 1), ("sensor-2", 4, 0, 3, 0)]
    result = cloud("query", "SELECT 1", "--data", f"s3://{bucket}/exports/none", *s3_args[2:])
    assert "no export data at" in failed_with_one_line(result)


def test_default_data_is_the_local_stacks_exports_folder(
    export: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    state = StackState(
        root=str(tmp_path), mqtt_port=1, table_port=2, data_dir=str(export.parent / "data")
    )
    (export.parent / "data").mkdir()
    export.rename(state.exports_dir)
    local = Target("local", state.endpoint, "SensorData", state, "test")
    monkeypatch.setattr(query_module.targets, "resolve", lambda *_: local)
    chosen = resolve_target(None)
    assert chosen.data.url == str(state.exports_dir)
    result = cloud("query", "--report", "summary", "--format", "csv")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[1].startswith(f"sensor-1,7,20.0,{152.5 / 7!r},23.5,")
    # The local stack has no S3: asking for it says where its exports are.
    result = cloud("query", "SELECT 1", "--data", "s3://sensor-exports/")
    assert result.exit_code == 1
    assert f"the local stack has no S3; its exports are in {state.exports_dir}" in result.output


def test_dynamodb_native_export_reads_as_sensor_data(
    aws: Endpoint, s3: Any, table: str, bucket: str
):
    ddb = aws.client("dynamodb")
    for sensor, ms, temp, seq in READINGS:
        ddb.put_item(
            TableName=table,
            Item={
                "SensorId": {"S": sensor},
                "CurrentTime": {"N": str(ms)},
                "Temperature": {"N": repr(temp)},
                "Seq": {"N": str(seq)},
            },
        )
    ddb.update_continuous_backups(
        TableName=table,
        PointInTimeRecoverySpecification={"PointInTimeRecoveryEnabled": True},
    )
    arn = ddb.describe_table(TableName=table)["Table"]["TableArn"]

    def native_export() -> None:
        started = ddb.export_table_to_point_in_time(
            TableArn=arn, S3Bucket=bucket, S3Prefix="native", ExportFormat="DYNAMODB_JSON"
        )["ExportDescription"]["ExportArn"]
        deadline = time.monotonic() + 20
        while (
            ddb.describe_export(ExportArn=started)["ExportDescription"]["ExportStatus"]
            == "IN_PROGRESS"
        ):
            assert time.monotonic() < deadline, "moto's export never finished"
            time.sleep(0.05)

    native_export()
    location = f"s3://{bucket}/native"
    assert run_query(TUTORIAL_SQL + " ORDER BY 1", location, endpoint=aws).rows == (
        expected_counts_and_averages()
    )
    # A second snapshot beside the first: reading both would count every reading twice.
    native_export()
    with pytest.raises(QueryError, match="holds 2 DynamoDB exports"):
        run_query(TUTORIAL_SQL, location, endpoint=aws)
    # `cloud export --method native` names the snapshot to read in its newest manifest.
    keys = sorted(
        o["Key"][len("native/") :]
        for o in s3.list_objects_v2(Bucket=bucket, Prefix="native/AWSDynamoDB/")["Contents"]
    )
    s3.put_object(
        Bucket=bucket,
        Key="native/_manifests/native/20231114T220000000Z-00000000.json",
        Body=json.dumps({"files": [{"key": keys[0]}]}),
    )
    _, rows = run_query(TUTORIAL_SQL + " ORDER BY 1", location, endpoint=aws)
    assert rows == expected_counts_and_averages()


def test_dynamodb_export_lines_map_to_the_same_columns(tmp_path: Path):
    folder = tmp_path / "AWSDynamoDB" / "01700000000000-abcdef12" / "data"
    folder.mkdir(parents=True)
    lines = [
        {
            "Item": {
                "SensorId": {"S": s},
                "CurrentTime": {"N": str(ms)},
                "Temperature": {"N": str(t)},
            }
        }
        for s, ms, t, _ in READINGS
    ]
    with gzip.open(folder / "abc.json.gz", "wt") as f:
        f.writelines(json.dumps(line) + "\n" for line in lines)
    _, rows = run_query("SELECT * FROM sensor_data ORDER BY currenttime.n LIMIT 1", tmp_path)
    assert rows == [({"s": "sensor-1"}, {"n": BASE}, {"n": 20.0})]
    assert run_query(TUTORIAL_SQL + " ORDER BY 1", tmp_path).rows == expected_counts_and_averages()
