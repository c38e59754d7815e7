"""Ingest's writers: several BatchWriteItem calls in flight, released in the order taken.

A table whose calls each wait for the test to let them through makes the order of the
writes the test's choice; what a user would see is then checked: which calls were in the
table at once, the receipts a device gets and their order, the items written, and what the
broker sends again after a failed write.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import pytest
from botocore.exceptions import ClientError

from cloud.aws import Endpoint
from cloud.errors import TableError
from cloud.ingest.settings import IngestSettings
from device.payload import Reading, parse_receipt
from tests.cloud.conftest import DevicePublisher, Running
from tests.mqtt import Subscriber
from tests.table import scan_items

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


@dataclass
class HeldIngest:
    """Ingest with `writers` writers on a HeldTable, batches of whole windows only, and the
    device's publisher and receipts subscriber."""

    settings: IngestSettings
    table: HeldTable
    running: Running
    device: DevicePublisher
    receipts: Subscriber
    sensor_id: str
    ddb: Any

    def publish(self, *seqs: int) -> None:
        self.device.publish(*(reading(self.sensor_id, seq) for seq in seqs))

    def seqs_in_table(self) -> list[int]:
        return sorted(int(i["Seq"]["N"]) for i in scan_items(self.ddb, self.settings.table))


@pytest.fixture
def held_ingest(
    ingest_settings: IngestSettings,
    run_ingest: Callable[..., Running],
    device_publisher: Callable[[str], DevicePublisher],
    subscribe: Callable[..., Subscriber],
    device_id: str,
    aws: Endpoint,
) -> Callable[..., HeldIngest]:
    def start(writers: int, fail: frozenset[int] = frozenset()) -> HeldIngest:
        settings = replace(ingest_settings, batch_seconds=WHOLE_BATCHES, writers=writers)
        receipts = subscribe(settings.port, topics=(f"sensors/{device_id}/receipt",))
        ddb = aws.client("dynamodb")
        table = HeldTable(ddb, fail)
        running = run_ingest(settings, ddb=table)
        pub = device_publisher(device_id)
        return HeldIngest(settings, table, running, pub, receipts, device_id, ddb)

    return start


def test_writes_run_side_by_side_and_receipts_follow_the_order_taken(
    held_ingest: Callable[..., HeldIngest],
) -> None:
    held = held_ingest(writers=4)
    held.publish(*range(100))
    # Four batches of 25, all in the table at once: one writer would never get here.
    held.table.wait_inside(0, 25, 50, 75)
    for first in (75, 50, 25, 0):  # the last taken finishes first
        held.table.release(first)
    receipts = held.receipts
    receipts.wait_for(lambda ms: sum(len(s) for s in receipt_seqs(receipts)) >= 100)
    stats = held.running.finish()

    # Confirmed only once written, and in the order ingest took the readings, although
    # the writes finished the other way round.
    assert receipt_seqs(receipts) == [list(range(n, n + 25)) for n in (0, 25, 50, 75)]
    assert held.table.most_inside == 4
    assert held.seqs_in_table() == list(range(100))
    assert (stats.written, stats.batches, stats.duplicates) == (100, 4, 0)


def test_a_failed_write_holds_back_the_acks_of_later_ones_and_a_restart_writes_all(
    held_ingest: Callable[..., HeldIngest], run_ingest: Callable[..., Running]
) -> None:
    held = held_ingest(writers=2, fail=frozenset({0}))
    running = held.running
    held.publish(*range(50))
    held.table.wait_inside(0, 25)
    held.table.release(25)  # the later batch is written ...
    held.table.release(0)  # ... and the earlier one fails for good
    running.thread.join(15)
    assert not running.thread.is_alive(), "a refused write must stop ingest"
    with pytest.raises(TableError, match="ValidationException"):
        running.finish()
    assert running.stats.written == 0

    # Nothing was acknowledged, the written batch included (its acks would have gone out
    # before the earlier batch's): the broker sends all 50 again to the same session.
    again = run_ingest(held.settings)
    again.wait(lambda s: s.received >= 50 and s.written + s.duplicates >= 50)
    stats = again.finish()
    assert held.seqs_in_table() == list(range(50))
    assert stats.received == 50


def test_a_copy_of_a_reading_being_written_waits_for_that_write_and_is_not_written_again(
    held_ingest: Callable[..., HeldIngest],
) -> None:
    held = held_ingest(writers=2)
    held.publish(*range(25))
    held.table.wait_inside(0)
    # A resend of reading 0 while its write is in the table, then 25 new ones.
    held.publish(0, *range(25, 50))
    held.table.wait_inside(0, 25)
    held.table.release(25)
    held.table.release(0)
    held.receipts.wait_for(lambda ms: len(ms) >= 2)
    stats = held.running.finish()

    assert held.table.items_written == 50, "reading 0 was written twice"
    assert (stats.received, stats.written, stats.duplicates) == (51, 50, 1)
    # The copy is confirmed with the second batch, which went out after the first's write.
    assert receipt_seqs(held.receipts) == [list(range(25)), [0, *range(25, 50)]]
