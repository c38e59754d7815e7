"""A range of one sensor's readings from the table, cut down to what a chart can show."""

from __future__ import annotations

from typing import Any

from cloud.table import Row, query_readings

#: Ranges the page offers, in minutes (and the only ones served: the size of a query is
#: bounded by it).
RANGES_MIN = (15, 60, 360, 1440)
#: Newest readings read per sensor and range: a day at 1 Hz (86,400) and some. A sensor
#: faster than that shows the newest part of a long range.
MAX_ROWS = 100_000
#: Points per chart: about one per pixel column.
MAX_POINTS_SENT = 1_500


def history(
    ddb: Any,
    table: str,
    sensor_id: str,
    since_ms: int,
    until_ms: int,
    max_rows: int = MAX_ROWS,
    most: int = MAX_POINTS_SENT,
) -> dict[str, list[Any]]:
    """{"ts": [...], "temperature": [...]}: oldest first, at most `most` points.

    The range is cut into about `most / 2` equal slices of time, and each slice keeps its
    lowest and its highest reading: a chart of them looks like one of every reading, and a
    spike (the freezer's door left open for a minute) stays on it, where every n-th reading
    would most likely miss it. The newest reading is always kept: the page's age is taken
    from it.
    """
    slices = max(1, (most - 1) // 2)
    width = max(1, -(-(until_ms - since_ms) // slices))
    lowest: dict[int, Row] = {}
    highest: dict[int, Row] = {}
    newest: Row | None = None
    # Streamed, newest first: the memory held is the slices', whatever the range holds.
    for row in query_readings(ddb, table, sensor_id, since_ms=since_ms, limit=max_rows):
        if newest is None:
            newest = row
        # A reading stamped after until_ms (a device's clock ahead) joins the last slice.
        at = min((row.time_ms - since_ms) // width, slices - 1)
        low = lowest.get(at)
        if low is None or row.temperature < low.temperature:
            lowest[at] = row
        high = highest.get(at)
        if high is None or row.temperature >= high.temperature:
            highest[at] = row
    # By time, which the table's key makes unique per sensor: a slice's one reading is sent once.
    kept = {r.time_ms: r for r in (*lowest.values(), *highest.values())}
    if newest is not None:
        kept[newest.time_ms] = newest
    rows = [kept[ms] for ms in sorted(kept)]
    return {"ts": [r.time_ms for r in rows], "temperature": [r.temperature for r in rows]}
