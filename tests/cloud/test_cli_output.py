"""The one row writer (cloud/cli/output.py): every format carries every metric, and a
metric a sensor does not measure is empty, or null in JSON."""

from __future__ import annotations

import csv
import json

from cloud.cli.output import OUTPUT_FORMATS, READING_COLUMNS, format_rows, reading_values
from cloud.table import Row

ROWS = [
    Row("sensor-1", 1764345600123, 21.37, 42, {"humidity": 40.5, "pressure": 1013.25}),
    Row("sensor-1", 1764345600000, 21.0, None, {}),
]


def lines(fmt: str) -> list[str]:
    return list(format_rows(READING_COLUMNS, map(reading_values, ROWS), fmt))


def test_json_has_every_metric_and_null_for_what_is_missing():
    first, second = (json.loads(line) for line in lines("json"))
    assert first == {
        "sensor_id": "sensor-1",
        "time": "2025-11-28T16:00:00.123Z",
        "time_ms": 1764345600123,
        "temperature": 21.37,
        "humidity": 40.5,
        "pressure": 1013.25,
        "seq": 42,
    }
    assert second["humidity"] is None and second["pressure"] is None and second["seq"] is None


def test_csv_has_every_metric():
    header, first, second = csv.reader(lines("csv"))
    assert header == list(READING_COLUMNS)
    got = dict(zip(header, first, strict=True))
    assert (got["temperature"], got["humidity"], got["pressure"]) == ("21.37", "40.5", "1013.25")
    assert dict(zip(header, second, strict=True))["humidity"] == ""


def test_table_has_every_metric():
    header, rule, first, _ = lines("table")
    assert header.split() == list(READING_COLUMNS)
    assert set(rule) == {"-", " "}
    assert first.split() == [
        "sensor-1",
        "2025-11-28T16:00:00.123Z",
        "1764345600123",
        "21.37",
        "40.5",
        "1013.25",
        "42",
    ]


def test_no_rows_still_say_which_columns():
    for fmt in OUTPUT_FORMATS:
        got = list(format_rows(["a", "b"], [], fmt))
        assert got == {"json": [], "csv": ["a,b"], "table": ["a  b", "-  -"]}[fmt]
