"""A write that ingest retries must not land behind an export's watermark (issue 12, item 5).

ingest stamps ReceivedAt when it takes a message, and retries a throttled BatchWriteItem
without a deadline; an export that runs meanwhile moves the watermark past that stamp with a
reading received later, and the late write is then never exported. ingest now stamps
ReceivedAt at each write attempt (cloud/ingest/writer.py, BatchWriter.write).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError

from cloud.aws import Endpoint
from cloud.export.spec import ExportResult
from cloud.ingest.settings import IngestSettings
from device.payload import Reading
from tests.cloud.conftest import DevicePublisher
from tests.cloud.test_export import BASE_MS, data_lines, export, from_datapipeline
from tests.ingest_run import Running


class ExportWhileThrottled:
    """A real client whose first BatchWriteItem is throttled, as DynamoDB can be and moto
    never is; before it answers, a reading received after the throttled one is written and
    an export runs and commits, as a scheduled export would during a long throttle."""

    def __init__(self, aws: Endpoint, table: str, dest: Path) -> None:
        self.real = aws.client("dynamodb")
        self.aws, self.table, self.dest = aws, table, dest
        self.export: ExportResult | None = None

    def batch_write_item(self, **kwargs: Any) -> dict[str, Any]:
        if self.export is None:
            ((table, requests),) = kwargs["RequestItems"].items()
            waiting = requests[0]["PutRequest"]["Item"]
            newer = {**waiting, "SensorId": {"S": "someone-else"}}
            newer["ReceivedAt"] = {"N": str(int(waiting["ReceivedAt"]["N"]) + 1)}
            self.real.put_item(TableName=table, Item=newer)
            self.export = export(self.aws, self.table, self.dest)
            error = {"Code": "ProvisionedThroughputExceededException", "Message": "slow down"}
            raise ClientError({"Error": error}, "BatchWriteItem")
        return dict(self.real.batch_write_item(**kwargs))


def test_a_reading_written_after_retries_is_in_the_next_export(
    ingest_settings: IngestSettings,
    run_ingest: Any,
    device_publisher: Any,
    device_id: str,
    aws: Endpoint,
    tmp_path: Path,
) -> None:
    ddb = ExportWhileThrottled(aws, ingest_settings.table, tmp_path)
    running: Running = run_ingest(ingest_settings, ddb=ddb)
    pub: DevicePublisher = device_publisher(device_id)
    pub.publish(Reading(device_id, BASE_MS, 0, 20.5).to_payload())
    running.wait(lambda s: s.written >= 1)
    running.finish()
    assert ddb.export is not None and ddb.export.items == 1  # the newer reading only

    export(aws, ingest_settings.table, tmp_path)
    exported = {from_datapipeline(x)["SensorId"]["S"] for x in data_lines(tmp_path)}
    assert exported == {"someone-else", device_id}
