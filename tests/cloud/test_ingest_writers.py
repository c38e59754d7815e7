"""Ingest's writers: several BatchWriteItem calls in flight, released in the order taken.

A table whose calls each wait for the test to let them through makes the order of the
writes the test's choice; what a user would see is then checked: which calls were in the
table at once, the receipts a device gets and their order, the items written, and what the
broker sends again after a failed write.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest
from botocore.exceptions import ClientError

from cloud.aws import Endpoint
from cloud.ingest.settings import IngestSettings
from cloud.table import StoreError
from device.payload import Reading, parse_receipt
from tests.cloud.conftest import DevicePublisher, Running, scan_items
from tests.mqtt import Subscriber

RunIngest = Callable[..., Running]
Publisher = Callable[[str], DevicePublisher]
#: A long window: batches go out only when full, so they are exactly the test's.
WHOLE_BATCHES = 30.0


def reading(sensor_id: str, seq: int) -> bytes:
    return Reading(sensor_id, ts=1_764_345_600_000 + seq, seq=seq, temperature=20.0).to_payload()


class HeldTable:
    """A real table whose every BatchWriteItem waits until the test releases it, by the seq
    of the first reading in it. `fail` names calls that answer a non-retryable error
    instead of writing."""

    def __init__(self, real: Any, fail: frozenset[int] = frozenset()) -> None:
        self.real = real
        self.fail = fail
        self._cond = threading.Condition()
        self.inside: set[int] = set()
        self.most_inside = 0
        self.released: set[int] = set()
        self.returned: set[int] = set()
        self.items_written = 0

    def batch_write_item(self, **kwargs: Any) -> dict[str, Any]:
        ((_table, requests),) = kwargs["RequestItems"].items()
        first = min(int(r["PutRequest"]["Item"]["Seq"]["N"]) for r in requests)
        with self._cond:
            self.inside.add(first)
            self.most_inside = max(self.most_inside, len(self.inside))
            self._cond.notify_all()
            assert self._cond.wait_for(lambda: first in self.released, 30), "never released"
        try:
            if first in self.fail:
                error = {"Code": "ValidationException", "Message": "refused by the test"}
                raise ClientError({"Error": error}, "BatchWriteItem")
            answer = dict(self.real.batch_write_item(**kwargs))
            with self._cond:
                self.items_written += len(requests)
            return answer
        finally:
            with self._cond:
                self.inside.discard(first)
                self.returned.add(first)
                self._cond.notify_all()

    def wait_inside(self, *firsts: int) -> None:
        with self._cond:
            ok = self._cond.wait_for(lambda: set(firsts) <= self.inside, 20)
        assert ok, f"calls {sorted(firsts)} never in the table at once (in: {self.inside})"

    def release(self, first: int) -> None:
        """Let the call through and wait until it returned to ingest."""
        with self._cond:
            self.released.add(first)
            self._cond.notify_all()
            assert self._cond.wait_for(lambda: first in self.returned, 20), f"{first} stuck"


def receipt_seqs(sub: Subscriber) -> list[list[int]]:
    return [sorted(parse_receipt(m.payload)) for m in sub.messages]


def test_writes_run_side_by_side_and_receipts_follow_the_order_taken(
    ingest_settings: IngestSettings,
    run_ingest: RunIngest,
    device_publisher: Publisher,
    subscribe: Callable[..., Subscriber],
    device_id: str,
    aws: Endpoint,
) -> None:
    settings = replace(ingest_settings, batch_seconds=WHOLE_BATCHES, writers=4)
    receipts = subscribe(settings.port, topics=(f"sensors/{device_id}/receipt",))
    table = HeldTable(aws.client("dynamodb"))
    running = run_ingest(settings, ddb=table)
    device_publisher(device_id).publish(*(reading(device_id, seq) for seq in range(100)))
    # Four batches of 25, all in the table at once: one writer would never get here.
    table.wait_inside(0, 25, 50, 75)
    for first in (75, 50, 25, 0):  # the last taken finishes first
        table.release(first)
    receipts.wait_for(lambda ms: sum(len(s) for s in receipt_seqs(receipts)) >= 100)
    stats = running.finish()

    # Confirmed only once written, and in the order ingest took the readings, although
    # the writes finished the other way round.
    assert receipt_seqs(receipts) == [list(range(n, n + 25)) for n in (0, 25, 50, 75)]
    assert table.most_inside == 4
    items = scan_items(aws.client("dynamodb"), settings.table)
    assert sorted(int(i["Seq"]["N"]) for i in items) == list(range(100))
    assert (stats.written, stats.batches, stats.duplicates) == (100, 4, 0)


def test_a_failed_write_holds_back_the_acks_of_later_ones_and_a_restart_writes_all(
    ingest_settings: IngestSettings,
    run_ingest: RunIngest,
    device_publisher: Publisher,
    device_id: str,
    aws: Endpoint,
) -> None:
    settings = replace(ingest_settings, batch_seconds=WHOLE_BATCHES, writers=2)
    table = HeldTable(aws.client("dynamodb"), fail=frozenset({0}))
    running = run_ingest(settings, ddb=table)
    device_publisher(device_id).publish(*(reading(device_id, seq) for seq in range(50)))
    table.wait_inside(0, 25)
    table.release(25)  # the later batch is written ...
    table.release(0)  # ... and the earlier one fails for good
    running.thread.join(15)
    assert not running.thread.is_alive(), "a refused write must stop ingest"
    with pytest.raises(StoreError, match="ValidationException"):
        running.finish()
    assert running.stats.written == 0

    # Nothing was acknowledged, the written batch included (its acks would have gone out
    # before the earlier batch's): the broker sends all 50 again to the same session.
    again = run_ingest(settings)
    again.wait(lambda s: s.received >= 50 and s.written + s.duplicates >= 50)
    stats = again.finish()
    items = scan_items(aws.client("dynamodb"), settings.table)
    assert sorted(int(i["Seq"]["N"]) for i in items) == list(range(50))
    assert stats.received == 50


def test_a_copy_of_a_reading_being_written_waits_for_that_write_and_is_not_written_again(
    ingest_settings: IngestSettings,
    run_ingest: RunIngest,
    device_publisher: Publisher,
    subscribe: Callable[..., Subscriber],
    device_id: str,
    aws: Endpoint,
) -> None:
    settings = replace(ingest_settings, batch_seconds=WHOLE_BATCHES, writers=2)
    receipts = subscribe(settings.port, topics=(f"sensors/{device_id}/receipt",))
    table = HeldTable(aws.client("dynamodb"))
    running = run_ingest(settings, ddb=table)
    pub = device_publisher(device_id)
    pub.publish(*(reading(device_id, seq) for seq in range(25)))
    table.wait_inside(0)
    # A resend of reading 0 while its write is in the table, then 25 new ones.
    pub.publish(reading(device_id, 0), *(reading(device_id, seq) for seq in range(25, 50)))
    table.wait_inside(0, 25)
    table.release(25)
    table.release(0)
    receipts.wait_for(lambda ms: len(ms) >= 2)
    stats = running.finish()

    assert table.items_written == 50, "reading 0 was written twice"
    assert (stats.received, stats.written, stats.duplicates) == (51, 50, 1)
    # The copy is confirmed with the second batch, which went out after the first's write.
    assert receipt_seqs(receipts) == [list(range(25)), [0, *range(25, 50)]]
