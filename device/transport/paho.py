"""The paho-mqtt transport: MQTT 5 or 3.1.1 over TCP or mutual TLS, to any broker.

`--mqtt-version auto` connects with MQTT 5 and, when the broker refuses that protocol
version (RabbitMQ before 3.13, NATS, older Mosquitto), with 3.1.1, and logs which it speaks.
Under 3.1.1 a PUBACK carries no reason code: a broker that drops a message for lack of
subscribers, or refuses it by ACL, still acknowledges it (receipts cover that).

paho keeps unacknowledged QoS 1 publishes in memory and resends them after a reconnect, so
within one process nothing needs resending by the agent; the outbox covers restarts.
The network loop is ours rather than `loop_forever`'s, for backoff with jitter and to tell
errors worth retrying from those that are not. The client, its session, what a failed
connect or CONNACK means and the backoff are device.transport.session's, shared with
`cloud ingest`; the status topic, its will and the receipts subscription are the agent's.
"""

from __future__ import annotations

import contextlib
import logging
import threading

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from device.config import AgentConfig
from device.errors import PayloadError
from device.payload import config_desired_topic, parse_receipt, receipt_topic, status_topic
from device.transport import Callbacks, desired_refused, receipts_refused
from device.transport.session import Refusal, Session, SessionSpec

log = logging.getLogger(__name__)

#: The broker keeps our session (and our unacknowledged publishes) this long while we are away.
SESSION_EXPIRY_SECONDS = 3600
#: Mosquitto's PUBACK when nobody subscribes: it dropped the message, so it is not delivered.
_NO_MATCHING_SUBSCRIBERS = 0x10


class PahoTransport:
    def __init__(self, config: AgentConfig, callbacks: Callbacks) -> None:
        self._config = config
        self._callbacks = callbacks
        self._status_topic = status_topic(config.sensor_id)
        self._lock = threading.Lock()  # never held while calling into paho (see _on_publish)
        self._tokens: dict[int, int] = {}  # paho mid -> our token
        self._early: dict[int, ReasonCode] = {}  # mids answered before publish() returned
        self._status_mids: set[int] = set()  # and the other untracked retained messages
        self._desired_topic = config_desired_topic(config.sensor_id)
        self._desired_mid: int | None = None
        self._desired_warned = False
        self._stop = threading.Event()
        self._closing = False  # our own DISCONNECT is not a lost connection
        self._thread: threading.Thread | None = None
        self._connacked = False
        self._socket_error: str | None = None
        spec = SessionSpec(
            client_id=config.sensor_id,
            host=config.broker.host,
            port=config.broker.port,
            label=str(config.broker),
            mqtt_version=config.mqtt_version,
            session_expiry_seconds=SESSION_EXPIRY_SECONDS,
            tls=config.tls,
            system_tls=config.broker.tls,
        )
        self._session = Session(spec, self._configure)

    @property
    def _client(self) -> mqtt.Client:
        return self._session.client  # a new one after falling back to 3.1.1

    def _configure(self, client: mqtt.Client) -> None:
        """The agent's part of each client the session makes."""
        config = self._config
        client.will_set(self._status_topic, b"offline", qos=1, retain=True)
        # One more than our window: the retained status publish must not queue a reading.
        client.max_inflight_messages_set(config.inflight + 1)
        client.max_queued_messages_set(0)  # the agent bounds what it hands over
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        client.on_log = self._on_log
        # MQTT packets at DEBUG on the "paho" logger (device-agent -vv shows them).
        client.enable_logger(logging.getLogger("paho"))
        # Without loop_start(), paho's publish() writes to the socket from the caller's
        # thread while our network thread reads it: two threads in one TLS connection
        # corrupt it ("bad record mac", reconnects, heap errors). With this callback set,
        # publish() only queues the packet and wakes our loop, which does all the I/O.
        client.on_socket_register_write = lambda client, userdata, sock: None

    # -- the agent's side ------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._run, name=f"paho-{self._config.sensor_id}", daemon=True
        )
        self._thread.start()

    def publish(self, topic: str, payload: bytes, qos: int, token: int) -> None:
        info = self._client.publish(topic, payload, qos=qos)
        if qos == 0 and info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            # paho does not keep QoS 0 messages it could not write.
            self._callbacks.on_failed(token)
            return
        with self._lock:
            reason = self._early.pop(info.mid, None)
            if reason is None:
                self._tokens[info.mid] = token
        if reason is not None:
            self._resolve(token, reason)

    def publish_state(self, topic: str, payload: bytes) -> bool:
        if not self._client.is_connected():
            return False  # paho would queue it without bound; the agent sends it later
        info = self._client.publish(topic, payload, qos=1, retain=True)
        with self._lock:
            # Its PUBACK may have come on the network thread already.
            if self._early.pop(info.mid, None) is None:
                self._status_mids.add(info.mid)
        return True

    @property
    def mqtt_version(self) -> str:
        return self._session.version

    def stop(self, timeout: float) -> None:
        self._closing = True
        if self._client.is_connected():
            info = self._client.publish(self._status_topic, b"offline", qos=1, retain=True)
            # If the link is gone already, the broker sends our will (`offline`) instead.
            with contextlib.suppress(RuntimeError, ValueError):
                info.wait_for_publish(timeout=min(timeout, 5.0))
            self._client.disconnect()
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    # -- the network loop ------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            delay = self._open()
            if delay is None:
                rc = MQTTErrorCode.MQTT_ERR_CONN_LOST
                # No socket: paho closed it after writing our DISCONNECT (stop()); a loop
                # without one would only log an error.
                while not self._stop.is_set() and self._client.socket() is not None:
                    rc = self._client.loop(timeout=0.5)
                    if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                        break
                delay = self._closed(rc)
            self._stop.wait(delay)
        # Let the DISCONNECT we queued in stop() go out, unless it has (paho closes the
        # socket once it is written, and logs an error for a loop without one).
        if self._client.socket() is not None:
            self._client.loop(timeout=0.1)

    # The steps of the loop, shared with device.fleet's loop of many transports.

    def _open(self) -> float | None:
        """Connect: TCP, the TLS handshake, CONNECT queued. None once done; else the
        seconds to wait before the next try (after a fatal error `_stop` is set)."""
        self._client.on_log = self._on_log  # until CONNACK, see _on_connect
        failure = self._session.connect()
        if failure is not None and failure.unverified is not None:
            self._callbacks.on_fatal(
                f"broker {self._config.broker}: its certificate failed verification against "
                f"{self._config.tls.ca if self._config.tls else 'the system CAs'} "
                f"({failure.unverified.verify_message}); check --ca and the broker's host name"
            )
            self._stop.set()
            return 0.0
        if failure is not None:
            return self._lost(failure.message)
        self._connacked = False
        self._socket_error = None
        return None

    def _closed(self, rc: MQTTErrorCode) -> float:
        """The connection is gone (paho's `rc` says how): the seconds until the next try."""
        broker = self._config.broker
        if self._stop.is_set() or self._closing:
            return 0.0
        if self._session.renew():
            return 0.0  # at once: the broker answered
        if broker.tls and not self._connacked:
            # TLS 1.3: the client's handshake completes before the broker checks our
            # certificate; its refusal only shows on the first read.
            return self._lost(
                f"TLS handshake with {broker} failed ({self._socket_error or 'closed'}): "
                "the broker refused the connection before accepting it; most often it "
                "does not trust this device's certificate (revoked, expired, another CA), "
                "else it is out of connections or open files (the broker's log says which)"
            )
        return self._lost(f"connection to {broker} lost ({mqtt.error_string(rc)})")

    def _lost(self, reason: str) -> float:
        self._callbacks.on_connection(False, reason)
        delay = self._session.retry_delay()
        log.info("%s; retrying in %.1fs", reason, delay)
        return delay

    # -- paho's callbacks, on the network thread -------------------------------------------

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: object,
        flags: mqtt.ConnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason.is_failure:
            message = f"broker {self._config.broker} refused the connection: {reason}"
            refusal = self._session.refused(reason)
            if refusal is Refusal.NO_MQTT_5:
                self._callbacks.on_fatal(
                    f"{message}: it does not speak MQTT 5 (use --mqtt-version 3.1.1 or auto)"
                )
                self._stop.set()
            elif refusal is Refusal.NO_MQTT_311:
                self._callbacks.on_fatal(f"{message}: it does not speak MQTT 3.1.1 either")
                self._stop.set()
            elif refusal is Refusal.FATAL:
                self._callbacks.on_fatal(
                    message
                    + f" (is this device's certificate made for {self._config.sensor_id!r}?)"
                )
                self._stop.set()
            return
        self._connacked = True
        # Its log lines explain only a refused handshake, and paho formats one for every
        # packet while on_log is set: a tenth of a simulated fleet's CPU.
        client.on_log = None
        self._session.connected()
        info = client.publish(self._status_topic, b"online", qos=1, retain=True)
        self._status_mids.add(info.mid)
        if self._config.receipts:
            # Every time: a broker that lost our session (killed) lost the subscription too.
            client.subscribe(receipt_topic(self._config.sensor_id), qos=1)
        _, self._desired_mid = client.subscribe(self._desired_topic, qos=1)
        self._callbacks.on_connection(
            True,
            f"connected to {self._config.broker} with MQTT {self._session.version} "
            f"(session present: {flags.session_present})",
        )

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: object,
        flags: mqtt.DisconnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if not self._closing:
            self._callbacks.on_connection(
                False, f"disconnected from {self._config.broker}: {reason}"
            )

    def _on_subscribe(
        self,
        client: mqtt.Client,
        userdata: object,
        mid: int,
        reasons: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        refused = [r for r in reasons if r.is_failure]
        if refused and mid == self._desired_mid:
            if not self._desired_warned:
                self._desired_warned = True
                log.warning("%s", desired_refused(self._config, str(refused[0])))
        elif refused:
            self._callbacks.on_fatal(receipts_refused(self._config, str(refused[0])))
            self._stop.set()

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        if msg.topic == self._desired_topic:
            self._callbacks.on_config(bytes(msg.payload))
            return
        try:
            confirmed = parse_receipt(bytes(msg.payload))
        except PayloadError as exc:
            log.warning("ignored a message on %s: %s", msg.topic, exc)
            return
        self._callbacks.on_receipt(confirmed)

    def _on_log(self, client: mqtt.Client, userdata: object, level: int, buf: str) -> None:
        if level == mqtt.MQTT_LOG_ERR and "socket" in buf:
            self._socket_error = buf

    def _on_publish(
        self,
        client: mqtt.Client,
        userdata: object,
        mid: int,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        # paho calls this holding its message lock, and publish() takes that lock: so this
        # must not wait for anything publish() holds. Our lock is never held around paho.
        with self._lock:
            if mid in self._status_mids:
                self._status_mids.discard(mid)
                if reason.is_failure:
                    log.warning(
                        "broker %s refused a retained message: %s", self._config.broker, reason
                    )
                return
            token = self._tokens.pop(mid, None)
            if token is None:
                self._early[mid] = reason
                return
        self._resolve(token, reason)

    def _resolve(self, token: int, reason: ReasonCode) -> None:
        if reason.value == _NO_MATCHING_SUBSCRIBERS:
            # Mosquitto dropped it: nobody subscribes (yet). Keep it and send it again.
            self._callbacks.on_failed(token)
            return
        if reason.is_failure:
            self._callbacks.on_fatal(
                f"broker {self._config.broker} refused a publish: {reason} "
                f"(is this device's certificate made for {self._config.sensor_id!r}, "
                "and may it publish there?)"
            )
            return
        self._callbacks.on_ack(token)
