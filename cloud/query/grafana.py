"""The SQL of a Grafana dashboard on the Athena data source, as plain SQL for a time range.

`config/grafana/sensor-readings.json` is a dashboard whose panels query the `readings` table
through Grafana's Athena plugin (grafana-athena-datasource). Its SQL carries the plugin's
macros (`$__timeFilter(time)`, `$__rawTimeFrom('yyyy-MM-dd')`, ...), which the plugin's
backend expands before Athena sees the query. `expand` does the same here, spelled as the
plugin spells it (pkg/athena/macros.go), so the SQL Grafana sends Athena can be run by
`cloud query`, or by DuckDB in process over a local export, and tested there:

    dashboard = load_dashboard(DASHBOARD)
    window = TimeRange.parse("2025-11-28T22:00:00Z", "2025-11-29T02:00:00Z")
    sql = expand(panel_query(dashboard, "Latest reading per sensor").raw_sql, window)
    columns, rows = run_query(sql, "var/local/exports")

Only the macros the dashboard needs are expanded; any other macro, or a Grafana template
variable (`$sensor`, `${__interval}`), is refused by name rather than passed on as SQL that
means nothing outside Grafana.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cloud.errors import ConfigError, QueryError
from cloud.timeparse import parse_time_ms

#: The plugin's id: the `type` of its data source and of every panel's datasource ref.
PLUGIN_ID = "grafana-athena-datasource"

#: The dashboard in this repository.
DASHBOARD = Path(__file__).resolve().parents[2] / "config" / "grafana" / "sensor-readings.json"

#: A target's `format`, as the plugin numbers them (src/types: FormatOptions).
FORMATS = {0: "time_series", 1: "table", 2: "logs"}

# The plugin formats a time range to the second, dropping milliseconds.
_TIMESTAMP = "%Y-%m-%d %H:%M:%S"
#: `$__rawTimeFrom()` without a format: the plugin's default, quotes included.
DEFAULT_RAW_FORMAT = "'yyyy-MM-dd HH:mm:ss'"
# The Joda/Java date fields a raw-time format may use, as strftime fields.
_JODA = {"yyyy": "%Y", "MM": "%m", "dd": "%d", "HH": "%H", "mm": "%M", "ss": "%S"}
_JODA_TOKEN = re.compile("|".join(_JODA) + "|[A-Za-z]+")

_MACRO = re.compile(r"\$__(?P<name>\w+)(?:\((?P<args>[^()]*)\))?")
# What is left for Grafana's frontend to fill in: $name, ${name}, ${name:format}, [[name]].
_VARIABLE = re.compile(r"\$\{[^}]*\}|\$\w+|\[\[[^\]]*\]\]")


@dataclass(frozen=True)
class TimeRange:
    """The dashboard's time picker: from `start` to `end`, UTC."""

    start: dt.datetime
    end: dt.datetime

    def __post_init__(self) -> None:
        for name in ("start", "end"):
            when = getattr(self, name)
            if when.tzinfo is None:
                raise ConfigError(f"time range {name} {when.isoformat()}: give a time zone (UTC)")
            object.__setattr__(self, name, when.astimezone(dt.UTC))
        if self.start > self.end:
            raise ConfigError(
                f"time range: from {self.start.isoformat()} is after to {self.end.isoformat()}"
            )

    @classmethod
    def parse(cls, start: str, end: str, now: float | None = None) -> TimeRange:
        """From text as the other commands take it: ISO 8601, epoch ms, or -6h, -7d."""
        return cls(_utc(parse_time_ms(start, "--from", now)), _utc(parse_time_ms(end, "--to", now)))


def _utc(ms: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC)


@dataclass(frozen=True)
class PanelQuery:
    """One query of one panel, as the dashboard holds it (macros unexpanded)."""

    panel: str  # the panel's title
    ref_id: str
    raw_sql: str
    format: str  # one of FORMATS' values


def load_dashboard(path: Path = DASHBOARD) -> dict[str, Any]:
    """The dashboard JSON, as Grafana's Import takes it (a bare dashboard model)."""
    try:
        model = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"dashboard {path}: cannot read it ({exc.strerror})") from None
    except ValueError as exc:
        raise ConfigError(f"dashboard {path}: not JSON ({exc})") from None
    if not isinstance(model, dict) or not isinstance(model.get("panels"), list):
        raise ConfigError(f"dashboard {path}: no `panels` list; export it with Share > Export")
    return model


def panels(dashboard: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    """Every panel, those inside collapsed rows included (Grafana nests them there)."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def panel_queries(dashboard: Mapping[str, Any]) -> list[PanelQuery]:
    """Every query of every panel that has any, in the dashboard's order."""
    found = []
    for panel in panels(dashboard):
        title = str(panel.get("title", f"panel {panel.get('id')}"))
        for target in panel.get("targets", []):
            sql = target.get("rawSQL")
            if not isinstance(sql, str) or not sql.strip():
                raise ConfigError(f"dashboard panel {title!r}: a query without rawSQL")
            fmt = target.get("format")
            if fmt not in FORMATS:
                raise ConfigError(
                    f"dashboard panel {title!r}: format {fmt!r} is not one of "
                    f"{', '.join(f'{k} ({v})' for k, v in FORMATS.items())}"
                )
            found.append(PanelQuery(title, str(target.get("refId", "")), sql, FORMATS[fmt]))
    return found


def panel_query(dashboard: Mapping[str, Any], title: str) -> PanelQuery:
    """The query of the panel titled `title` (its first, if it has several)."""
    queries = panel_queries(dashboard)
    for query in queries:
        if query.panel == title:
            return query
    titles = ", ".join(dict.fromkeys(q.panel for q in queries))
    raise ConfigError(f"the dashboard has no panel {title!r}; its panels: {titles}")


# -- the macros ----------------------------------------------------------------------------


def _timestamp(when: dt.datetime) -> str:
    return f"TIMESTAMP '{when.strftime(_TIMESTAMP)}'"


def _raw_time(when: dt.datetime, fmt: str) -> str:
    def field(match: re.Match[str]) -> str:
        token = match.group(0)
        if token not in _JODA:
            raise QueryError(
                f"date format {fmt}: {token!r} is not one of {', '.join(_JODA)}", "BadMacro"
            )
        return when.strftime(_JODA[token])

    # Everything else (quotes, '-', ' ', ':') is copied, as the plugin copies it.
    return _JODA_TOKEN.sub(field, fmt)


def _arguments(name: str, args: list[str], low: int, high: int) -> list[str]:
    if not low <= len(args) <= high:
        wanted = str(low) if low == high else f"{low} to {high}"
        raise QueryError(
            f"$__{name} takes {wanted} argument(s), not {len(args)}", "BadMacroArguments"
        )
    return args


def _time_filter(args: list[str], window: TimeRange) -> str:
    column, *fmt = _arguments("timeFilter", args, 1, 2)
    if fmt:
        # parse_datetime(...) is Trino's; the readings' time is a timestamp already.
        raise QueryError(
            "$__timeFilter with a format parses text with Athena's parse_datetime, which "
            "DuckDB lacks; filter a timestamp column, `$__timeFilter(time)`",
            "UnsupportedMacro",
        )
    return f"{column} BETWEEN {_timestamp(window.start)} AND {_timestamp(window.end)}"


#: A macro's expansion: (its arguments, the time range) -> SQL.
_Macro = Callable[[list[str], TimeRange], str]


def _bound(at: Callable[[TimeRange], dt.datetime], name: str, raw: bool) -> _Macro:
    def expand(args: list[str], window: TimeRange) -> str:
        if not raw:
            _arguments(name, [a for a in args if a], 0, 0)
            return _timestamp(at(window))
        (fmt,) = _arguments(name, args or [""], 1, 1)
        return _raw_time(at(window), fmt or DEFAULT_RAW_FORMAT)

    return expand


#: The plugin's macros this module expands, each as the plugin writes it out.
MACROS: dict[str, _Macro] = {
    "timeFilter": _time_filter,
    "timeFrom": _bound(lambda w: w.start, "timeFrom", raw=False),
    "timeTo": _bound(lambda w: w.end, "timeTo", raw=False),
    "rawTimeFrom": _bound(lambda w: w.start, "rawTimeFrom", raw=True),
    "rawTimeTo": _bound(lambda w: w.end, "rawTimeTo", raw=True),
}

# Why the others are refused, where a reader would otherwise be left guessing.
_WHY_NOT = {
    "timeGroup": "it expands to Athena's to_unixtime, which DuckDB lacks; "
    "group with date_trunc('minute', time) instead",
}


def expand(sql: str, window: TimeRange) -> str:
    """`sql` with the plugin's macros written out for `window`, as Athena receives it."""

    def one(match: re.Match[str]) -> str:
        name = match.group("name")
        macro = MACROS.get(name)
        if macro is None:
            why = _WHY_NOT.get(name, f"the macros expanded here are {', '.join(MACROS)}")
            raise QueryError(f"$__{name} is not supported: {why}", "UnsupportedMacro")
        raw = match.group("args")
        args = [] if raw is None or not raw.strip() else [a.strip() for a in raw.split(",")]
        return macro(args, window)

    expanded = _MACRO.sub(one, sql)
    left = _VARIABLE.search(expanded)
    if left:
        raise QueryError(
            f"the SQL uses the Grafana variable {left.group(0)}, which only Grafana fills in",
            "UnsupportedVariable",
        )
    return expanded
