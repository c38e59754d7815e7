"""What the summary report costs over each export layout, and what a one-day read costs.

Readings are made up (`--sensors` simulated sensors, one reading every ~10 s each, `seq`
from 0, temperatures from the simulated sensor, humidity on half of the sensors and
pressure on a quarter) and exported by the real exporter, `cloud.export.exporter.Exporter`, in both
layouts, into a temporary folder deleted at the end (also on failure, Ctrl-C or SIGTERM):

- `datapipeline`: the tutorial's JSON lines, read through the `sensor_data` view;
- `parquet`: day-partitioned Parquet, read through the `readings` view;
- and beside them "zoned": the same Parquet files rewritten as exports wrote them before
  issue 13, `time` and `received_at` as `timestamp[ms, tz=UTC]` and no delta encoding (an
  export that old is still read, through a cast on every row): what the summary cost before.

The exporter reads an in-memory stand-in for SensorData (`GeneratedTable`: DynamoDB's
`describe_table` and `scan`, with Segment/TotalSegments, Limit and ExclusiveStartKey, and
items in the low-level shape boto3 returns), so everything from the parallel scan to the
files, their names and the manifests is the exporter's own code. A real table is not used:
5,000,000 items would take about 19 minutes to load into dynalite and 28 to scan on moto.
The items are built with `cloud.table.number`, the formatting ingest's `to_item` uses (a
few hundred are checked against `to_item` itself: 35 us an item, 10x the cost of building
them directly, would have made a full run several minutes longer).

Then, in alternating rounds (the order reverses from one round to the next), each of:

1. the summary report, exactly as `cloud query --report summary --data DIR` runs it:
   `cloud.query.run.run_report` in process (DuckDB connect, the file listing, the views, the
   query, the rows fetched);
2. the same report over one whole UTC day (`--since DAY --until DAY+1d-1ms`), the middle
   day of the readings.

Bytes read are what the process read from files while the report ran: `rchar` from
/proc/self/io before and after (DuckDB reads with pread; the page cache is warm, so these are
bytes asked for, not bytes from the disk). Beside them, for Parquet, the compressed size of
the column chunks the report needs (from the files' own metadata): all of them for the
whole summary, those of the day's `dt=` folder for the day read.

    .venv/bin/python bench/query_report.py [--readings 5000000] [--sensors 100] [--rounds 3]
    .venv/bin/python bench/query_report.py --quick     # 500,000 readings, 10 sensors

Exit 0 once measured, 1 when the bench could not be set up or a run failed, 130 when
interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import random
import statistics
import subprocess
import sys
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import harness
from harness import BenchError

with harness.venv_imports(__file__):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from cloud.errors import PipelineError
    from cloud.export import layout
    from cloud.export.exporter import Exporter
    from cloud.export.location import open_destination
    from cloud.export.spec import ExportResult, ExportSpec
    from cloud.ingest.rule import to_item
    from cloud.query.reports import Window
    from cloud.query.run import QueryResult, run_report
    from cloud.table import number
    from device.payload import Reading
    from device.sensors.simulated import SimulatedSensor

FIRST_TS_MS = 1_740_787_200_000  # 2025-03-01T00:00:00Z
INTERVAL_MS = 10_000  # one reading every 10 s per sensor, plus 0-499 ms of jitter
DAY_MS = 86_400_000
REPORT = "summary"
#: The issue's goals for the summary report over 5,000,000 readings.
GOAL_PARQUET_S = 0.1
GOAL_RATIO = 10.0
GOAL_READINGS = 5_000_000
#: The columns the summary reads from Parquet (sensor, temperature, time; `dt` is a path).
SUMMARY_COLUMNS = ("sensor_id", "temperature", "time")
TO_ITEM_SAMPLE = 500
#: json: the datapipeline export; parquet: the parquet export; zoned: the same Parquet files
#: with `time` and `received_at` as timestamp[ms, tz=UTC], as exports wrote them before.
LAYOUTS = ("json", "parquet", "zoned")


# -- the readings --------------------------------------------------------------------------


def sensor_ids(sensors: int) -> list[str]:
    return [f"sensor-{n}" for n in range(1, sensors + 1)]


def sensor_items(sensor_id: str, count: int) -> Iterator[dict[str, Any]]:
    """One sensor's readings as SensorData items, oldest first (DynamoDB's order in a
    partition), the same for every run: seeded by the sensor's id."""
    n = int(sensor_id.rsplit("-", 1)[1])
    sensor = SimulatedSensor(sensor_id)
    rng = random.Random(zlib.crc32(sensor_id.encode()) ^ 0x5EED)
    # Spread the sensors' clocks over the interval, as independent devices are.
    start = FIRST_TS_MS + (n * 7_919) % INTERVAL_MS
    humid, press = n % 2 == 0, n % 4 == 0  # like a DHT22 and a BME280 among DS18B20s
    humidity, pressure = 45.0 + rng.uniform(-10, 10), 1013.0 + rng.uniform(-8, 8)
    for seq in range(count):
        ts = start + seq * INTERVAL_MS + rng.randrange(500)
        item: dict[str, Any] = {
            "SensorId": {"S": sensor_id},
            "CurrentTime": {"N": str(ts)},
            "Temperature": {"N": number(sensor.read()["temperature"])},
            "Seq": {"N": str(seq)},
        }
        if humid:
            humidity = min(max(humidity + rng.gauss(0, 0.3), 5.0), 95.0)
            item["Humidity"] = {"N": number(round(humidity, 1))}
        if press:
            pressure += rng.gauss(0, 0.05)
            item["Pressure"] = {"N": number(round(pressure, 2))}
        item["ReceivedAt"] = {"N": str(ts + 40 + rng.randrange(160))}
        yield item


def check_items_match_ingest(sensor_id: str, count: int) -> None:
    """The first items are what ingest's own mapping makes of the same readings."""
    for item in _take(sensor_items(sensor_id, count), TO_ITEM_SAMPLE):
        metrics = {
            name.lower(): float(item[name]["N"])
            for name in ("Humidity", "Pressure")
            if name in item
        }
        reading = Reading(
            sensor_id,
            int(item["CurrentTime"]["N"]),
            int(item["Seq"]["N"]),
            float(item["Temperature"]["N"]),
            metrics=metrics,
        )
        expected = to_item(reading.topic, reading.to_payload(), int(item["ReceivedAt"]["N"]))
        if expected != item:
            raise BenchError(f"a generated item is not what ingest writes: {item} != {expected}")


def _take(items: Iterator[dict[str, Any]], n: int) -> Iterator[dict[str, Any]]:
    for _, item in zip(range(n), items, strict=False):
        yield item


class GeneratedTable:
    """A stand-in for the DynamoDB client the exporter scans: `describe_table` and `scan`
    (no filters: a full export needs none), over readings made as they are asked for.

    Segment s holds every TotalSegments-th sensor, each sensor's readings in key order, as a
    hash-partitioned table would; pages end at Limit items and resume at ExclusiveStartKey,
    which must be the key the previous page of that segment ended with."""

    def __init__(self, ids: list[str], per_sensor: int) -> None:
        self.ids = ids
        self.per_sensor = per_sensor
        self._cursors: dict[int, tuple[Iterator[dict[str, Any]], dict[str, Any] | None]] = {}

    def describe_table(self, TableName: str) -> dict[str, Any]:  # boto3 spells it so
        return {"Table": {"TableName": TableName, "ItemCount": len(self.ids) * self.per_sensor}}

    def scan(self, **request: Any) -> dict[str, Any]:
        unsupported = set(request) - {
            "TableName", "Limit", "Segment", "TotalSegments", "ExclusiveStartKey",
            "ReturnConsumedCapacity", "ConsistentRead",
        }  # fmt: skip
        if unsupported:
            raise BenchError(f"the exporter asked GeneratedTable for {sorted(unsupported)}")
        segment = int(request.get("Segment", 0))
        total = int(request.get("TotalSegments", 1))
        start = request.get("ExclusiveStartKey")
        if start is None:
            mine = self.ids[segment::total]
            made: Iterator[dict[str, Any]] = (
                i for sid in mine for i in sensor_items(sid, self.per_sensor)
            )
            self._cursors[segment] = (made, None)
        items, last = self._cursors[segment]
        if start != last:
            raise BenchError(f"scan of segment {segment} resumed at {start}, not at {last}")
        page = list(_take(items, int(request.get("Limit") or 10_000)))
        answer: dict[str, Any] = {"Items": page, "Count": len(page), "ScannedCount": len(page)}
        if page:
            key = {"SensorId": page[-1]["SensorId"], "CurrentTime": page[-1]["CurrentTime"]}
            answer["LastEvaluatedKey"] = key
            self._cursors[segment] = (items, key)
        return answer


def export(root: Path, fmt: str, ids: list[str], per_sensor: int) -> ExportResult:
    """`cloud export --format FMT --full --to ROOT` of the generated table."""
    spec = ExportSpec(destination=str(root), fmt=fmt, full=True, settle_seconds=0.0)
    table = GeneratedTable(ids, per_sensor)
    return Exporter(table, "SensorData", open_destination(str(root)), spec).run()


# -- measuring -----------------------------------------------------------------------------


def bytes_read() -> int:
    """This process's `rchar`: bytes read by read()/pread() from files (and pipes)."""
    with open("/proc/self/io") as handle:
        for line in handle:
            if line.startswith("rchar:"):
                return int(line.split()[1])
    raise BenchError("no rchar in /proc/self/io")


@dataclass
class Run:
    seconds: float
    cpu: float  # seconds of CPU, all of the process's threads (DuckDB's too)
    read: int  # bytes
    result: QueryResult


def timed_report(root: Path, window: Window) -> Run:
    before = bytes_read()
    cpu = time.process_time()
    started = time.perf_counter()
    result = run_report(REPORT, root, window, "duckdb")
    seconds = time.perf_counter() - started
    return Run(seconds, time.process_time() - cpu, bytes_read() - before, result)


@dataclass
class Case:
    """One layout and window, measured once a round."""

    layout: str
    what: str  # "summary" or "day"
    root: Path
    window: Window
    runs: list[Run] = field(default_factory=list)

    def median(self, pick: Callable[[Run], float]) -> float:
        return statistics.median(pick(r) for r in self.runs)


def check_result(case: Case, ids: list[str], per_sensor: int) -> None:
    """Every sensor once, in order, with all its readings (whole summary) or a day's worth."""
    rows = case.runs[-1].result.rows
    got = [r[0] for r in rows]
    if got != sorted(ids):
        raise BenchError(f"{case.layout} {case.what}: sensors {got[:3]}..., not every sensor")
    counts = [r[1] for r in rows]
    if case.what == "summary":
        if any(c != per_sensor for c in counts):
            raise BenchError(f"{case.layout} summary: counts {set(counts)}, not {per_sensor}")
    elif any(abs(c - DAY_MS // INTERVAL_MS) > 1 for c in counts):
        raise BenchError(f"{case.layout} day: counts {set(counts)}, not a day's readings")


def same_rows(a: QueryResult, b: QueryResult) -> bool:
    """Both layouts give the same answer: the tutorial's table declares temperature a float
    (32 bits), so its temperatures differ from the Parquet doubles in the eighth digit."""

    def close(x: Any, y: Any) -> bool:
        if isinstance(x, float) and isinstance(y, float):
            return abs(x - y) <= 1e-6 * max(1.0, abs(x))
        return bool(x == y)  # sensor ids, counts, and plain UTC timestamps from both

    return len(a.rows) == len(b.rows) and all(
        close(x, y)
        for ra, rb in zip(a.rows, b.rows, strict=True)
        for x, y in zip(ra, rb, strict=True)
    )


def parquet_column_bytes(root: Path, day: str | None) -> tuple[int, int, int]:
    """(compressed bytes of the summary's columns, of every column, files) in the Parquet
    files, all of them or those of one `dt=` folder."""
    base = root / layout.data_prefix("parquet")
    pattern = (
        f"{layout.PARTITION_KEY}={day}/*.parquet" if day else f"{layout.PARTITION_KEY}=*/*.parquet"
    )
    needed = every = files = 0
    for path in sorted(base.glob(pattern)):
        files += 1
        meta = pq.ParquetFile(path).metadata
        for g in range(meta.num_row_groups):
            group = meta.row_group(g)
            for c in range(group.num_columns):
                column = group.column(c)
                every += column.total_compressed_size
                if column.path_in_schema in SUMMARY_COLUMNS:
                    needed += column.total_compressed_size
    return needed, every, files


def zoned_copy(source: Path, dest: Path) -> None:
    """The Parquet export at `source` as exports wrote it before issue 13: the same files, row
    groups and compression, `time` and `received_at` as timestamp[ms, tz=UTC], and every
    column with pyarrow's default encoding (a dictionary, which overflows to plain values)."""
    for path in sorted(source.rglob("*.parquet")):
        target = dest / path.relative_to(source)
        target.parent.mkdir(parents=True, exist_ok=True)
        reader = pq.ParquetFile(path)
        zoned = pa.schema(
            [
                f.with_type(pa.timestamp("ms", tz="UTC")) if pa.types.is_timestamp(f.type) else f
                for f in reader.schema_arrow
            ]
        )
        with pq.ParquetWriter(target, zoned, compression="zstd") as writer:
            for g in range(reader.num_row_groups):
                group = reader.read_row_group(g).cast(zoned)
                writer.write_table(group, row_group_size=group.num_rows)


def folder_bytes(folder: Path) -> tuple[int, int]:
    paths = [p for p in folder.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in paths), len(paths)


def cli_wall(root: Path) -> float:
    """`python -m cloud query --report summary --data ROOT`, spawn to exit."""
    argv = [sys.executable, "-m", "cloud", "query", "--report", REPORT, "--data", str(root)]
    started = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise BenchError(f"`{' '.join(argv[1:])}` exited {done.returncode}: {done.stderr.strip()}")
    return wall


# -- main ----------------------------------------------------------------------------------


def mb(n: float) -> str:
    return f"{n / 1e6:,.1f} MB"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--readings", type=int, help="readings in all [5,000,000]")
    parser.add_argument("--sensors", type=int, help="simulated sensors [100]")
    parser.add_argument("--rounds", type=int, help="rounds, each layout once a round [5]")
    parser.add_argument("--cli-runs", type=int, help="`cloud query` child runs a layout [1]")
    parser.add_argument(
        "--quick", action="store_true", help="a small run to check the bench (500,000 readings)"
    )
    args = parser.parse_args()
    defaults = (
        {"readings": 500_000, "sensors": 10, "rounds": 3, "cli_runs": 1}
        if args.quick
        else {"readings": GOAL_READINGS, "sensors": 100, "rounds": 5, "cli_runs": 1}
    )
    harness.default_sizes(args, defaults)
    if args.sensors < 1 or args.readings < args.sensors or args.readings % args.sensors:
        parser.error("--readings: a positive multiple of --sensors")
    per_sensor = args.readings // args.sensors
    if per_sensor * INTERVAL_MS < 3 * DAY_MS:
        parser.error(
            f"--readings: at least {3 * DAY_MS // INTERVAL_MS:,} a sensor (three days), so a "
            "whole day lies in the middle"
        )
    if args.rounds < 1 or args.cli_runs < 0:
        parser.error("--rounds: at least 1; --cli-runs: 0 or more")

    with contextlib.ExitStack() as stack:
        top = harness.temp_folder(stack, "bench-query-report-")
        started = time.perf_counter()
        ids = sensor_ids(args.sensors)
        days = per_sensor * INTERVAL_MS / DAY_MS
        print(
            f"query_report: {args.readings:,} readings, {args.sensors} sensors x "
            f"{per_sensor:,} (one every ~{INTERVAL_MS // 1000} s, {days:.1f} days); "
            f"{args.rounds} round(s); data in {top}",
            flush=True,
        )
        check_items_match_ingest(ids[-1], per_sensor)
        roots = {name: top / name for name in LAYOUTS}
        try:
            for name, fmt in (("json", "datapipeline"), ("parquet", "parquet")):
                roots[name].mkdir()
                result = export(roots[name], fmt, ids, per_sensor)
                if result.items != args.readings:
                    raise BenchError(f"{fmt}: exported {result.items:,} of {args.readings:,}")
                print(
                    f"exported ({fmt}, the exporter, untimed here): {result.items:,} items in "
                    f"{len(result.files)} file(s), {mb(result.bytes)}, in {result.elapsed:.1f}s",
                    flush=True,
                )
            zoned_copy(roots["parquet"], roots["zoned"])
        except (PipelineError, OSError) as exc:
            raise BenchError(f"export failed: {exc}") from exc

        # The middle day, whole: from 00:00 to 23:59:59.999 UTC.
        first_day = FIRST_TS_MS // DAY_MS + 1
        day_ms = (first_day + int(days - 1) // 2) * DAY_MS
        day = dt.datetime.fromtimestamp(day_ms / 1000, dt.UTC).date().isoformat()
        whole, one_day = Window(), Window(since_ms=day_ms, until_ms=day_ms + DAY_MS - 1)
        cases = [
            Case(name, what, roots[name], window)
            for what, window in (("summary", whole), ("day", one_day))
            for name in LAYOUTS
        ]
        try:
            for case in cases:  # a warm-up each: page cache, DuckDB's first-use costs
                timed_report(case.root, case.window)
            for r in range(args.rounds):
                for case in cases if r % 2 == 0 else cases[::-1]:
                    case.runs.append(timed_report(case.root, case.window))
                    check_result(case, ids, per_sensor)
                line = "  ".join(f"{c.layout} {c.what} {c.runs[-1].seconds:.3f}s" for c in cases)
                print(f"round {r + 1}: {line}", flush=True)
            walls = {name: [cli_wall(roots[name]) for _ in range(args.cli_runs)] for name in roots}
        except PipelineError as exc:
            raise BenchError(f"report failed: {exc}") from exc
        by = {(c.layout, c.what): c for c in cases}
        for what in ("summary", "day"):
            for name in LAYOUTS[1:]:
                if not same_rows(
                    by[("json", what)].runs[-1].result, by[(name, what)].runs[-1].result
                ):
                    raise BenchError(f"{what}: {name} and json answer differently")

        sizes = {
            name: folder_bytes(roots[name] / layout.data_prefix(fmt))
            for name, fmt in (
                ("json", "datapipeline"),
                ("parquet", "parquet"),
                ("zoned", "parquet"),
            )
        }
        needed, every, _ = parquet_column_bytes(roots["parquet"], None)
        day_needed, day_every, day_files = parquet_column_bytes(roots["parquet"], day)

        def row(label: str, *cells: str) -> None:
            print(f"{label:<44}" + "".join(f"{c:>15}" for c in cells))

        def seconds(name: str, what: str) -> float:
            return by[(name, what)].median(lambda x: x.seconds)

        print(
            f"\n== {REPORT} report, cloud.query.run.run_report in process (DuckDB), medians of "
            f"{args.rounds} round(s), warm page cache; one day = {day}"
        )
        row("", "JSON lines", "Parquet", "zoned (before)", "JSON/Parquet", "zoned/Parquet")
        row("data files", *(f"{sizes[n][1]}" for n in LAYOUTS))
        row(
            "data on disk",
            *(mb(sizes[n][0]) for n in LAYOUTS),
            f"{sizes['json'][0] / sizes['parquet'][0]:.1f}",
        )
        for what, label in (("summary", "whole summary"), ("day", f"one day ({day})")):
            s = {n: seconds(n, what) for n in LAYOUTS}
            b = {n: by[(n, what)].median(lambda x: x.read) for n in LAYOUTS}
            row(
                f"{label}, s",
                *(f"{s[n]:.3f}" for n in LAYOUTS),
                f"{s['json'] / s['parquet']:.1f}",
                f"{s['zoned'] / s['parquet']:.1f}",
            )
            row(
                "  CPU s, all threads",
                *(f"{by[(n, what)].median(lambda x: x.cpu):.3f}" for n in LAYOUTS),
            )
            if what == "summary":
                row("  readings per s", *(f"{args.readings / s[n]:,.0f}" for n in LAYOUTS))
            row(
                "  bytes read (rchar)",
                *(mb(b[n]) for n in LAYOUTS),
                f"{b['json'] / b['parquet']:.1f}" if b["parquet"] else "-",
            )
            for n in LAYOUTS:
                print(
                    f"    {n} rounds: " + ", ".join(f"{x.seconds:.3f}" for x in by[(n, what)].runs)
                )
        row("Parquet column chunks the summary needs", "", mb(needed), "", f"of {mb(every)}")
        row(
            f"  of them in dt={day}/ ({day_files} file(s))",
            "",
            mb(day_needed),
            "",
            f"of {mb(day_every)}",
        )
        if args.cli_runs:
            row(
                "`python -m cloud query --report summary`, s",
                *(f"{statistics.median(walls[n]):.2f}" for n in LAYOUTS),
            )
        summary_j, summary_p = seconds("json", "summary"), seconds("parquet", "summary")
        at = f"at {args.readings:,} readings" + (
            "" if args.readings == GOAL_READINGS else f" (the goal is set at {GOAL_READINGS:,})"
        )
        harness.print_goal(
            f"summary on Parquet <= {GOAL_PARQUET_S} s {at}",
            f"{summary_p:.3f} s",
            summary_p <= GOAL_PARQUET_S,
        )
        ratio = summary_j / summary_p
        harness.print_goal(
            f"summary JSON/Parquet >= {GOAL_RATIO:.0f}x {at}", f"{ratio:.1f}x", ratio >= GOAL_RATIO
        )
        harness.print_wall_time(started, load=True)
    return 0


if __name__ == "__main__":
    sys.exit(harness.run(main, __file__))
