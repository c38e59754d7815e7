"""`cloud export`: the table to a folder or S3 on moto's server, read back as a user would.

Each test loads its own table with BatchWriteItem and checks what a query would see: the
lines or rows under the data prefix, the manifests beside it, and the CLI's exit code and
line. Crashes are real: a child process calls os._exit at a chosen point of the run.
"""

from __future__ import annotations

import datetime as dt
import gzip
import hashlib
import io
import json
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from cloud.aws import Endpoint
from cloud.cli import main as cloud_main
from cloud.errors import ExportError
from cloud.export import layout
from cloud.export.encoding import datapipeline_line, datapipeline_value, parquet_schema
from cloud.export.exporter import Exporter
from cloud.export.location import open_destination
from cloud.export.progress import LineProgress
from cloud.export.run import run_export, terminal_progress
from cloud.export.spec import NOTHING_NEW, ExportResult, ExportSpec
from cloud.table import summarize
from tests.table import scan_items

Item = dict[str, Any]

# 20:00 UTC, so 500 one-minute readings per sensor cross midnight into a second day.
BASE_MS = int(dt.datetime(2025, 11, 28, 20, 0, tzinfo=dt.UTC).timestamp() * 1000)
DATA = layout.data_prefix("datapipeline")
READINGS = layout.data_prefix("parquet")


def make_items(
    sensors: int = 3, per_sensor: int = 500, start: int = 0, received_offset: int = 1_000
) -> list[Item]:
    items = []
    for s in range(sensors):
        for i in range(start, start + per_sensor):
            t = BASE_MS + i * 60_000
            item: Item = {
                "SensorId": {"S": f"sensor-{s}"},
                "CurrentTime": {"N": str(t)},
                "Temperature": {"N": str(round(15 + s + (i % 97) / 10, 2))},
                "Seq": {"N": str(i)},
                "ReceivedAt": {"N": str(t + received_offset)},
            }
            if s == 0:
                item["Humidity"] = {"N": str(40 + i % 20)}
            items.append(item)
    return items


def load(aws: Endpoint, table: str, items: list[Item]) -> None:
    ddb = aws.client("dynamodb")
    for k in range(0, len(items), 25):
        batch = [{"PutRequest": {"Item": item}} for item in items[k : k + 25]]
        response = ddb.batch_write_item(RequestItems={table: batch})
        assert not response.get("UnprocessedItems")


def canonical(item: Item) -> str:
    return json.dumps(item, sort_keys=True)


def table_items(aws: Endpoint, table: str) -> set[str]:
    return {canonical(i) for i in scan_items(aws.client("dynamodb"), table)}


def files_under(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def data_lines(root: Path) -> list[str]:
    lines = []
    for path in sorted((root / DATA).glob("*.json")):
        lines.extend(path.read_text().splitlines())
    return lines


def from_datapipeline(line: str) -> Item:
    """Back to DynamoDB's shape, checking on the way that the line is in Data Pipeline's."""
    record = json.loads(line)
    item: Item = {}
    for name, value in record.items():
        assert isinstance(value, dict) and len(value) == 1, line
        ((kind, inner),) = value.items()
        assert kind in ("s", "n"), line  # lower-case type keys
        assert isinstance(inner, str), line  # numbers as strings too
        item[name] = {kind.upper(): inner}
    return item


def export(aws: Endpoint, table: str, dest: str | Path, **kwargs: Any) -> ExportResult:
    kwargs.setdefault("settle_seconds", 0)
    return run_export(aws, table, ExportSpec(str(dest), **kwargs))


def manifests(root: Path, fmt: str = "datapipeline") -> list[dict[str, Any]]:
    folder = root / layout.manifest_prefix(fmt)
    return [json.loads(p.read_text()) for p in sorted(folder.glob("2*.json"))]


def assert_no_leftovers(root: Path) -> None:
    names = files_under(root)
    assert not [n for n in names if "/staging/" in n or Path(n).name.startswith(".")], names


# -- the datapipeline layout --------------------------------------------------------------


def test_datapipeline_to_folder_is_the_table_in_data_pipeline_shape(
    aws: Endpoint, table: str, tmp_path: Path
) -> None:
    load(aws, table, make_items())
    # A small page size exercises LastEvaluatedKey; a small file size, the rolling writer.
    result = export(aws, table, tmp_path, rows_per_file=400, page_size=250, segments=3)

    lines = data_lines(tmp_path)
    assert len(lines) == 1500 == result.items
    assert {canonical(from_datapipeline(line)) for line in lines} == table_items(aws, table)
    assert lines[0].startswith('{"SensorId":{"s":"sensor-')  # compact, as Data Pipeline's

    names = files_under(tmp_path)
    assert all(n.startswith((f"{DATA}/", "_manifests/")) for n in names), names
    assert_no_leftovers(tmp_path)
    counts = sorted(len(p.read_text().splitlines()) for p in (tmp_path / DATA).glob("*.json"))
    assert counts == [300, 400, 400, 400]  # rolled at exactly the configured row limit

    (manifest,) = manifests(tmp_path)
    assert manifest["items"] == 1500 and manifest["format"] == "datapipeline"
    for entry in manifest["files"]:
        body = (tmp_path / entry["key"]).read_bytes()
        assert entry["size"] == len(body)
        assert entry["sha256"] == hashlib.sha256(body).hexdigest()
    watermark = json.loads((tmp_path / "_manifests/datapipeline/watermark.json").read_text())
    assert watermark["received_at_ms"] == BASE_MS + 499 * 60_000 + 1_000
    assert result.line().startswith("exported 1,500 items in 4 file(s), ")


def test_the_scan_reads_the_engines_own_pages_unless_given_a_page_size(
    aws: Endpoint, table: str, tmp_path: Path
) -> None:
    # 2,400 items are one 1 MB page. 1,000-item pages made moto walk its table three times
    # (it walks the whole table per request), and that halved the export's rate.
    load(aws, table, make_items(sensors=4, per_sensor=600))

    def scans(folder: str, **kwargs: Any) -> tuple[int, int]:
        ddb = aws.client("dynamodb")
        requests: list[str] = []
        ddb.meta.events.register("after-call.dynamodb.Scan", lambda **_: requests.append(""))
        spec = ExportSpec(str(tmp_path / folder), settle_seconds=0, **kwargs)
        dest = open_destination(spec.destination, aws)
        return Exporter(ddb, table, dest, spec).run().items, len(requests)

    assert scans("default", segments=1) == (2400, 1)
    assert scans("segments", segments=3) == (2400, 3)  # one page per segment
    assert scans("small-pages", segments=1, page_size=1000) == (2400, 3)
    assert len(data_lines(tmp_path / "small-pages")) == 2400


def test_the_tutorials_sql_runs_on_the_export(aws: Endpoint, table: str, tmp_path: Path) -> None:
    load(aws, table, make_items(per_sensor=200))
    export(aws, table, tmp_path)
    # The tutorial's Athena table. DuckDB matches JSON keys case-sensitively, so the columns
    # are spelled as in the JSON, and the tutorial's lower-case SQL then runs unchanged.
    sensor_data = (
        "read_json(?, format = 'newline_delimited', columns = {SensorId: 'STRUCT(s VARCHAR)', "
        "CurrentTime: 'STRUCT(n BIGINT)', Temperature: 'STRUCT(n FLOAT)'}) AS sensor_data"
    )
    rows = (
        duckdb.connect()
        .execute(
            f"SELECT sensorid.s, count(*), avg(temperature.n) FROM {sensor_data} "  # noqa: S608
            "GROUP BY 1 ORDER BY 1",
            [str(tmp_path / DATA / "*.json")],
        )
        .fetchall()
    )
    expected = summarize(aws.client("dynamodb"), table)
    assert [r[0] for r in rows] == list(expected)
    for sensor, count, average in rows:
        assert count == expected[sensor].count
        assert average == pytest.approx(expected[sensor].average, rel=1e-5)


# -- the parquet layout -------------------------------------------------------------------


def test_parquet_is_partitioned_by_utc_day_with_the_layouts_types(
    aws: Endpoint, table: str, tmp_path: Path
) -> None:
    items = make_items()
    load(aws, table, items)
    result = export(aws, table, tmp_path, fmt="parquet", rows_per_file=300, row_group_rows=100)

    days = {
        dt.datetime.fromtimestamp(int(i["CurrentTime"]["N"]) / 1000, dt.UTC).date().isoformat()
        for i in items
    }
    assert len(days) == 2
    partitions = {p.name for p in (tmp_path / READINGS).iterdir()}
    assert partitions == {f"{layout.PARTITION_KEY}={d}" for d in days}
    assert all(n.startswith((f"{READINGS}/", "_manifests/")) for n in files_under(tmp_path))
    assert_no_leftovers(tmp_path)

    dataset = ds.dataset(tmp_path / READINGS, format="parquet", partitioning="hive")
    for column in layout.PARQUET_COLUMNS:
        assert dataset.schema.field(column.name).type == parquet_schema().field(column.name).type
    assert str(dataset.schema.field("time").type) == "timestamp[ms]"  # UTC, as Athena's
    rows = dataset.to_table().to_pylist()
    assert len(rows) == 1500 == result.items
    got = {(r["sensor_id"], r["time"], r["temperature"], r["seq"], r["humidity"]) for r in rows}
    want = {
        (
            i["SensorId"]["S"],
            dt.datetime.fromtimestamp(int(i["CurrentTime"]["N"]) / 1000, dt.UTC).replace(
                tzinfo=None
            ),
            float(i["Temperature"]["N"]),
            int(i["Seq"]["N"]),
            float(i["Humidity"]["N"]) if "Humidity" in i else None,
        )
        for i in items
    }
    assert got == want
    assert all(r[layout.PARTITION_KEY] == r["time"].date().isoformat() for r in rows)

    for path in (tmp_path / READINGS).rglob("*.parquet"):
        meta = pq.ParquetFile(path).metadata
        assert meta.num_rows <= 300  # rolled at the row limit
        assert meta.row_group(0).column(0).compression == "ZSTD"
        for c in range(meta.num_columns):  # each column encoded as the layout says
            column = meta.row_group(0).column(c)
            spec = layout.PARQUET_COLUMNS[c]
            assert column.path_in_schema == spec.name
            assert (spec.encoding or "RLE_DICTIONARY") in column.encodings
        assert meta.schema.to_arrow_schema().names == [c.name for c in layout.PARQUET_COLUMNS]
    files = (tmp_path / READINGS).rglob("*.parquet")
    sizes = sorted(pq.ParquetFile(p).metadata.num_rows for p in files)
    assert sum(sizes) == 1500 and sizes[-1] == 300


def test_parquet_skips_items_that_cannot_fill_required_columns(
    aws: Endpoint, table: str, tmp_path: Path
) -> None:
    good = make_items(sensors=1, per_sensor=5)
    bad = {"SensorId": {"S": "odd"}, "CurrentTime": {"N": str(BASE_MS)}, "Note": {"S": "x"}}
    load(aws, table, [*good, bad])
    result = export(aws, table, tmp_path, fmt="parquet")
    assert (result.items, result.skipped) == (5, 1)
    assert "skipped 1 malformed item(s)" in result.line()
    assert ds.dataset(tmp_path / READINGS, partitioning="hive").count_rows() == 5
    # The Data Pipeline layout has no required columns: every attribute goes through.
    export(aws, table, tmp_path)
    assert {canonical(from_datapipeline(x)) for x in data_lines(tmp_path)} == table_items(
        aws, table
    )


# -- S3 -----------------------------------------------------------------------------------


def s3_keys(s3: Any, bucket: str, prefix: str = "") -> dict[str, int]:
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return {o["Key"]: o["Size"] for page in pages for o in page.get("Contents", [])}


def test_export_to_s3_on_moto(aws: Endpoint, table: str) -> None:
    load(aws, table, make_items(per_sensor=100))
    s3 = aws.client("s3")
    bucket = f"exports-{table.lower()}"
    s3.create_bucket(Bucket=bucket)
    result = export(aws, table, f"s3://{bucket}/site/a", rows_per_file=200)
    assert result.location == f"s3://{bucket}/site/a/{DATA}/"

    keys = s3_keys(s3, bucket)
    data = [k for k in keys if k.startswith(f"site/a/{DATA}/")]
    assert data and all(k.endswith(".json") for k in data)
    assert all(k.startswith((f"site/a/{DATA}/", "site/a/_manifests/")) for k in keys), keys
    assert "site/a/_manifests/datapipeline/watermark.json" in keys
    assert not [k for k in keys if "/staging/" in k]

    lines = []
    for key in data:
        lines.extend(s3.get_object(Bucket=bucket, Key=key)["Body"].read().decode().splitlines())
    assert len(data) == 2 and len(lines) == 300
    assert {canonical(from_datapipeline(x)) for x in lines} == table_items(aws, table)
    (manifest_key,) = [k for k in keys if "/_manifests/" in k and "watermark" not in k]
    manifest = json.loads(s3.get_object(Bucket=bucket, Key=manifest_key)["Body"].read())
    assert {f"site/a/{f['key']}": f["size"] for f in manifest["files"]} == {
        k: keys[k] for k in data
    }


# -- incremental, full, since -------------------------------------------------------------


def test_incremental_runs_export_only_what_is_new_and_full_replaces(
    aws: Endpoint, table: str, tmp_path: Path
) -> None:
    load(aws, table, make_items(per_sensor=100))
    first = export(aws, table, tmp_path, settle_seconds=60)
    assert (first.mode, first.items) == ("full", 300)  # a format's first export is full
    before = files_under(tmp_path / DATA)

    second = export(aws, table, tmp_path, settle_seconds=60)
    assert second.mode == NOTHING_NEW and second.items == 0
    assert "nothing new" in second.line()
    assert files_under(tmp_path / DATA) == before and len(manifests(tmp_path)) == 1

    newer = make_items(sensors=1, per_sensor=10, start=1000, received_offset=1_000)
    late_old_reading = make_items(sensors=1, per_sensor=1, start=-5000)[0]
    late_old_reading["SensorId"] = {"S": "sensor-late"}
    late_old_reading["ReceivedAt"] = {"N": str(BASE_MS + 2000 * 60_000)}  # arrived late
    no_received_at = {
        "SensorId": {"S": "legacy"},
        "CurrentTime": {"N": str(BASE_MS - 86_400_000)},  # a day before the others
        "Temperature": {"N": "1"},
    }
    just_now = make_items(sensors=1, per_sensor=1, start=3000)[0]
    just_now["SensorId"] = {"S": "sensor-now"}
    just_now["ReceivedAt"] = {"N": str(int(dt.datetime.now(dt.UTC).timestamp() * 1000))}
    load(aws, table, [*newer, late_old_reading, no_received_at, just_now])

    third = export(aws, table, tmp_path, settle_seconds=60)
    assert (third.mode, third.items, third.deferred) == ("incremental", 11, 1)
    assert "1 received in the last 60s wait for the next run" in third.line()
    new_files = sorted(set(files_under(tmp_path / DATA)) - set(before))
    new_lines = [x for f in new_files for x in (tmp_path / DATA / f).read_text().splitlines()]
    assert {canonical(from_datapipeline(x)) for x in new_lines} == {
        canonical(i) for i in [*newer, late_old_reading]
    }
    watermark = json.loads((tmp_path / "_manifests/datapipeline/watermark.json").read_text())
    assert watermark["received_at_ms"] == int(late_old_reading["ReceivedAt"]["N"])

    full = export(aws, table, tmp_path, full=True, settle_seconds=0)
    assert (full.mode, full.items) == ("full", 313)
    lines = data_lines(tmp_path)
    assert len(lines) == 313  # every row exactly once, the legacy item included
    assert {canonical(from_datapipeline(x)) for x in lines} == table_items(aws, table)
    assert len(manifests(tmp_path)) == 1  # the replaced runs' manifests went with their files
    assert_no_leftovers(tmp_path)
    assert export(aws, table, tmp_path).mode == NOTHING_NEW


def test_since_picks_readings_by_time_and_needs_full_on_an_existing_export(
    aws: Endpoint, table: str, tmp_path: Path
) -> None:
    items = make_items(sensors=2, per_sensor=20)
    load(aws, table, items)
    since = BASE_MS + 15 * 60_000
    first = export(aws, table, tmp_path, since_ms=since)
    assert first.items == 10  # 5 per sensor
    assert all(int(from_datapipeline(x)["CurrentTime"]["N"]) >= since for x in data_lines(tmp_path))
    mark = first.watermark_ms

    with pytest.raises(ExportError, match="--full"):
        export(aws, table, tmp_path, since_ms=BASE_MS)

    wider = export(aws, table, tmp_path, since_ms=BASE_MS + 10 * 60_000, full=True)
    assert wider.items == 20 and len(data_lines(tmp_path)) == 20
    narrower = export(aws, table, tmp_path, since_ms=BASE_MS + 18 * 60_000, full=True)
    assert narrower.items == 4 and len(data_lines(tmp_path)) == 4
    assert narrower.watermark_ms == mark  # never moved backwards


# -- crashes ------------------------------------------------------------------------------

CRASHING_CHILD = """
import os, sys
from cloud.aws import Endpoint
from cloud.export.run import ExportSpec, run_export

url, table, dest, fmt, crash_on = sys.argv[1:]

def on_event(kind: str, detail: str) -> None:
    if kind == crash_on:
        os._exit(3)  # no cleanup of any kind, as with kill -9 or a power cut

spec = ExportSpec(dest, fmt=fmt, rows_per_file=200, settle_seconds=0)
run_export(Endpoint(url, "us-east-1"), table, spec, on_event=on_event)
"""


@pytest.mark.parametrize(
    ("fmt", "crash_on"),
    [("datapipeline", "file"), ("parquet", "file"), ("datapipeline", "commit")],
)
def test_a_crashed_run_shows_nothing_and_the_rerun_has_every_row_once(
    aws: Endpoint, table: str, tmp_path: Path, fmt: str, crash_on: str
) -> None:
    load(aws, table, make_items(per_sensor=100))
    child = subprocess.run(
        [sys.executable, "-c", CRASHING_CHILD, str(aws.url), table, str(tmp_path), fmt, crash_on],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert child.returncode == 3, child.stderr
    prefix = layout.data_prefix(fmt)
    staged = [n for n in files_under(tmp_path) if "/staging/" in n]
    assert staged, "the crash left no staged file: it happened too early to test anything"
    assert not (tmp_path / prefix).exists() or files_under(tmp_path / prefix) == []
    assert (len(manifests(tmp_path, fmt)) == 1) == (crash_on == "commit")

    rerun = export(aws, table, tmp_path, fmt=fmt)
    assert_no_leftovers(tmp_path)
    if fmt == "datapipeline":
        lines = data_lines(tmp_path)
        assert len(lines) == 300
        assert {canonical(from_datapipeline(x)) for x in lines} == table_items(aws, table)
    else:
        rows = ds.dataset(tmp_path / prefix, partitioning="hive").to_table()
        keys = list(zip(rows["sensor_id"].to_pylist(), rows["time"].to_pylist(), strict=True))
        assert len(keys) == len(set(keys)) == 300
    if crash_on == "commit":
        # The manifest was written: the rerun finished that run and found nothing new.
        assert rerun.mode == NOTHING_NEW
    else:
        assert rerun.items == 300


def test_a_failing_run_removes_its_own_staged_files(
    aws: Endpoint, table: str, tmp_path: Path
) -> None:
    load(aws, table, make_items(sensors=1, per_sensor=300))

    def fail_after_first_file(kind: str, detail: str) -> None:
        if kind == "file":
            raise RuntimeError("disk on fire")

    spec = ExportSpec(str(tmp_path), rows_per_file=100, settle_seconds=0)
    with pytest.raises(RuntimeError, match="disk on fire"):
        run_export(aws, table, spec, on_event=fail_after_first_file)
    assert [n for n in files_under(tmp_path) if not n.startswith("_manifests/")] == []
    assert_no_leftovers(tmp_path)
    assert not (tmp_path / "_manifests/datapipeline/watermark.json").exists()
    assert export(aws, table, tmp_path).items == 300


# -- the command line ---------------------------------------------------------------------


def cli(aws: Endpoint, table: str, *args: str) -> Any:
    env = {"SENSOR_TABLE": table, "AWS_REGION": "us-east-1", "CLOUD_TARGET": None}
    runner = CliRunner()
    return runner.invoke(
        cloud_main,
        ["export", *args, "--target", "aws", "--endpoint-url", str(aws.url)],
        env=env,
    )


def test_cli_exports_and_prints_one_summary_line(aws: Endpoint, table: str, tmp_path: Path) -> None:
    load(aws, table, make_items(per_sensor=100))
    result = cli(aws, table, "--to", str(tmp_path), "--format", "parquet", "--settle", "0")
    assert result.exit_code == 0, result.output
    (line,) = result.output.splitlines()
    assert line.startswith("exported 300 items in 1 file(s), ")  # one day, one file
    assert f"to {tmp_path}/{READINGS}/ (parquet, full)" in line
    again = cli(aws, table, "--to", str(tmp_path), "--format", "parquet")
    assert again.exit_code == 0 and again.output.startswith("nothing new since ")


@pytest.mark.parametrize(
    ("args", "table_name", "message"),
    [
        (["--to", "{file}/sub"], None, "cannot write to folder"),
        (["--to", "s3://no-such-bucket-here/x"], None, "bucket no-such-bucket-here does not exist"),
        (["--to", "{tmp}", "--since", "yesterday-ish"], None, "--since: 'yesterday-ish' is not"),
        (["--to", "{tmp}"], "NoSuchTable", "table NoSuchTable not found"),
        (["--to", "{tmp}", "--method", "native"], None, "DynamoDB exports only to S3"),
    ],
    ids=["unwritable-folder", "missing-bucket", "bad-since", "missing-table", "native-to-folder"],
)
def test_cli_failures_are_one_line_and_exit_1(
    aws: Endpoint,
    table: str,
    tmp_path: Path,
    args: list[str],
    table_name: str | None,
    message: str,
) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    args = [a.format(file=a_file, tmp=tmp_path / "out") for a in args]
    result = cli(aws, table_name or table, *args)
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and result.exception is not None
    (line,) = result.output.strip().splitlines()
    assert line.startswith("Error: ") and message in line, line


# -- the native export --------------------------------------------------------------------


def native_lines(s3: Any, bucket: str, keys: Iterable[str]) -> list[dict[str, Any]]:
    lines: list[dict[str, Any]] = []
    for key in keys:
        body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        lines.extend(json.loads(x) for x in gzip.decompress(body).decode().splitlines())
    return lines


def test_native_export_on_moto_writes_our_manifest(aws: Endpoint, table: str) -> None:
    items = make_items(sensors=2, per_sensor=50)
    load(aws, table, items)
    s3 = aws.client("s3")
    bucket = f"native-{table.lower()}"
    s3.create_bucket(Bucket=bucket)

    refused = cli(aws, table, "--to", f"s3://{bucket}/snap", "--method", "native")
    assert refused.exit_code == 1 and "point-in-time recovery" in refused.output

    aws.client("dynamodb").update_continuous_backups(
        TableName=table, PointInTimeRecoverySpecification={"PointInTimeRecoveryEnabled": True}
    )
    for _ in range(2):  # the second snapshot replaces the first
        result = cli(aws, table, "--to", f"s3://{bucket}/snap", "--method", "native")
        assert result.exit_code == 0, result.output
        assert result.output.startswith("exported 100 items in 1 file(s), ")
        assert f"s3://{bucket}/snap/AWSDynamoDB/ (datapipeline, full)" in result.output

    keys = s3_keys(s3, bucket, "snap/")
    (manifest_key,) = [k for k in keys if k.startswith("snap/_manifests/native/")]
    manifest = json.loads(s3.get_object(Bucket=bucket, Key=manifest_key)["Body"].read())
    assert manifest["items"] == 100 and manifest["method"] == "native"
    data = [f"snap/{f['key']}" for f in manifest["files"]]
    assert all("/AWSDynamoDB/" in k and "/data/" in k for k in data)
    assert {k for k in keys if "/AWSDynamoDB/" in k} == {f"snap/{k}" for k in manifest["objects"]}
    lines = native_lines(s3, bucket, data)
    assert {canonical(x["Item"]) for x in lines} == {canonical(i) for i in items}


# -- progress -----------------------------------------------------------------------------


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_is_a_line_on_a_terminal_and_silent_otherwise() -> None:
    assert terminal_progress(io.StringIO()) is None
    screen = FakeTerminal()
    progress = terminal_progress(screen)
    assert isinstance(progress, LineProgress)
    progress.update(500, 2000, "480 exported")
    progress.close()
    text = screen.getvalue()
    assert "480 exported" in text and "500/~2,000 scanned" in text and "left" in text


def test_parquet_schema_follows_the_layout() -> None:
    schema = parquet_schema()
    assert schema.names == [c.name for c in layout.PARQUET_COLUMNS]
    assert schema.field("time").type == pa.timestamp("ms")
    assert [schema.field(c.name).nullable for c in layout.PARQUET_COLUMNS] == [
        c.nullable for c in layout.PARQUET_COLUMNS
    ]


def test_a_datapipeline_line_is_what_json_would_write_for_every_attribute_kind():
    item = {
        "SensorId": {"S": 'caf\u00e9 "3"\n\\'},
        "CurrentTime": {"N": "1764345600123"},
        "Tags": {"SS": ["a", "b"]},
        "Raw": {"B": b"\x00\xff"},
        "Nested": {"M": {"ok": {"BOOL": True}, "none": {"NULL": True}}},
        "List": {"L": [{"N": "1"}, {"S": "x"}]},
    }
    record = {name: datapipeline_value(value) for name, value in item.items()}
    expected = json.dumps(record, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"
    assert datapipeline_line(item) == expected
    assert json.loads(datapipeline_line(item))["SensorId"] == {"s": 'caf\u00e9 "3"\n\\'}
