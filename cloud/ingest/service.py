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

Threads: paho's network loop runs on a thread of ours (so reconnects use our Backoff), and
the table work on the thread that called `run`, so a slow or throttled table never stalls
keepalives. PUBACKs are handed back to the network thread to send: with our own loop paho
writes to the socket from whichever thread calls it, and an SSL socket must not be read and
written from two threads at once.

Writes: the worker thread checks and batches messages, and hands each full batch to one of
`writers` threads (4 by default), so several BatchWriteItem calls are in flight while it
fills the next batch (measured in bench/ingest.py: with one, the worker spent about 90% of its
time waiting on the call). Whatever order the writes finish in, the worker releases batches
in the order it took them: a batch's receipts and acks go out only once it and every batch
before it are written. So PUBACKs keep the order the messages came in (MQTT asks for that),
a redelivered reading whose first copy is still being written waits for that write instead
of being written again, and a write given up on shutdown holds back everything after it.

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

import json
import logging
import queue
import ssl
import threading
import time
from collections import OrderedDict, deque
from concurrent.futures import FIRST_COMPLETED, Executor, Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import paho.mqtt.client as mqtt
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    EndpointConnectionError,
    ReadTimeoutError,
)
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from cloud.aws import Endpoint
from cloud.errors import ConfigError, PipelineError
from cloud.identity.local_ca import Identity
from cloud.ingest.deadletter import DeadLetter, DeadLetterFile
from cloud.ingest.rule import TOPIC_FILTER, to_item, topic_sensor_id
from cloud.table import StoreError
from device.backoff import Backoff
from device.config import MQTT_VERSIONS
from device.payload import PayloadError, check_sensor_id, encode_receipt, receipt_topic

log = logging.getLogger(__name__)

#: BatchWriteItem takes at most 25 put requests.
MAX_BATCH = 25
#: Keys of the items this process wrote last. A reading that comes again (a device's resend
#: after a reconnect or a receipt timeout) is acknowledged and confirmed without a second
#: write, so its ReceivedAt stays that of its first arrival and an incremental export, which
#: goes by ReceivedAt, does not take it twice. About 15 MB at this size.
RECENT_KEYS = 100_000
KEEPALIVE_SECONDS = 30
#: BatchWriteItem calls in flight at most: botocore's connection pool holds 10.
MAX_WRITERS = 10
#: How long the network thread sleeps in select() at most: the latency a PUBACK can wait.
_LOOP_SECONDS = 0.01
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
#: CONNACK reason codes retrying cannot fix (MQTT 5 values; paho maps 3.1.1's onto them).
_FATAL_CONNACK = {0x86, 0x87, 0x85, 0x8A, 0x8C}
#: CONNACK of a broker that does not speak the protocol version asked for.
_UNSUPPORTED_VERSION = 0x84
_SESSION_TAKEN_OVER = 142


class IngestError(PipelineError):
    """The bridge cannot go on: the broker refuses our certificate, client id or subscription."""


class DynamoWriter(Protocol):
    """The one DynamoDB call ingest makes; a boto3 client, or a wrapper that injects faults."""

    def batch_write_item(self, **kwargs: Any) -> dict[str, Any]: ...


@dataclass(frozen=True)
class IngestSettings:
    host: str
    port: int
    tls: Identity | None  # None: plain MQTT, for a loopback broker only
    endpoint: Endpoint
    table: str
    dead_letter: Path  # JSON lines, see cloud.ingest.deadletter
    # One per instance: the broker keeps a session per id. Mosquitto (use_username_as_
    # clientid) replaces it with the certificate's name, so it must be that name.
    client_id: str = "ingest"
    # None: a plain subscription (one instance; kept across broker restarts). A group lets
    # several instances split the load, but Mosquitto 2.0 does not restore shared
    # subscriptions from persistence: until ingest resubscribes, readings are dropped.
    share_group: str | None = None
    batch_size: int = MAX_BATCH
    batch_seconds: float = 0.2  # a partial batch is written after this long
    receive_maximum: int = 500  # unacknowledged messages the broker may send us at once
    report_every: float = 10.0
    session_expiry_seconds: int = 86_400  # the broker queues for us this long while we are away
    receipts: bool = True  # confirm each written reading to its device (see the module doc)
    # auto: MQTT 5, or 3.1.1 when the broker refuses 5. Under 3.1.1 there is no receive
    # maximum (paho's inflight window bounds nothing incoming), no shared subscriptions and
    # no "session taken over" reason: a second ingest with our client id goes unnoticed.
    mqtt_version: str = "auto"
    writers: int = 4  # BatchWriteItem calls in flight at most (see the module doc)

    def __post_init__(self) -> None:
        if not 1 <= self.batch_size <= MAX_BATCH:
            raise ConfigError(f"batch_size {self.batch_size}: use 1 to {MAX_BATCH}")
        if not 1 <= self.writers <= MAX_WRITERS:
            raise ConfigError(f"writers {self.writers}: use 1 to {MAX_WRITERS}")
        if self.batch_seconds <= 0:
            raise ConfigError(f"batch_seconds {self.batch_seconds}: must be > 0")
        if not 1 <= self.receive_maximum <= 65_535:
            raise ConfigError(f"receive_maximum {self.receive_maximum}: use 1 to 65535")
        if self.report_every <= 0:
            raise ConfigError(f"report_every {self.report_every}: must be > 0")
        if self.share_group is not None and (
            not self.share_group or any(c in self.share_group for c in "/+#")
        ):
            raise ConfigError(f"share_group {self.share_group!r}: no '/', '+' or '#'")
        if self.mqtt_version not in MQTT_VERSIONS:
            raise ConfigError(f"mqtt_version {self.mqtt_version!r}: one of auto, 5, 3.1.1")
        if self.share_group is not None and self.mqtt_version == "3.1.1":
            raise ConfigError("share_group needs MQTT 5: shared subscriptions are not in 3.1.1")

    @property
    def topic(self) -> str:
        if self.share_group is None:
            return TOPIC_FILTER
        return f"$share/{self.share_group}/{TOPIC_FILTER}"


@dataclass
class IngestStats:
    received: int = 0
    written: int = 0  # items written (after collapsing duplicates)
    duplicates: int = 0  # messages whose key was in the same batch, or written lately
    dead_lettered: int = 0
    receipts: int = 0  # receipt messages published (one per sensor per write batch)
    retries: int = 0  # BatchWriteItem calls repeated (throttled, unprocessed items, no link)
    batches: int = 0
    connections: int = 0  # successful CONNACKs; more than one means reconnects
    started: float = field(default_factory=time.monotonic)
    seconds: float = 0.0

    def line(self) -> str:
        elapsed = self.seconds or time.monotonic() - self.started
        rate = self.received / elapsed if elapsed > 0 else 0.0
        return (
            f"ingest: received {self.received}, written {self.written}, "
            f"duplicates {self.duplicates}, dead-lettered {self.dead_lettered}, "
            f"retries {self.retries}, batches {self.batches}, connections {self.connections}, "
            f"receipts {self.receipts} in {elapsed:.1f}s ({rate:.0f} msg/s)"
        )


@dataclass(frozen=True, slots=True)
class _Message:
    connection: int  # which connection it came on: its mid means nothing on another
    mid: int
    qos: int
    topic: str
    payload: bytes


@dataclass
class _Batch:
    items: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    messages: list[_Message] = field(default_factory=list)
    confirmed: dict[str, set[tuple[int, int]]] = field(default_factory=dict)  # per sensor
    deadline: float = 0.0

    def add(self, key: tuple[str, str], item: dict[str, Any], message: _Message) -> None:
        """Add a message to write (a later item of the same key replaces the earlier)."""
        self.items[key] = item
        self.add_written(key, item, message)

    def add_written(self, key: tuple[str, str], item: dict[str, Any], message: _Message) -> None:
        """Add a message whose item is in the table already: acknowledged and confirmed
        along with the batch, not written again."""
        self.messages.append(message)
        reading = (int(item["Seq"]["N"]), int(item["CurrentTime"]["N"]))
        self.confirmed.setdefault(key[0], set()).add(reading)


@dataclass(frozen=True, slots=True)
class _Written:
    done: bool  # False: given up because ingest is stopping; nothing of it is acknowledged
    retries: int


_Write = tuple[_Batch, Future[_Written]]  # a batch handed to a writer, and how it went


def table_client(endpoint: Endpoint) -> Any:
    """The client ingest writes with, shared by its writer threads (boto3 clients are
    thread-safe). One attempt per call, bounded in time: ingest retries by itself, and each
    attempt must land well inside an export's settle window (see Ingest._write)."""
    return endpoint.client(
        "dynamodb", retries={"total_max_attempts": 1}, connect_timeout=2, read_timeout=5
    )


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
        #: Set once the broker has confirmed our subscription (tests and `cloud local up`).
        self.ready = threading.Event()
        self._ddb = ddb
        # DynamoDB asks for retries to start small; the cap keeps a long throttle from
        # turning into minutes between attempts.
        self._write_backoff = write_backoff or Backoff(initial=0.05, cap=5.0)
        self._connect_backoff = connect_backoff or Backoff()
        # None: a write finished (wakes the worker to release it).
        self._inbox: queue.SimpleQueue[_Message | None] = queue.SimpleQueue()
        self._acks: deque[_Message] = deque()  # deque append/popleft are thread-safe
        self._receipts: deque[tuple[str, list[tuple[int, int]]]] = deque()  # (sensor, [(seq, ts)])
        self._receipt_refused = False
        self._recent: OrderedDict[tuple[str, str], None] = OrderedDict()  # oldest first
        self._writing: set[tuple[str, str]] = set()  # keys of batches not released yet
        self._held = False  # a write was given up: no later batch may be acknowledged
        self._halt = threading.Event()  # writers stop retrying: stopping, or failed
        self._backoff_lock = threading.Lock()  # the write backoff is shared by the writers
        self._connection = 0  # bumped by the network thread when a connection is lost
        self._closing = threading.Event()
        self._fatal: str | None = None
        self._version = "3.1.1" if settings.mqtt_version == "3.1.1" else "5"
        self._fall_back = False  # the broker refused MQTT 5: reconnect with 3.1.1
        self._client = self._make_client()

    # -- the worker: validate, batch, write, ack ---------------------------------------------

    def run(self, stop: threading.Event) -> IngestStats:
        """Bridge until `stop` is set; raises StoreError, IngestError or DeadLetterError when
        it cannot go on (nothing unwritten is acknowledged). `stats` holds the tally either way.
        One run per Ingest: the MQTT client and its connection count are not reusable."""
        if self._closing.is_set():
            raise RuntimeError("Ingest.run may be called once per Ingest")
        s = self.settings
        self.stats = IngestStats()
        ddb = self._ddb if self._ddb is not None else table_client(s.endpoint)
        dead = DeadLetterFile(s.dead_letter)
        network = threading.Thread(target=self._network, name="ingest-mqtt", daemon=True)
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
            self._closing.set()
            network.join(10.0)
            dead.close()
            self.stats.seconds = time.monotonic() - self.stats.started
        if self._fatal is not None:
            raise IngestError(self._fatal)
        return self.stats

    def _work(self, stop: threading.Event, ddb: DynamoWriter, dead: DeadLetterFile) -> None:
        pool = ThreadPoolExecutor(self.settings.writers, thread_name_prefix="ingest-write")
        try:
            self._work_with(pool, stop, ddb, dead)
        finally:
            # Writers retrying stop at their next wait; one in a call finishes it (bounded).
            self._halt.set()
            pool.shutdown(wait=True)

    def _work_with(
        self, pool: Executor, stop: threading.Event, ddb: DynamoWriter, dead: DeadLetterFile
    ) -> None:
        s = self.settings
        writes: deque[_Write] = deque()  # not released yet, in the order they were taken
        batch = _Batch()
        next_report = time.monotonic() + s.report_every
        reported = (time.monotonic(), 0)
        while not stop.is_set() and self._fatal is None:
            now = time.monotonic()
            wait = min(0.1, next_report - now)
            if batch.messages:
                wait = min(wait, batch.deadline - now)
            try:
                message = self._inbox.get(timeout=max(wait, 0.0))
            except queue.Empty:
                message = None
            if message is not None:
                self._take(message, batch, dead)
            self._release(writes)
            now = time.monotonic()
            if len(batch.items) >= s.batch_size or (batch.messages and now >= batch.deadline):
                self._submit(batch, pool, ddb, writes, stop)
                batch = _Batch()
            if now >= next_report:
                reported = self._report(reported)
                next_report = now + s.report_every
        # A write retrying now gives up at its next wait, as the one in flight always did.
        self._halt.set()
        if self._fatal is not None:
            return
        # What the broker already handed us is in memory: write it now rather than have
        # it all sent again next time.
        while True:
            try:
                message = self._inbox.get_nowait()
            except queue.Empty:
                break
            if message is None:
                continue
            self._take(message, batch, dead)
            if len(batch.items) >= s.batch_size:
                self._submit(batch, pool, ddb, writes, stop)
                batch = _Batch()
        if batch.messages:
            self._submit(batch, pool, ddb, writes, stop)
        wait_futures([future for _, future in writes])
        self._release(writes)
        log.info("%s", self.stats.line())

    def _take(self, message: _Message, batch: _Batch, dead: DeadLetterFile) -> None:
        self.stats.received += 1
        try:
            item = to_item(message.topic, message.payload)
        except PayloadError as err:
            dead.append(DeadLetter.now(message.topic, err.reason, str(err), message.payload))
            self.stats.dead_lettered += 1
            log.debug("dead letter from %s: %s", message.topic, err)
            # Handled for good, as a written one: the device need not send it again.
            rejected = _rejected_reading(message.topic, message.payload)
            if rejected is not None and self.settings.receipts:
                self._receipts.append((rejected[0], [rejected[1]]))
            self._acks.append(message)  # after its receipt: see _network
            return
        if not batch.messages:
            batch.deadline = time.monotonic() + self.settings.batch_seconds
        key = (item["SensorId"]["S"], item["CurrentTime"]["N"])
        if key in batch.items or key in self._recent or key in self._writing:
            # BatchWriteItem refuses two puts of one key in a request, and one write of
            # the reading is all a redelivery needs. One whose first copy is still being
            # written is released after that write (batches are released in order).
            self.stats.duplicates += 1
            batch.add_written(key, item, message)
        else:
            batch.add(key, item, message)

    def _submit(
        self,
        batch: _Batch,
        pool: Executor,
        ddb: DynamoWriter,
        writes: deque[_Write],
        stop: threading.Event,
    ) -> None:
        """Hand the batch to a writer, once one is free; finished writes are released
        meanwhile, so acks keep flowing while the table is slow."""
        while True:
            busy = [future for _, future in writes if not future.done()]
            if len(busy) < self.settings.writers:
                break
            wait_futures(busy, timeout=0.1, return_when=FIRST_COMPLETED)
            if stop.is_set() or self._fatal is not None:
                self._halt.set()
            self._release(writes)
        future: Future[_Written]
        if batch.items:
            self._writing.update(batch.items)
            future = pool.submit(self._write, batch, ddb)
            future.add_done_callback(lambda _: self._inbox.put(None))
        else:  # only readings already written or being written: nothing to write
            future = Future()
            future.set_result(_Written(done=True, retries=0))
        writes.append((batch, future))

    def _release(self, writes: deque[_Write]) -> None:
        """Queue the receipts and acks of the finished writes at the head of `writes`, in
        the order the batches were taken; re-raise a write's StoreError."""
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
                    len(batch.messages),
                )
            if self._held:
                continue
            if batch.items:
                self.stats.batches += 1
                self.stats.written += len(batch.items)
            self._remember(batch.items)
            if self.settings.receipts:
                self._receipts.extend((id_, sorted(r)) for id_, r in batch.confirmed.items())
            self._acks.extend(batch.messages)  # after their receipts: see _network

    def _write(self, batch: _Batch, ddb: DynamoWriter) -> _Written:
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
                code = str(exc.response.get("Error", {}).get("Code", ""))
                if code not in RETRYABLE_CODES:
                    raise _store_error(table, code, exc) from None
                why = code
            except _TRANSIENT_BOTO as exc:
                why = type(exc).__name__
            except BotoCoreError as exc:
                raise StoreError(f"cannot write to table {table}: {exc}") from None
            else:
                pending = answer.get("UnprocessedItems", {}).get(table, [])
                if not pending:
                    break
                why = f"{len(pending)} unprocessed item(s)"
            retries += 1
            with self._backoff_lock:
                delay = self._write_backoff.next_delay()
            log.info("BatchWriteItem on %s: %s; retrying in %.2fs", table, why, delay)
            if self._halt.wait(delay):
                return _Written(done=False, retries=retries)
        with self._backoff_lock:
            self._write_backoff.reset()
        return _Written(done=True, retries=retries)

    def _remember(self, written: dict[tuple[str, str], dict[str, Any]]) -> None:
        self._recent.update(dict.fromkeys(written))
        while len(self._recent) > RECENT_KEYS:
            self._recent.popitem(last=False)

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

    # -- the network thread ----------------------------------------------------------------

    def _make_client(self) -> mqtt.Client:
        s = self.settings
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=s.client_id,
            protocol=MQTTProtocolVersion.MQTTv5
            if self._version == "5"
            else MQTTProtocolVersion.MQTTv311,
            # 3.1.1 keeps our session (and what the broker queues for us) this way.
            clean_session=None if self._version == "5" else False,
            manual_ack=True,
        )
        if s.tls is not None:
            client.tls_set(
                ca_certs=str(s.tls.ca),
                certfile=str(s.tls.cert),
                keyfile=str(s.tls.key),
                tls_version=ssl.PROTOCOL_TLS_CLIENT,
            )
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        return client

    def _connect(self) -> None:
        if self._version == "3.1.1":
            self._client.connect(self.settings.host, self.settings.port, KEEPALIVE_SECONDS)
            return
        # paho's Properties.__init__ has no annotations.
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = self.settings.session_expiry_seconds
        props.ReceiveMaximum = self.settings.receive_maximum
        self._client.connect(
            self.settings.host,
            self.settings.port,
            keepalive=KEEPALIVE_SECONDS,
            clean_start=False,
            properties=props,
        )

    def _network(self) -> None:
        broker = f"{self.settings.host}:{self.settings.port}"
        try:
            while not self._closing.is_set() and self._fatal is None:
                try:
                    self._connect()
                except ssl.SSLCertVerificationError as exc:
                    self._fail(f"broker {broker}: certificate verification failed ({exc})")
                    break
                except ssl.SSLError as exc:
                    self._lost(f"TLS handshake with {broker} failed ({exc.reason or exc})")
                    continue
                except OSError as exc:  # socket.timeout included
                    self._lost(f"cannot reach broker {broker} ({exc.strerror or exc})")
                    continue
                rc = MQTTErrorCode.MQTT_ERR_SUCCESS
                while not self._closing.is_set() and self._fatal is None:
                    rc = self._client.loop(timeout=_LOOP_SECONDS)
                    if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                        break
                    # Receipts first: killed between the two, we leave messages unacked,
                    # which the broker sends again, rather than acked readings whose
                    # receipt is lost, which devices would send again only on a timeout.
                    self._send_receipts()
                    self._send_acks()
                if self._closing.is_set() or self._fatal is not None:
                    break
                if self._fall_back:
                    self._fall_back = False
                    self._client = self._make_client()
                    continue  # at once: the broker answered, in another version
                self._lost(f"connection to {broker} lost ({mqtt.error_string(rc)})")
        except Exception as exc:
            # paho re-raises what a callback raised; without this the worker would wait on
            # a connection nobody runs any more.
            log.exception("MQTT network loop failed")
            self._fail(f"MQTT network loop failed: {exc!r}")
        finally:
            self._send_receipts()
            self._send_acks()
            if self._client.is_connected():
                self._client.disconnect()
                self._client.loop(timeout=0.1)  # lets the DISCONNECT out

    def _send_acks(self) -> None:
        while True:
            try:
                message = self._acks.popleft()
            except IndexError:
                return
            # A mid is only meaningful on the connection it came on; after a reconnect the
            # broker resends the message itself, and its (idempotent) write repeats.
            if message.connection == self._connection and message.qos > 0:
                self._client.ack(message.mid, message.qos)

    def _send_receipts(self) -> None:
        # QoS 1, so a device briefly away still gets them from its session. One lost anyway
        # (a broker crash) only means the device sends the reading again, and it is
        # confirmed again (not written twice: see RECENT_KEYS).
        while True:
            try:
                sensor, confirmed = self._receipts.popleft()
            except IndexError:
                return
            self._client.publish(receipt_topic(sensor), encode_receipt(confirmed), qos=1)
            self.stats.receipts += 1

    def _lost(self, reason: str) -> None:
        self._connection += 1  # before reconnect(), so no old mid is acked on the new link
        self.ready.clear()
        delay = self._connect_backoff.next_delay()
        log.warning("%s; retrying in %.1fs", reason, delay)
        self._closing.wait(delay)

    def _fail(self, message: str) -> None:
        log.error("%s", message)
        self._fatal = message

    # -- paho's callbacks, on the network thread -------------------------------------------

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: object,
        flags: mqtt.ConnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        broker = f"{self.settings.host}:{self.settings.port}"
        if reason.is_failure:
            if reason.value == _UNSUPPORTED_VERSION and self._version == "5":
                if self.settings.mqtt_version == "auto" and self.settings.share_group is None:
                    log.info("broker %s does not speak MQTT 5; using 3.1.1", broker)
                    self._version, self._fall_back = "3.1.1", True
                    client.disconnect()
                else:
                    self._fail(f"broker {broker} does not speak MQTT 5: {reason}")
            elif reason.value in _FATAL_CONNACK or reason.value == _UNSUPPORTED_VERSION:
                self._fail(
                    f"broker {broker} refused ingest's connection: {reason} (is the "
                    "certificate the reader identity the broker's ACL names?)"
                )
            else:
                log.warning("broker %s refused the connection: %s", broker, reason)
            return
        self._connect_backoff.reset()
        self.stats.connections += 1
        log.info(
            "connected to %s with MQTT %s (session present: %s)",
            broker,
            self._version,
            flags.session_present,
        )
        # Subscribing again is harmless when the session kept the subscription, and needed
        # when the session expired while we were away.
        client.subscribe(self.settings.topic, qos=1)

    def _on_subscribe(
        self,
        client: mqtt.Client,
        userdata: object,
        mid: int,
        reasons: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        refused = [r for r in reasons if r.is_failure]
        if refused:
            hint = (
                " (does the broker support shared subscriptions? share_group=None subscribes "
                "without one)"
                if self.settings.share_group is not None
                else ""
            )
            self._fail(f"broker refused subscription {self.settings.topic}: {refused[0]}{hint}")
            return
        log.info("subscribed to %s", self.settings.topic)
        self.ready.set()

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: object,
        flags: mqtt.DisconnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason.value == _SESSION_TAKEN_OVER:
            # Two processes with one client id would take the session from each other
            # forever; the newer one keeps it.
            self._fail(
                f"another client connected as {self.settings.client_id!r} and took over "
                "this session; give each ingest process its own client id"
            )
        elif not self._closing.is_set():
            log.info("disconnected: %s", reason)

    def _on_publish(
        self,
        client: mqtt.Client,
        userdata: object,
        mid: int,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        # Ingest publishes receipts only. "No matching subscribers" (0x10) is a success:
        # that device does not ask for them.
        if reason.is_failure and not self._receipt_refused:
            self._receipt_refused = True  # once: it would repeat for every batch
            log.warning(
                "the broker refused a receipt: %s; devices run with --receipts will send "
                "their readings again (the broker's ACL must let ingest write "
                "sensors/+/receipt)",
                reason,
            )

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        try:
            topic = msg.topic
        except UnicodeDecodeError:
            # Not reachable through a conforming broker; dead-lettered, not crashed on.
            topic = bytes(msg._topic).decode("utf-8", "replace")
        self._inbox.put(_Message(self._connection, msg.mid, msg.qos, topic, bytes(msg.payload)))


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


def _store_error(table: str, code: str, exc: ClientError) -> StoreError:
    if code == "ResourceNotFoundException":
        message = (
            f"table {table} not found; create it (`cloud local up`, or `cloud deploy`) and "
            "start ingest again: nothing was acknowledged, the broker keeps the readings"
        )
    elif code in ("AccessDeniedException", "UnrecognizedClientException"):
        message = f"not allowed to write to table {table} ({code}): check the AWS credentials"
    else:
        message = f"writing to table {table} failed: {exc}; nothing was acknowledged"
    return StoreError(message, code)
