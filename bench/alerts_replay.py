"""`cloud alerts test`'s engine: readings replayed per second through the shipped rules
(config/alerts.toml: a threshold, a rate of change, staleness, a seq gap, offline), with
--sensors sensors at 1 Hz for --minutes minutes, in memory (the table's part is the
`table_load` bench's).

The baseline, in the same run: the same readings through a hand-written loop that does
only the cheapest of those checks inline (a threshold and a seq gap per reading), the floor
of what a Python pass over the readings costs. The engine's figure is given as a ratio to it.

    .venv/bin/python bench/alerts_replay.py [--sensors N] [--minutes M] [--quick]

Exit 0 once measured, 130 when interrupted.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import harness

with harness.venv_imports(__file__):
    from cloud.alerts.replay import replay
    from cloud.alerts.rules import load_rules
    from cloud.table import Row

RULES = Path(__file__).resolve().parent.parent / "config" / "alerts.toml"
T0 = 1_764_345_600_000
#: `cloud alerts test --since 1d` over a fleet of 100 at 1 Hz should take no longer than this.
GOAL_DAY_S = 60.0


def series(sensors: int, minutes: int) -> list[list[Row]]:
    return [
        [
            Row(f"s{n}", T0 + k * 1000, 20.0 + (k % 70) / 10, k, {})
            for k in range(minutes * 60)
        ]
        for n in range(sensors)
    ]


def baseline(data: list[list[Row]]) -> int:
    """A threshold and a seq gap per reading, inline: what a bare pass costs."""
    fired = 0
    for rows in data:
        last_seq = -1
        for row in rows:
            if row.temperature > 8 or (row.seq is not None and row.seq > last_seq + 1):
                fired += 1
            last_seq = row.seq if row.seq is not None else last_seq
    return fired


def measure(sensors: int, minutes: int) -> None:
    rules = load_rules(RULES)
    data = series(sensors, minutes)
    readings = sensors * minutes * 60
    ids = [rows[0].sensor_id for rows in data]
    started = time.perf_counter()
    baseline(data)
    base_s = time.perf_counter() - started
    started = time.perf_counter()
    result = replay(rules, data, ids, T0, T0 + minutes * 60_000)
    engine_s = time.perf_counter() - started
    if result.readings != readings:
        raise harness.BenchError(f"replayed {result.readings} readings of {readings}")
    print(f"alerts replay: {sensors} sensors x {minutes} min at 1 Hz = {readings:,} readings")
    print(f"  engine    {readings / engine_s:12,.0f} readings/s  ({engine_s:.2f} s)")
    print(f"  baseline  {readings / base_s:12,.0f} readings/s  ({base_s:.2f} s)")
    print(f"  engine / baseline time: {engine_s / base_s:.1f}x")
    day_s = engine_s * (100 * 86_400) / readings
    harness.print_goal(
        f"a day of 100 sensors at 1 Hz in < {GOAL_DAY_S:.0f} s",
        f"{day_s:.0f} s (extrapolated)",
        day_s < GOAL_DAY_S,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sensors", type=int)
    parser.add_argument("--minutes", type=int)
    parser.add_argument("--quick", action="store_true", help="20 sensors x 10 minutes")
    args = parser.parse_args(argv)
    sizes = {"sensors": 20, "minutes": 10} if args.quick else {"sensors": 100, "minutes": 60}
    harness.default_sizes(args, sizes)
    if args.sensors < 1 or args.minutes < 1:
        parser.error("--sensors and --minutes: at least 1")
    started = time.perf_counter()

    def run() -> int:
        measure(args.sensors, args.minutes)
        harness.print_wall_time(started)
        return 0

    return harness.run(run, __file__)


if __name__ == "__main__":
    sys.exit(main())
