"""A range of one sensor's readings from the table, thinned to what a chart can show."""

from __future__ import annotations

from typing import Any

from cloud.table import query_readings

#: Ranges the page offers, in minutes (and the only ones served: the size of a query is
#: bounded by it).
RANGES_MIN = (15, 60, 360, 1440)
#: Newest readings read per sensor and range: a day at 1 Hz is 86,400, more than a chart
#: of a few hundred pixels shows; the newest are kept when there are more.
MAX_ROWS = 20_000
#: Points per chart: about one per pixel column.
MAX_POINTS_SENT = 1_500


def thin(points: list[Any], most: int = MAX_POINTS_SENT) -> list[Any]:
    """Every n-th point, always keeping the newest (the one the page's age is taken from)."""
    if len(points) <= most:
        return points
    step = -(-len(points) // most)
    kept = points[::step]
    if kept[-1] is not points[-1]:
        kept.append(points[-1])
    return kept


def history(ddb: Any, table: str, sensor_id: str, since_ms: int) -> dict[str, list[Any]]:
    """{"ts": [...], "temperature": [...]}: oldest first."""
    rows = list(query_readings(ddb, table, sensor_id, since_ms=since_ms, limit=MAX_ROWS))
    rows.reverse()
    kept = thin(rows)
    return {"ts": [r.time_ms for r in kept], "temperature": [r.temperature for r in kept]}
