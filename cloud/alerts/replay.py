"""`cloud alerts test`: which rules would have fired over a past time range of the table.

The same engine as the live watcher, fed the table's readings in time order with their own
timestamps as the clock: staleness is judged just before each reading and at the range's
end. The table keeps no statuses, so offline rules cannot be replayed (the report says so).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from cloud.alerts.engine import Engine, Notification
from cloud.alerts.rules import Offline, RuleSet, Stale
from cloud.alerts.state import AlertState, Episode
from cloud.table import Row, sensor_ids
from device.payload import Reading

#: How often, on the readings' clock, time-based rules are judged.
TICK_MS = 1000


@dataclass(frozen=True)
class Replay:
    notifications: list[Notification]
    #: Episodes still holding at the range's end.
    active: list[Episode]
    #: Rules that need the live stream (offline): not evaluated.
    skipped: list[str]
    readings: int


def replay(
    rules: RuleSet,
    readings: Iterable[Iterable[Row]],
    sensors: Iterable[str],
    since_ms: int,
    until_ms: int,
) -> Replay:
    """`readings`: one time-ordered series per sensor; `sensors`: every sensor the range is
    about (one with no reading in it is stale from `since_ms`)."""
    state = AlertState()
    engine = Engine(rules, state, since_ms)
    for sensor_id in sensors:
        engine.know(sensor_id, since_ms)
    notes: list[Notification] = []
    count = 0
    ticked = since_ms
    last: dict[str, int] = {}
    shortest = min(
        (r.condition.duration_ms for r in rules.rules if isinstance(r.condition, Stale)),
        default=None,
    )
    for reading in _readings(heapq.merge(*readings, key=lambda r: (r.time_ms, r.sensor_id))):
        # Time-based rules are judged once a second of the readings' clock, as the watcher
        # does on its own (the times they report are their own, not the tick's), and just
        # before a reading that ends a silence of its sensor, so that silence is judged
        # before the reading clears it. A gap of exactly a rule's duration is not stale.
        gap = reading.ts - last.get(reading.sensor_id, since_ms)
        silent = shortest is not None and gap >= shortest
        if silent or reading.ts - ticked >= TICK_MS:
            notes += engine.tick(reading.ts - 1)
            ticked = reading.ts - 1
        notes += engine.on_reading(reading, reading.ts)
        last[reading.sensor_id] = reading.ts
        count += 1
    notes += engine.tick(until_ms)
    notes.sort(key=lambda n: (n.at_ms, n.rule, n.sensor_id))
    skipped = [r.name for r in rules.rules if isinstance(r.condition, Offline)]
    active = sorted(state.episodes.values(), key=lambda e: (e.since_ms, e.rule, e.sensor_id))
    return Replay(notes, active, skipped, count)


def _readings(rows: Iterable[Row]) -> Iterator[Reading]:
    last_seq: dict[str, int] = {}
    for row in rows:
        # Items written before devices counted their readings have no Seq: taken as in order.
        seq = row.seq if row.seq is not None else last_seq.get(row.sensor_id, -1) + 1
        last_seq[row.sensor_id] = seq
        yield Reading(row.sensor_id, row.time_ms, seq, row.temperature, row.metrics)


def sensors_to_replay(
    rules: RuleSet, ddb: object, table: str, since_ms: int, until_ms: int
) -> list[str]:
    """Every sensor with readings in the range that the rules apply to, and those they name
    (a named sensor with no readings at all is what a staleness rule is for)."""
    seen = sensor_ids(ddb, table, since_ms, until_ms)
    named = {s for r in rules.rules for s in r.named_sensors}
    return sorted(s for s in seen | named if any(r.applies_to(s) for r in rules.rules))
