"""User values reach SQL and DynamoDB expressions only as parameters, never as text.

Each builder is given values no SQL text of ours contains (a quote, a comment, a marker); a
builder that formatted them into its statement fails here, whatever the engine would do.
"""

from __future__ import annotations

from typing import Any

import pytest

from cloud.errors import QueryError
from cloud.export.layout import DATA_PREFIX
from cloud.query.reports import REPORTS, Window, report_query
from cloud.table import query_readings, summarize

HOSTILE = "x' OR '1'='1 -- MARKER"
SINCE, UNTIL = 1_700_000_000_123, 1_700_000_999_456  # numbers no report's text contains


@pytest.mark.parametrize("tables", [frozenset(DATA_PREFIX.values()), frozenset({"sensor_data"})])
@pytest.mark.parametrize("name", sorted(REPORTS))
def test_reports_bind_every_user_value(name: str, tables: frozenset[str]):
    window = Window(since_ms=SINCE, until_ms=UNTIL, sensor_ids=(HOSTILE, "sensor-2"))
    try:
        sql, params = report_query(name, tables, window)
    except QueryError as exc:  # a report that needs Parquet's seq column says so
        assert name == "gaps" and "seq" in str(exc)
        return
    for value in (HOSTILE, "MARKER", "sensor-2", str(SINCE), str(UNTIL)):
        assert value not in sql, f"{name}: {value!r} was spliced into the SQL"
    flat = [str(p) for p in params]
    assert any(HOSTILE in p for p in flat) and any("sensor-2" in p for p in flat)
    assert sql.count("?") == len(params)


class RecordingDynamo:
    """Stands in for a DynamoDB client and keeps each request, to read what was sent."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []

    def query(self, **kwargs: Any) -> dict[str, Any]:
        self.requests.append(kwargs)
        return {"Items": []}

    scan = query


def test_readings_and_summary_send_values_as_expression_values():
    ddb = RecordingDynamo()
    list(query_readings(ddb, "SensorData", HOSTILE, since_ms=SINCE, until_ms=UNTIL))
    summarize(ddb, "SensorData", since_ms=SINCE)
    for request in ddb.requests:
        for key in ("KeyConditionExpression", "FilterExpression"):
            text = request.get(key, "")
            assert HOSTILE not in text and str(SINCE) not in text and str(UNTIL) not in text
    values = str(ddb.requests[0]["ExpressionAttributeValues"])
    assert HOSTILE in values and str(SINCE) in values
