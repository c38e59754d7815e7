"""Ingest's table side: batches, BatchWriteItem with retries, and their release in order.

The worker checks each delivery (`rule.to_reading_and_item`), adds it to a batch, and hands
full batches to writer threads, so several BatchWriteItem calls are in flight while it fills
the next. Whatever order the writes finish in, batches are released in the order they were
taken: a batch's receipts and acks are queued for the network thread only once it and every
batch before it are written (see cloud.ingest.service).
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Executor, Future
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass, field
from typing import Any, Protocol

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    EndpointConnectionError,
    ReadTimeoutError,
)

from cloud.aws import Endpoint
from cloud.errors import TableError, aws_code
from cloud.ingest.deadletter import DeadLetter, DeadLetterFile
from cloud.ingest.link import Delivery, Receipt
from cloud.ingest.rule import to_reading_and_item, topic_sensor_id
from cloud.ingest.settings import IngestSettings, IngestStats
from device.backoff import Backoff
from device.errors import PayloadError
from device.payload import Reading, check_sensor_id

log = logging.getLogger(__name__)

#: Keys of the items this process wrote last. A reading that comes again (a device's resend
#: after a reconnect or a receipt timeout) is acknowledged and confirmed without a second
#: write, so its ReceivedAt stays that of its first arrival and an incremental export, which
#: goes by ReceivedAt, does not take it twice. About 15 MB at this size.
RECENT_KEYS = 100_000
#: Errors DynamoDB answers when it is busy, not when the request is wrong.
RETRYABLE_CODES = frozenset(
    {
        "ProvisionedThroughputExceededException",
        "ThrottlingException",
        "RequestLimitExceeded",
        "InternalServerError",
        "ServiceUnavailable",
    }
)
#: The endpoint cannot be reached at the moment: worth waiting for, like throttling.
_TRANSIENT_BOTO = (EndpointConnectionError, ConnectionClosedError, ReadTimeoutError)


class DynamoWriter(Protocol):
    """The one DynamoDB call ingest makes; a boto3 client, or a wrapper that injects faults."""

    def batch_write_item(self, **kwargs: Any) -> dict[str, Any]: ...


def table_client(endpoint: Endpoint) -> Any:
    """The client ingest writes with, shared by its writer threads (boto3 clients are
    thread-safe). One attempt per call, bounded in time: ingest retries by itself, and each
    attempt must land well inside an export's settle window (see BatchWriter.write)."""
    return endpoint.client(
        "dynamodb", retries={"total_max_attempts": 1}, connect_timeout=2, read_timeout=5
    )


@dataclass
class Batch:
    items: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    deliveries: list[Delivery] = field(default_factory=list)
    confirmed: dict[str, set[tuple[int, int]]] = field(default_factory=dict)  # per sensor
    deadline: float = 0.0

    def add(
        self, key: tuple[str, str], item: dict[str, Any], reading: Reading, delivery: Delivery
    ) -> None:
        """Add a delivery to write (a later item of the same key replaces the earlier)."""
        self.items[key] = item
        self.add_written(key, reading, delivery)

    def add_written(self, key: tuple[str, str], reading: Reading, delivery: Delivery) -> None:
        """Add a delivery whose item is in the table already: acknowledged and confirmed
        along with the batch, not written again."""
        self.deliveries.append(delivery)
        self.confirmed.setdefault(key[0], set()).add((reading.seq, reading.ts))


@dataclass(frozen=True, slots=True)
class _Written:
    done: bool  # False: given up because ingest is stopping; nothing of it is acknowledged
    retries: int


Write = tuple[Batch, Future[_Written]]  # a batch handed to a writer, and how it went


class BatchWriter:
    """The worker's table work. The worker thread calls `take`, `submit` and `release`;
    `write` runs on the writer threads. Acks and receipts go to the network thread's
    queues, receipts of a batch before its acks."""

    def __init__(
        self,
        settings: IngestSettings,
        stats: IngestStats,
        inbox: queue.SimpleQueue[Delivery | None],
        acks: deque[Delivery],
        receipts: deque[Receipt],
        backoff: Backoff | None = None,
    ) -> None:
        self.settings = settings
        self.stats = stats
        self._inbox = inbox  # a finished write puts None there, to wake the worker
        self._acks = acks
        self._receipts = receipts
        # DynamoDB asks for retries to start small; the cap keeps a long throttle from
        # turning into minutes between attempts.
        self._backoff = backoff or Backoff(initial=0.05, cap=5.0)
        self._backoff_lock = threading.Lock()  # the backoff is shared by the writers
        #: Set when writers should stop retrying: ingest is stopping, or failed.
        self.halt = threading.Event()
        self._recent: OrderedDict[tuple[str, str], None] = OrderedDict()  # oldest first
        self._writing: set[tuple[str, str]] = set()  # keys of batches not released yet
        self._held = False  # a write was given up: no later batch may be acknowledged

    def take(self, delivery: Delivery, batch: Batch, dead: DeadLetterFile) -> None:
        self.stats.received += 1
        try:
            reading, item = to_reading_and_item(delivery.topic, delivery.payload)
        except PayloadError as err:
            dead.append(DeadLetter.now(delivery.topic, err.reason, str(err), delivery.payload))
            self.stats.dead_lettered += 1
            log.debug("dead letter from %s: %s", delivery.topic, err)
            # Handled for good, as a written one: the device need not send it again.
            rejected = _rejected_reading(delivery.topic, delivery.payload)
            if rejected is not None and self.settings.receipts:
                self._receipts.append((rejected[0], [rejected[1]]))
            self._acks.append(delivery)  # after its receipt: see cloud.ingest.link
            return
        if not batch.deliveries:
            batch.deadline = time.monotonic() + self.settings.batch_seconds
        key = (item["SensorId"]["S"], item["CurrentTime"]["N"])
        if key in batch.items or key in self._recent or key in self._writing:
            # BatchWriteItem refuses two puts of one key in a request, and one write of
            # the reading is all a redelivery needs. One whose first copy is still being
            # written is released after that write (batches are released in order).
            self.stats.duplicates += 1
            batch.add_written(key, reading, delivery)
        else:
            batch.add(key, item, reading, delivery)

    def submit(
        self,
        batch: Batch,
        pool: Executor,
        ddb: DynamoWriter,
        writes: deque[Write],
        stopping: Callable[[], bool],
    ) -> None:
        """Hand the batch to a writer, once one is free; finished writes are released
        meanwhile, so acks keep flowing while the table is slow."""
        while True:
            busy = [future for _, future in writes if not future.done()]
            if len(busy) < self.settings.writers:
                break
            wait_futures(busy, timeout=0.1, return_when=FIRST_COMPLETED)
            if stopping():
                self.halt.set()
            self.release(writes)
        future: Future[_Written]
        if batch.items:
            self._writing.update(batch.items)
            future = pool.submit(self.write, batch, ddb)
            future.add_done_callback(lambda _: self._inbox.put(None))
        else:  # only readings already written or being written: nothing to write
            future = Future()
            future.set_result(_Written(done=True, retries=0))
        writes.append((batch, future))

    def release(self, writes: deque[Write]) -> None:
        """Queue the receipts and acks of the finished writes at the head of `writes`, in
        the order the batches were taken; re-raise a write's TableError."""
        while writes and writes[0][1].done():
            batch, future = writes.popleft()
            self._writing.difference_update(batch.items)
            written = future.result()
            self.stats.retries += written.retries
            if not written.done and not self._held:
                self._held = True
                log.warning(
                    "stopping with %d reading(s) unwritten; neither they nor any taken after "
                    "them are acknowledged, so the broker sends them again next time",
                    len(batch.deliveries),
                )
            if self._held:
                continue
            if batch.items:
                self.stats.batches += 1
                self.stats.written += len(batch.items)
            self._remember(batch.items)
            if self.settings.receipts:
                self._receipts.extend((id_, sorted(r)) for id_, r in batch.confirmed.items())
            self._acks.extend(batch.deliveries)  # after their receipts: see cloud.ingest.link

    def write(self, batch: Batch, ddb: DynamoWriter) -> _Written:
        """On a writer thread: write the batch, retrying what the table can take later;
        give up only when ingest is stopping."""
        table = self.settings.table
        pending: list[dict[str, Any]] = [{"PutRequest": {"Item": i}} for i in batch.items.values()]
        retries = 0
        while pending:
            # ReceivedAt is the time of the attempt that writes the item, not of its
            # arrival: an export's watermark (cloud/export/run.py, settle) trusts that an item
            # is in the table within seconds of its ReceivedAt, whatever throttling came
            # before. An attempt that timed out but landed is rewritten with a later stamp,
            # so an export in between may take that row twice; never miss it.
            now_ms = str(int(time.time() * 1000))
            for request in pending:
                request["PutRequest"]["Item"]["ReceivedAt"] = {"N": now_ms}
            try:
                answer = ddb.batch_write_item(RequestItems={table: pending})
            except ClientError as exc:
                code = aws_code(exc)
                if code not in RETRYABLE_CODES:
                    raise _table_error(table, code, exc) from None
                why = code
            except _TRANSIENT_BOTO as exc:
                why = type(exc).__name__
            except BotoCoreError as exc:
                raise TableError(f"cannot write to table {table}: {exc}") from None
            else:
                pending = answer.get("UnprocessedItems", {}).get(table, [])
                if not pending:
                    break
                why = f"{len(pending)} unprocessed item(s)"
            retries += 1
            with self._backoff_lock:
                delay = self._backoff.next_delay()
            log.info("BatchWriteItem on %s: %s; retrying in %.2fs", table, why, delay)
            if self.halt.wait(delay):
                return _Written(done=False, retries=retries)
        with self._backoff_lock:
            self._backoff.reset()
        return _Written(done=True, retries=retries)

    def _remember(self, written: dict[tuple[str, str], dict[str, Any]]) -> None:
        self._recent.update(dict.fromkeys(written))
        while len(self._recent) > RECENT_KEYS:
            self._recent.popitem(last=False)


def _rejected_reading(topic: str, payload: bytes) -> tuple[str, tuple[int, int]] | None:
    """Who a rejected message came from and its (seq, ts), when it says so plainly."""
    try:
        sensor_id = check_sensor_id(topic_sensor_id(topic))
        body = json.loads(payload)
    except (PayloadError, ValueError, RecursionError):
        return None
    if not isinstance(body, dict):
        return None
    seq, ts = body.get("seq"), body.get("ts")
    numbers = [n for n in (seq, ts) if isinstance(n, int) and not isinstance(n, bool) and n >= 0]
    if len(numbers) != 2:
        return None
    return sensor_id, (numbers[0], numbers[1])


def _table_error(table: str, code: str, exc: ClientError) -> TableError:
    if code == "ResourceNotFoundException":
        message = (
            f"table {table} not found; create it (`cloud local up`, or `cloud deploy`) and "
            "start ingest again: nothing was acknowledged, the broker keeps the readings"
        )
    elif code in ("AccessDeniedException", "UnrecognizedClientException"):
        message = f"not allowed to write to table {table} ({code}): check the AWS credentials"
    else:
        message = f"writing to table {table} failed: {exc}; nothing was acknowledged"
    return TableError(message, code)
