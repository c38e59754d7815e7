"""Ingest's MQTT side: its network thread over the shared session (device.transport.session).

The thread runs paho's loop (so reconnects use our backoff), puts each delivery in the
worker's inbox, and sends what the worker queued for it: the receipts of written readings,
then the PUBACKs of their messages. PUBACKs are sent from here rather than the worker:
with our own loop paho writes to the socket from whichever thread calls it, and an SSL
socket must not be read and written from two threads at once.

Ingest's policy over the session: manual acks, a receive maximum, an optional shared
subscription (which has no 3.1.1 fall back), and a session taken over by another client
with our id is fatal.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import deque
from dataclasses import dataclass

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from cloud.ingest.settings import IngestSettings, IngestStats
from device.backoff import Backoff
from device.payload import encode_receipt, receipt_topic
from device.transport.session import Refusal, Session, SessionSpec

log = logging.getLogger(__name__)

#: How long the network thread sleeps in select() at most: the latency a PUBACK can wait.
_LOOP_SECONDS = 0.01
#: DISCONNECT reason: another client connected with our client id.
_SESSION_TAKEN_OVER = 142

Receipt = tuple[str, list[tuple[int, int]]]  # (sensor, [(seq, ts)]) written for it


@dataclass(frozen=True, slots=True)
class Delivery:
    """One message the broker delivered to us."""

    connection: int  # which connection it came on: its mid means nothing on another
    mid: int
    qos: int
    topic: str
    payload: bytes


class Link:
    """The connection to the broker. `run` is the network thread; it ends when `closing`
    is set, or with `fatal` set to what stopped it."""

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
        self._inbox = inbox
        self._acks = acks  # deque append/popleft are thread-safe
        self._receipts = receipts
        #: Set once the broker has confirmed our subscription.
        self.ready = threading.Event()
        self.closing = threading.Event()
        #: Why ingest cannot go on (set on this thread; the worker checks it).
        self.fatal: str | None = None
        self._connection = 0  # bumped when a connection is lost
        self._receipt_refused = False
        s = settings
        self._broker = f"{s.host}:{s.port}"
        spec = SessionSpec(
            client_id=s.client_id,
            host=s.host,
            port=s.port,
            label=self._broker,
            # A share group has no 3.1.1 to fall back to.
            mqtt_version="5"
            if s.share_group is not None and s.mqtt_version == "auto"
            else s.mqtt_version,
            session_expiry_seconds=s.session_expiry_seconds,
            tls=s.tls,
            receive_maximum=s.receive_maximum,
            manual_ack=True,
        )
        self._session = Session(spec, self._configure, backoff)

    @property
    def client(self) -> mqtt.Client:
        return self._session.client  # a new one after falling back to 3.1.1

    def _configure(self, client: mqtt.Client) -> None:
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_publish = self._on_publish

    def run(self) -> None:
        try:
            while not self.closing.is_set() and self.fatal is None:
                failure = self._session.connect()
                if failure is not None and failure.fatal:
                    self._fail(failure.message)
                    break
                if failure is not None:
                    self._lost(failure.message)
                    continue
                rc = MQTTErrorCode.MQTT_ERR_SUCCESS
                while not self.closing.is_set() and self.fatal is None:
                    rc = self.client.loop(timeout=_LOOP_SECONDS)
                    if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                        break
                    # Receipts first: killed between the two, we leave messages unacked,
                    # which the broker sends again, rather than acked readings whose
                    # receipt is lost, which devices would send again only on a timeout.
                    self._send_receipts()
                    self._send_acks()
                if self.closing.is_set() or self.fatal is not None:
                    break
                if self._session.renew():
                    continue  # at once: the broker answered, in another version
                self._lost(f"connection to {self._broker} lost ({mqtt.error_string(rc)})")
        except Exception as exc:
            # paho re-raises what a callback raised; without this the worker would wait on
            # a connection nobody runs any more.
            log.exception("MQTT network loop failed")
            self._fail(f"MQTT network loop failed: {exc!r}")
        finally:
            self._send_receipts()
            self._send_acks()
            if self.client.is_connected():
                self.client.disconnect()
                self.client.loop(timeout=0.1)  # lets the DISCONNECT out

    def _send_acks(self) -> None:
        while True:
            try:
                delivery = self._acks.popleft()
            except IndexError:
                return
            # A mid is only meaningful on the connection it came on; after a reconnect the
            # broker resends the message itself, and its (idempotent) write repeats.
            if delivery.connection == self._connection and delivery.qos > 0:
                self.client.ack(delivery.mid, delivery.qos)

    def _send_receipts(self) -> None:
        # QoS 1, so a device briefly away still gets them from its session. One lost anyway
        # (a broker crash) only means the device sends the reading again, and it is
        # confirmed again (not written twice: see cloud.ingest.writer.RECENT_KEYS).
        while True:
            try:
                sensor, confirmed = self._receipts.popleft()
            except IndexError:
                return
            self.client.publish(receipt_topic(sensor), encode_receipt(confirmed), qos=1)
            self.stats.receipts += 1

    def _lost(self, reason: str) -> None:
        self._connection += 1  # before reconnect(), so no old mid is acked on the new link
        self.ready.clear()
        delay = self._session.retry_delay()
        log.warning("%s; retrying in %.1fs", reason, delay)
        self.closing.wait(delay)

    def _fail(self, message: str) -> None:
        log.error("%s", message)
        self.fatal = message

    # -- paho's callbacks, on the network thread -------------------------------------------

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: object,
        flags: mqtt.ConnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        broker = self._broker
        if reason.is_failure:
            refusal = self._session.refused(reason)
            if refusal is Refusal.FALL_BACK:
                client.disconnect()
            elif refusal is Refusal.NO_MQTT_5:
                self._fail(f"broker {broker} does not speak MQTT 5: {reason}")
            elif refusal in (Refusal.FATAL, Refusal.NO_MQTT_311):
                self._fail(
                    f"broker {broker} refused ingest's connection: {reason} (is the "
                    "certificate the reader identity the broker's ACL names?)"
                )
            else:
                log.warning("broker %s refused the connection: %s", broker, reason)
            return
        self._session.connected()
        self.stats.connections += 1
        log.info(
            "connected to %s with MQTT %s (session present: %s)",
            broker,
            self._session.version,
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
        elif not self.closing.is_set():
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
        self._inbox.put(Delivery(self._connection, msg.mid, msg.qos, topic, bytes(msg.payload)))
