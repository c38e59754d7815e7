"""The dashboard's history of one chart (cloud.dashboard.history): how long each range the
page offers takes to read and cut to the chart's points, with one sensor's --hours of
readings at 1 Hz in the local stack's table engine (dynalite).

The baseline, in the same run and on the same engine: the same read of the range's
readings (cloud.table.query_readings, at most MAX_ROWS), kept whole, nothing cut; the
history's figure is given as a ratio to it. The cut should cost next to nothing beside the
read it is made from.

    .venv/bin/python bench/dashboard_history.py [--hours H] [--quick]

Exit 0 once measured, 1 when it could not be set up, 130 when interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from typing import Any

import harness
from harness import BenchError

with harness.venv_imports(__file__):
    from broker import setting_up
    from table_load import start_dynalite

    from cloud.dashboard.history import MAX_POINTS_SENT, MAX_ROWS, RANGES_MIN, history
    from cloud.ingest.rule import to_item
    from cloud.table import create_table, query_readings
    from device.payload import Reading

TABLE = "SensorData"
SENSOR = "bench-1"
#: The cut may add this much to the read's time.
GOAL_RATIO = 1.25


def fill(ddb: Any, hours: int, now_ms: int) -> int:
    create_table(ddb, TABLE)
    count = hours * 3600
    batch: list[dict[str, object]] = []
    for k in range(count):
        reading = Reading(SENSOR, now_ms - (count - 1 - k) * 1000, k, 4.0 + (k % 600) / 100)
        batch.append({"PutRequest": {"Item": to_item(reading.topic, reading.to_payload())}})
        if len(batch) == 25 or k == count - 1:
            answer = ddb.batch_write_item(RequestItems={TABLE: batch})
            if answer.get("UnprocessedItems"):
                raise BenchError("the table engine left items unprocessed")
            batch = []
    return count


def measure(hours: int) -> None:
    with contextlib.ExitStack() as stack:
        root = harness.temp_folder(stack, "bench-dashboard-history-")
        with setting_up():
            engine = start_dynalite(root, stack)
            ddb = engine.endpoint.client("dynamodb")
            now_ms = int(time.time() * 1000)
            count = fill(ddb, hours, now_ms)
        print(f"dashboard history: one sensor, {count:,} readings at 1 Hz ({hours} h), dynalite")
        print(f"  {'range':>6}  {'readings':>9}  {'points':>6}  {'history':>9}  {'bare read':>9}")
        worst = 0.0
        for minutes in RANGES_MIN:
            since_ms = now_ms - minutes * 60_000
            # Best of three each, taken in turns: the first read of a range warms the engine.
            bare_s = history_s = float("inf")
            for _ in range(3):
                started = time.perf_counter()
                rows = list(query_readings(ddb, TABLE, SENSOR, since_ms=since_ms, limit=MAX_ROWS))
                bare_s = min(bare_s, time.perf_counter() - started)
                started = time.perf_counter()
                got = history(ddb, TABLE, SENSOR, since_ms, now_ms)
                history_s = min(history_s, time.perf_counter() - started)
            if len(got["ts"]) > MAX_POINTS_SENT or got["ts"][-1] != rows[0].time_ms:
                raise BenchError(f"{minutes} min: {len(got['ts'])} points, newest wrong")
            worst = max(worst, history_s / bare_s)
            print(
                f"  {minutes:>4}min  {len(rows):>9,}  {len(got['ts']):>6}  "
                f"{history_s:>8.2f}s  {bare_s:>8.2f}s  ({history_s / bare_s:.2f}x)"
            )
    harness.print_goal(
        f"history within {GOAL_RATIO:g}x of the bare read, every range",
        f"{worst:.2f}x",
        worst <= GOAL_RATIO,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hours", type=int)
    parser.add_argument("--quick", action="store_true", help="2 hours")
    args = parser.parse_args(argv)
    harness.default_sizes(args, {"hours": 2} if args.quick else {"hours": 24})
    if args.hours < 1:
        parser.error("--hours: at least 1")
    started = time.perf_counter()

    def run() -> int:
        measure(args.hours)
        harness.print_wall_time(started)
        return 0

    return harness.run(run, __file__)


if __name__ == "__main__":
    sys.exit(main())
