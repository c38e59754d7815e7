"""The table's range queries, against moto's server."""

from __future__ import annotations

from cloud.table import item_count, query_readings


def put(ddb, table: str, sensor: str, t: int, temp: float) -> None:
    ddb.put_item(
        TableName=table,
        Item={
            "SensorId": {"S": sensor},
            "CurrentTime": {"N": str(t)},
            "Temperature": {"N": str(temp)},
            "Seq": {"N": str(t)},
        },
    )


def test_query_returns_one_sensors_range_newest_first_across_pages(aws, table):
    ddb = aws.client("dynamodb")
    for t in range(30):
        put(ddb, table, "a", t, 20 + t / 10)
    put(ddb, table, "b", 5, 99.0)
    rows = list(query_readings(ddb, table, "a", since_ms=10, until_ms=19))
    assert [r.time_ms for r in rows] == list(range(19, 9, -1))
    assert rows[0].temperature == 21.9
    assert [r.time_ms for r in query_readings(ddb, table, "a", limit=3)] == [29, 28, 27]
    assert item_count(ddb, table) == 31
