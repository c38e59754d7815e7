"""The dashboard's history of a sensor (cloud.dashboard.history), read from a real table
(moto's DynamoDB): what the chart of a range is drawn from."""

from __future__ import annotations

from cloud.aws import Endpoint
from cloud.dashboard.history import history
from cloud.ingest.rule import to_item
from device.payload import Reading

HOUR_MS = 3_600_000
NOW_MS = 1_780_000_000_000
SPIKE_MS = NOW_MS - HOUR_MS + 1_234_000


def fill(aws: Endpoint, table: str, sensor_id: str, every_ms: int, span_ms: int) -> None:
    """A reading every `every_ms` up to NOW_MS, 4.0 but for one of 30.0 at SPIKE_MS."""
    ddb = aws.client("dynamodb")
    items = [
        {
            "PutRequest": {
                "Item": to_item(reading.topic, reading.to_payload(), received_ms=reading.ts)
            }
        }
        for seq, ts in enumerate(range(NOW_MS - span_ms + every_ms, NOW_MS + 1, every_ms))
        for reading in [Reading(sensor_id, ts, seq, 30.0 if ts == SPIKE_MS else 4.0)]
    ]
    for start in range(0, len(items), 25):
        answer = ddb.batch_write_item(RequestItems={table: items[start : start + 25]})
        assert not answer.get("UnprocessedItems")


def test_a_dense_hour_is_cut_to_the_chart_yet_keeps_its_spike_and_its_ends(
    aws: Endpoint, table: str
) -> None:
    # An hour at 1 Hz: 3,600 readings for a chart of 1,500 points.
    fill(aws, table, "s1", 1_000, HOUR_MS)
    got = history(aws.client("dynamodb"), table, "s1", NOW_MS - HOUR_MS, NOW_MS)
    assert 1_000 < len(got["ts"]) <= 1_500
    assert got["ts"] == sorted(got["ts"])
    # One reading of 30.0 in 3,600: every n-th reading would likely have missed it.
    assert got["temperature"].count(30.0) == 1
    assert got["ts"][got["temperature"].index(30.0)] == SPIKE_MS
    # The whole hour is on it: the newest reading (the page's age) and the first minute's.
    assert got["ts"][-1] == NOW_MS
    assert got["ts"][0] < NOW_MS - HOUR_MS + 60_000


def test_a_sparse_range_is_sent_whole(aws: Endpoint, table: str) -> None:
    fill(aws, table, "s1", 60_000, HOUR_MS)
    fill(aws, table, "other", 60_000, HOUR_MS)
    got = history(aws.client("dynamodb"), table, "s1", NOW_MS - 30 * 60_000, NOW_MS)
    # Half an hour of a reading a minute, the boundary's one included; not the other sensor's.
    assert got["ts"] == list(range(NOW_MS - 30 * 60_000, NOW_MS + 1, 60_000))
    assert set(got["temperature"]) == {4.0}


def test_a_range_with_more_than_it_reads_shows_its_newest_part(aws: Endpoint, table: str) -> None:
    fill(aws, table, "s1", 1_000, 600_000)
    got = history(aws.client("dynamodb"), table, "s1", NOW_MS - 600_000, NOW_MS, max_rows=100)
    assert got["ts"][0] == NOW_MS - 99_000
    assert got["ts"][-1] == NOW_MS
