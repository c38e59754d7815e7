"""Items whose CurrentTime is no reading's epoch ms are skipped and counted by both formats
(issue 12, item 6): before, one reading in microseconds made every Parquet export die with
"year 58888 is out of range", and the Data Pipeline lines carried it to every query."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow.dataset as ds
import pytest

from cloud.aws import Endpoint
from cloud.export import layout
from tests.cloud.test_export import (
    BASE_MS,
    canonical,
    cli,
    data_lines,
    export,
    from_datapipeline,
    load,
    make_items,
    manifests,
)

SKIPPED = "skipped 2 items with CurrentTime outside 2000..2100 (not a reading's ms time)"


def put_bad_items(aws: Endpoint, table: str) -> list[dict[str, Any]]:
    """Straight into the table, as ingest or the AWS rule wrote them before they refused
    such readings: one in microseconds (the year 58888), one in seconds (January 1970)."""
    bad = []
    for name, ts in (("micro", BASE_MS * 1000), ("seconds", BASE_MS // 1000)):
        item = {
            "SensorId": {"S": f"sensor-{name}"},
            "CurrentTime": {"N": str(ts)},
            "Temperature": {"N": "21.5"},
            "Seq": {"N": "0"},
            "ReceivedAt": {"N": str(BASE_MS + 5_000)},
        }
        aws.client("dynamodb").put_item(TableName=table, Item=item)
        bad.append(item)
    return bad


@pytest.mark.parametrize("fmt", ["parquet", "datapipeline"])
def test_items_with_no_reading_time_are_skipped_and_counted(
    aws: Endpoint, table: str, tmp_path: Path, fmt: str
) -> None:
    good = make_items(sensors=2, per_sensor=10)
    load(aws, table, good)
    put_bad_items(aws, table)

    result = cli(aws, table, "--to", str(tmp_path), "--format", fmt, "--settle", "0")
    assert result.exit_code == 0, result.output
    (line,) = result.output.splitlines()
    assert line.startswith("exported 20 items in ")
    assert SKIPPED in line
    (manifest,) = manifests(tmp_path, fmt)
    assert (manifest["items"], manifest["skipped_out_of_range"]) == (20, 2)

    if fmt == "parquet":
        rows = ds.dataset(tmp_path / layout.data_prefix(fmt), partitioning="hive").to_table()
        keys = set(zip(rows["sensor_id"].to_pylist(), rows["seq"].to_pylist(), strict=True))
        assert keys == {(i["SensorId"]["S"], int(i["Seq"]["N"])) for i in good}
    else:
        lines = data_lines(tmp_path)
        assert {canonical(from_datapipeline(x)) for x in lines} == {canonical(i) for i in good}

    # Skipped for good, not lost: the watermark passed them, and a rerun neither fails nor
    # takes them again.
    assert export(aws, table, tmp_path, fmt=fmt).mode == "nothing new"
