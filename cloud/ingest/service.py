"""`cloud ingest` as a library: the AWS IoT topic rule's part, MQTT -> SensorData.

Each message is mapped by `cloud.ingest.rule.to_item` (the same definition the deployed rule's SQL
comes from), written with BatchWriteItem, and acknowledged only after its item is written,
or after it is on disk as a dead letter. The broker keeps everything unacknowledged, so a
crash, a lost connection or a table that went away loses nothing: the messages come again
and the keyed writes make the repeat harmless.

Receipts close the one gap the broker leaves: Mosquitto acknowledges a device's publish
before the message is on disk or with us, so a broker killed at that moment loses it. After
each write, ingest publishes the [seq, ts] of what it wrote on `sensors/<id>/receipt`; a device
run with `--receipts` keeps each reading in its outbox until its receipt comes, and sends it
again if none does. (On AWS the rule sends none: IoT Core's PUBACK is durable.)

Threads: paho's network loop runs on a thread of ours (`cloud.ingest.link`, so reconnects
use our Backoff), and the table work on the thread that called `run`, so a slow or
throttled table never stalls keepalives. PUBACKs are handed back to the network thread to
send: with our own loop paho writes to the socket from whichever thread calls it, and an
SSL socket must not be read and written from two threads at once.

Writes (`cloud.ingest.writer`): the worker thread checks and batches messages, and hands
each full batch to one of `writers` threads (4 by default), so several BatchWriteItem calls
are in flight while it fills the next batch (measured in bench/ingest.py: with one, the
worker spent about 90% of its time waiting on the call). Whatever order the writes finish
in, the worker releases batches in the order it took them: a batch's receipts and acks go
out only once it and every batch before it are written. So PUBACKs keep the order the
messages came in (MQTT asks for that), a redelivered reading whose first copy is still being
written waits for that write instead of being written again, and a write given up on
shutdown holds back everything after it.

Shared subscription and persistent session, as measured on Mosquitto 2.0.11:
- a sole member of `$share/<group>/...` that is offline still gets every message queued
  in its session, and receives them when it reconnects with the same client id;
- unacknowledged messages are resent after a reconnect;
- with two members, one offline, the broker still deals the offline one its round-robin
  share (half of the messages): they wait in that member's session until it comes back,
  and are lost if its session expires first. So every instance needs its own stable client
  id and must come back; for a single instance a plain subscription (`share_group=None`)
  behaves the same as a share group of one.
- the broker honours our Receive Maximum: it never has more unacknowledged QoS 1 messages
  out to us than that.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from concurrent.futures import Executor, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures

from cloud.errors import IngestError
from cloud.ingest.deadletter import DeadLetterFile
from cloud.ingest.link import Delivery, Link, Receipt
from cloud.ingest.settings import IngestSettings, IngestStats
from cloud.ingest.writer import Batch, BatchWriter, DynamoWriter, Write, table_client
from device.backoff import Backoff

log = logging.getLogger(__name__)


class Ingest:
    """One bridge process. `run` blocks until `stop` is set or a fatal error."""

    def __init__(
        self,
        settings: IngestSettings,
        *,
        ddb: DynamoWriter | None = None,
        write_backoff: Backoff | None = None,
        connect_backoff: Backoff | None = None,
    ) -> None:
        self.settings = settings
        self.stats = IngestStats()
        self._ddb = ddb
        # What the network thread hands the worker (None: a write finished, which wakes
        # the worker to release it), and what the worker hands back to send.
        self._inbox: queue.SimpleQueue[Delivery | None] = queue.SimpleQueue()
        self._acks: deque[Delivery] = deque()  # deque append/popleft are thread-safe
        self._receipts: deque[Receipt] = deque()
        queues = (self._inbox, self._acks, self._receipts)
        self._link = Link(settings, self.stats, *queues, backoff=connect_backoff)
        self._writer = BatchWriter(settings, self.stats, *queues, backoff=write_backoff)
        #: Set once the broker has confirmed our subscription (tests and `cloud local up`).
        self.ready = self._link.ready

    def run(self, stop: threading.Event) -> IngestStats:
        """Bridge until `stop` is set; raises TableError, IngestError or DeadLetterError when
        it cannot go on (nothing unwritten is acknowledged). `stats` holds the tally either way.
        One run per Ingest: the MQTT client and its connection count are not reusable."""
        if self._link.closing.is_set():
            raise RuntimeError("Ingest.run may be called once per Ingest")
        s = self.settings
        self.stats.started = time.monotonic()
        ddb = self._ddb if self._ddb is not None else table_client(s.endpoint)
        dead = DeadLetterFile(s.dead_letter)
        network = threading.Thread(target=self._link.run, name="ingest-mqtt", daemon=True)
        log.info(
            "ingest: %s:%d %s -> table %s (client id %s, batch %d / %.2gs, %d writer(s), "
            "receive maximum %d)",
            s.host,
            s.port,
            s.topic,
            s.table,
            s.client_id,
            s.batch_size,
            s.batch_seconds,
            s.writers,
            s.receive_maximum,
        )
        network.start()
        try:
            self._work(stop, ddb, dead)
        finally:
            self._link.closing.set()
            network.join(10.0)
            dead.close()
            self.stats.seconds = time.monotonic() - self.stats.started
        if self._link.fatal is not None:
            raise IngestError(self._link.fatal)
        return self.stats

    # -- the worker: validate, batch, write, ack ---------------------------------------------

    def _work(self, stop: threading.Event, ddb: DynamoWriter, dead: DeadLetterFile) -> None:
        pool = ThreadPoolExecutor(self.settings.writers, thread_name_prefix="ingest-write")
        try:
            self._work_with(pool, stop, ddb, dead)
        finally:
            # Writers retrying stop at their next wait; one in a call finishes it (bounded).
            self._writer.halt.set()
            pool.shutdown(wait=True)

    def _work_with(
        self, pool: Executor, stop: threading.Event, ddb: DynamoWriter, dead: DeadLetterFile
    ) -> None:
        s = self.settings
        writer = self._writer

        def stopping() -> bool:
            return stop.is_set() or self._link.fatal is not None

        writes: deque[Write] = deque()  # not released yet, in the order they were taken
        batch = Batch()
        next_report = time.monotonic() + s.report_every
        reported = (time.monotonic(), 0)
        while not stopping():
            now = time.monotonic()
            wait = min(0.1, next_report - now)
            if batch.deliveries:
                wait = min(wait, batch.deadline - now)
            try:
                delivery = self._inbox.get(timeout=max(wait, 0.0))
            except queue.Empty:
                delivery = None
            if delivery is not None:
                writer.take(delivery, batch, dead)
            writer.release(writes)
            now = time.monotonic()
            if len(batch.items) >= s.batch_size or (batch.deliveries and now >= batch.deadline):
                writer.submit(batch, pool, ddb, writes, stopping)
                batch = Batch()
            if now >= next_report:
                reported = self._report(reported)
                next_report = now + s.report_every
        # A write retrying now gives up at its next wait, as the one in flight always did.
        writer.halt.set()
        if self._link.fatal is not None:
            return
        # What the broker already handed us is in memory: write it now rather than have
        # it all sent again next time.
        while True:
            try:
                delivery = self._inbox.get_nowait()
            except queue.Empty:
                break
            if delivery is None:
                continue
            writer.take(delivery, batch, dead)
            if len(batch.items) >= s.batch_size:
                writer.submit(batch, pool, ddb, writes, stopping)
                batch = Batch()
        if batch.deliveries:
            writer.submit(batch, pool, ddb, writes, stopping)
        wait_futures([future for _, future in writes])
        writer.release(writes)
        log.info("%s", self.stats.line())

    def _report(self, since: tuple[float, int]) -> tuple[float, int]:
        now, received = time.monotonic(), self.stats.received
        rate = (received - since[1]) / max(now - since[0], 1e-9)
        st = self.stats
        log.info(
            "ingest: %.0f msg/s; received %d, written %d, duplicates %d, dead-lettered %d, "
            "retries %d, batches %d",
            rate,
            st.received,
            st.written,
            st.duplicates,
            st.dead_lettered,
            st.retries,
            st.batches,
        )
        return now, received
