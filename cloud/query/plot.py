"""`cloud plot`: temperature over time for one or more sensors, as a PNG.

Reading and drawing are apart: `series_from_table` / `series_from_export` give a plain
`Series` (sensor -> [(UTC datetime, °C)]), and `render` draws any such value.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.dates import AutoDateLocator, ConciseDateFormatter
from matplotlib.figure import Figure

from cloud.aws import Endpoint
from cloud.errors import PlotError
from cloud.export.location import Where
from cloud.query.reports import Window
from cloud.query.run import run_report
from cloud.table import query_readings

Series = dict[str, list[tuple[dt.datetime, float]]]

#: Above this many points a line alone reads better than a marker per reading.
MARKER_LIMIT = 200


def series_from_table(ddb: Any, table: str, window: Window) -> Series:
    """Each sensor's readings from the DynamoDB table, oldest first (one Query per sensor)."""
    series: Series = {}
    for sensor in window.sensor_ids:
        rows = query_readings(
            ddb, table, sensor, window.since_ms, window.until_ms, newest_first=False
        )
        series[sensor] = [
            (dt.datetime.fromtimestamp(r.time_ms / 1000, dt.UTC), r.temperature) for r in rows
        ]
    return _require_data(series, window, table)


def series_from_export(data: Where, window: Window, endpoint: Endpoint | None = None) -> Series:
    """The same from an export, through DuckDB (the ids and times are query parameters)."""
    series: Series = {sensor: [] for sensor in window.sensor_ids}
    _, rows = run_report("series", data, window, "duckdb", endpoint=endpoint)
    for sensor, when, temperature in rows:
        if when.tzinfo is None:
            when = when.replace(tzinfo=dt.UTC)  # the tables' plain timestamps are UTC
        series.setdefault(sensor, []).append((when, float(temperature)))
    return _require_data(series, window, str(data))


def _require_data(series: Series, window: Window, where: str) -> Series:
    empty = [sensor for sensor, points in series.items() if not points]
    if empty:
        span = f" {window.describe()}" if window.describe() else ""
        raise PlotError(f"no readings for {', '.join(empty)} in {where}{span}; nothing to plot")
    return series


def render(series: Series, out: Path, title: str | None = None) -> Path:
    """Draw `series` into a PNG at `out` (written whole, then moved into place)."""
    if not series or not any(series.values()):
        raise PlotError("nothing to plot")
    # A Figure with its own Agg canvas: no pyplot, so no global backend or figure state.
    figure = Figure(figsize=(10, 5), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for sensor, points in series.items():
        times = [t for t, _ in points]
        temps = [v for _, v in points]
        marker = "." if len(points) <= MARKER_LIMIT else None
        # matplotlib's stubs know numbers only; datetimes go through its unit converters.
        axes.plot(times, temps, marker=marker, linewidth=1.2, label=sensor)  # type: ignore[arg-type]
    locator = AutoDateLocator(tz=dt.UTC)  # type: ignore[no-untyped-call]
    axes.xaxis.set_major_locator(locator)
    formatter = ConciseDateFormatter(locator, tz=dt.UTC)  # type: ignore[no-untyped-call]
    axes.xaxis.set_major_formatter(formatter)
    axes.set_xlabel("Time (UTC)")
    axes.set_ylabel("Temperature (°C)")
    axes.set_title(title or f"Temperature of {', '.join(series)}")
    axes.grid(True, alpha=0.3)
    axes.legend(title="sensor", loc="best")
    out = out.expanduser()
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        partial = out.with_name(f".{out.name}.partial")
        figure.savefig(partial, format="png")
        partial.replace(out)
    except OSError as exc:
        raise PlotError(f"cannot write {out}: {exc.strerror or exc}") from None
    return out
