"""Ready-made queries over an export, in SQL both DuckDB and Athena run.

Each report reads `readings` when the export has it (typed, partitioned: cheaper) and the
tutorial's `sensor_data` otherwise. The window and sensor ids are `?` parameters, never
text in the SQL.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass

from cloud.errors import ConfigError, QueryError
from cloud.export.layout import PARTITION_KEY
from cloud.query import schema
from cloud.query.engines import Param
from cloud.timeparse import iso_ms, parse_time_ms


@dataclass(frozen=True)
class Window:
    """Which readings a report covers: a time range (epoch ms, inclusive) and sensor ids."""

    since_ms: int | None = None
    until_ms: int | None = None
    sensor_ids: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        since, until = self.since_ms, self.until_ms
        if since is not None and until is not None and since > until:
            raise ConfigError(f"--since {iso_ms(since)} is after --until {iso_ms(until)}")

    @classmethod
    def parse(
        cls, sensor_ids: tuple[str, ...] = (), since: str | None = None, until: str | None = None
    ) -> Window:
        """From the command line's --id (repeatable), --since and --until."""
        return cls(
            since_ms=parse_time_ms(since, "--since") if since else None,
            until_ms=parse_time_ms(until, "--until") if until else None,
            sensor_ids=tuple(dict.fromkeys(sensor_ids)),  # once each, in the order given
        )

    def describe(self) -> str:
        parts = []
        if self.since_ms is not None:
            parts.append(f"from {iso_ms(self.since_ms)}")
        if self.until_ms is not None:
            parts.append(f"until {iso_ms(self.until_ms)}")
        return " ".join(parts)


@dataclass(frozen=True)
class Source:
    """A table as the reports see it: SQL expressions for the same few facts."""

    table: str
    sensor: str
    time: str  # a timestamp (UTC)
    temperature: str
    seq: str | None
    #: epoch ms of a reading, for the window: the column itself where the table has one
    time_ms: str | None

    def where(self, window: Window, extra: tuple[str, ...] = ()) -> tuple[str, list[Param]]:
        conditions = list(extra)
        params: list[Param] = []
        if window.sensor_ids:
            conditions.append(f"{self.sensor} IN ({', '.join('?' * len(window.sensor_ids))})")
            params.extend(window.sensor_ids)
        for bound, op in ((window.since_ms, ">="), (window.until_ms, "<=")):
            if bound is None:
                continue
            if self.time_ms is not None:
                conditions.append(f"{self.time_ms} {op} ?")
                params.append(bound)
            else:
                when = dt.datetime.fromtimestamp(bound / 1000, dt.UTC).replace(tzinfo=None)
                conditions.append(f"{self.time} {op} ?")
                params.append(when)
                # The partition column too, so Athena's projection reads only those days.
                conditions.append(f"{PARTITION_KEY} {op} ?")
                params.append(when.date().isoformat())
        return (" WHERE " + " AND ".join(conditions)) if conditions else "", params


READINGS = Source(
    table=schema.READINGS,
    sensor="sensor_id",
    time="time",
    temperature="temperature",
    seq="seq",
    time_ms=None,
)
SENSOR_DATA = Source(
    table=schema.SENSOR_DATA,
    sensor="sensorid.s",
    # `from_unixtime` is Athena's; the DuckDB engine defines the same function.
    time="from_unixtime(currenttime.n / 1e3)",
    temperature="temperature.n",
    seq=None,
    time_ms="currenttime.n",
)


def source_for(tables: frozenset[str]) -> Source:
    return READINGS if schema.READINGS in tables else SENSOR_DATA


@dataclass(frozen=True)
class Report:
    name: str
    help: str
    sql: Callable[[Source, str], str]  # (source, WHERE clause) -> the query
    needs_seq: bool = False


def _select(columns: str, s: Source, where: str, tail: str) -> str:
    # Only constants and `?` placeholders go in here (hence the S608 waiver).
    return f"SELECT {columns} FROM {s.table}{where} {tail}"  # noqa: S608


def _summary(s: Source, where: str) -> str:
    columns = (
        f"{s.sensor} AS sensor, count(*) AS readings, "
        f"min({s.temperature}) AS min_temperature, avg({s.temperature}) AS avg_temperature, "
        f"max({s.temperature}) AS max_temperature, "
        f"min({s.time}) AS first_time, max({s.time}) AS last_time"
    )
    return _select(columns, s, where, "GROUP BY 1 ORDER BY 1")


def _latest(s: Source, where: str) -> str:
    seq = f", max_by({s.seq}, {s.time}) AS seq" if s.seq else ""
    columns = (
        f"{s.sensor} AS sensor, max({s.time}) AS time, "
        f"max_by({s.temperature}, {s.time}) AS temperature{seq}"
    )
    return _select(columns, s, where, "GROUP BY 1 ORDER BY 1")


def _hourly(s: Source, where: str) -> str:
    columns = (
        f"{s.sensor} AS sensor, date_trunc('hour', {s.time}) AS hour, "
        f"count(*) AS readings, avg({s.temperature}) AS avg_temperature"
    )
    return _select(columns, s, where, "GROUP BY 1, 2 ORDER BY 1, 2")


def _gaps(s: Source, where: str) -> str:
    # Readings lost between each sensor's first and last seq seen; a redelivered reading
    # (the same seq twice) counts once.
    columns = (
        f"{s.sensor} AS sensor, count(DISTINCT {s.seq}) AS received, "
        f"min({s.seq}) AS first_seq, max({s.seq}) AS last_seq, "
        f"max({s.seq}) - min({s.seq}) + 1 - count(DISTINCT {s.seq}) AS missing"
    )
    return _select(columns, s, where, "GROUP BY 1 ORDER BY 1")


def _series(s: Source, where: str) -> str:
    columns = f"{s.sensor} AS sensor, {s.time} AS time, {s.temperature} AS temperature"
    return _select(columns, s, where, "ORDER BY 1, 2")


REPORTS = {
    r.name: r
    for r in (
        Report("summary", "per sensor: count, min, avg and max temperature", _summary),
        Report("latest", "each sensor's last reading", _latest),
        Report("hourly", "per sensor and hour: count and average temperature", _hourly),
        Report("gaps", "per sensor: readings lost, from gaps in seq", _gaps, needs_seq=True),
        Report("series", "every reading: sensor, time, temperature", _series),
    )
}


def report_query(name: str, tables: frozenset[str], window: Window) -> tuple[str, list[Param]]:
    """The SQL and parameters of report `name` over an export holding `tables`."""
    try:
        report = REPORTS[name]
    except KeyError:
        raise ConfigError(
            f"--report: {name!r} is not one of {', '.join(sorted(REPORTS))}"
        ) from None
    source = source_for(tables)
    extra: tuple[str, ...] = ()
    if report.needs_seq:
        if source.seq is None:
            raise QueryError(
                f"report {name} needs the seq column, which only the parquet layout has: "
                "`cloud export --format parquet`",
                "NoSeq",
            )
        extra = (f"{source.seq} IS NOT NULL",)
    where, params = source.where(window, extra)
    return report.sql(source, where), params
