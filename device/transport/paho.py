"""The paho-mqtt transport: MQTT 5 or 3.1.1 over TCP or mutual TLS, to any broker.

`--mqtt-version auto` connects with MQTT 5 and, when the broker refuses that protocol
version (RabbitMQ before 3.13, NATS, older Mosquitto), with 3.1.1, and logs which it speaks.
Under 3.1.1 a PUBACK carries no reason code: a broker that drops a message for lack of
subscribers, or refuses it by ACL, still acknowledges it (receipts cover that).

paho keeps unacknowledged QoS 1 publishes in memory and resends them after a reconnect, so
within one process nothing needs resending by the agent; the outbox covers restarts.
The network loop is ours rather than `loop_forever`'s, for backoff with jitter and to tell
errors worth retrying from those that are not.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import resource
import ssl
import threading

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from device.backoff import Backoff
from device.config import AgentConfig
from device.payload import PayloadError, parse_receipt, receipt_topic, status_topic
from device.transport import Callbacks, receipts_refused

log = logging.getLogger(__name__)

#: The broker keeps our session (and our unacknowledged publishes) this long while we are away.
SESSION_EXPIRY_SECONDS = 3600
#: Mosquitto's PUBACK when nobody subscribes: it dropped the message, so it is not delivered.
_NO_MATCHING_SUBSCRIBERS = 0x10
KEEPALIVE_SECONDS = 30
#: CONNACK / PUBACK reason codes that retrying cannot fix (MQTT 5 values; paho maps a
#: 3.1.1 CONNACK's return code onto them).
_FATAL_REASONS = {
    0x86,  # bad user name or password
    0x87,  # not authorized
    0x85,  # client identifier not valid
    0x8A,  # banned
    0x8C,  # bad authentication method
    0x90,  # topic name invalid
    0x99,  # payload format invalid
}
#: CONNACK of a broker that does not speak the protocol version we asked for.
_UNSUPPORTED_VERSION = 0x84
_PROTOCOLS = {"5": MQTTProtocolVersion.MQTTv5, "3.1.1": MQTTProtocolVersion.MQTTv311}


class PahoTransport:
    def __init__(self, config: AgentConfig, callbacks: Callbacks) -> None:
        self._config = config
        self._callbacks = callbacks
        self._status_topic = status_topic(config.sensor_id)
        self._lock = threading.Lock()  # never held while calling into paho (see _on_publish)
        self._tokens: dict[int, int] = {}  # paho mid -> our token
        self._early: dict[int, ReasonCode] = {}  # mids answered before publish() returned
        self._status_mids: set[int] = set()
        self._stop = threading.Event()
        self._closing = False  # our own DISCONNECT is not a lost connection
        self._thread: threading.Thread | None = None
        self._backoff = Backoff()
        self._fall_back = False  # the broker refused MQTT 5: reconnect with 3.1.1

        self._version = "3.1.1" if config.mqtt_version == "3.1.1" else "5"
        self._connacked = False
        self._socket_error: str | None = None
        self._client = self._make_client()

    def _make_client(self) -> mqtt.Client:
        config = self._config
        v5 = self._version == "5"
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=config.sensor_id,
            protocol=_PROTOCOLS[self._version],
            # 3.1.1 keeps the session (and what was queued for us) with clean_session=False;
            # MQTT 5 says so at connect (clean_start=False, an expiry interval).
            clean_session=None if v5 else False,
        )
        if config.tls is not None:
            client.tls_set(
                ca_certs=str(config.tls.ca),
                certfile=str(config.tls.cert),
                keyfile=str(config.tls.key),
                tls_version=ssl.PROTOCOL_TLS_CLIENT,
            )
        elif config.broker.tls:
            client.tls_set(tls_version=ssl.PROTOCOL_TLS_CLIENT)
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
        return client

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

    def _connect(self) -> None:
        broker = self._config.broker
        if self._version == "3.1.1":
            self._client.connect(broker.host, broker.port, keepalive=KEEPALIVE_SECONDS)
            return
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = SESSION_EXPIRY_SECONDS
        self._client.connect(
            broker.host,
            broker.port,
            keepalive=KEEPALIVE_SECONDS,
            clean_start=False,
            properties=props,
        )

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
        broker = self._config.broker
        self._client.on_log = self._on_log  # until CONNACK, see _on_connect
        try:
            self._connect()
        except ssl.SSLCertVerificationError as exc:
            self._callbacks.on_fatal(
                f"broker {broker}: its certificate failed verification against "
                f"{self._config.tls.ca if self._config.tls else 'the system CAs'} "
                f"({exc.verify_message}); check --ca and the broker's host name"
            )
            self._stop.set()
            return 0.0
        except ssl.SSLError as exc:
            # A handshake the broker aborted: most often our certificate is not
            # trusted there (revoked, another CA, expired). Retry: it may be a blip.
            return self._lost(f"TLS handshake with {broker} failed ({exc.reason or exc})")
        except (TimeoutError, OSError) as exc:
            if exc.errno == errno.EMFILE:
                soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
                return self._lost(
                    f"cannot connect to {broker}: this process is out of file descriptors "
                    f"(ulimit -n is {soft}; raise it, or run fewer devices per process)"
                )
            return self._lost(f"cannot reach broker {broker} ({exc.strerror or exc})")
        self._connacked = False
        self._socket_error = None
        return None

    def _closed(self, rc: MQTTErrorCode) -> float:
        """The connection is gone (paho's `rc` says how): the seconds until the next try."""
        broker = self._config.broker
        if self._stop.is_set() or self._closing:
            return 0.0
        if self._fall_back:
            self._fall_back = False
            self._client = self._make_client()  # at once: the broker answered
            return 0.0
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
        delay = self._backoff.next_delay()
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
            if reason.value == _UNSUPPORTED_VERSION and self._version == "5":
                if self._config.mqtt_version == "auto":
                    log.info("broker %s does not speak MQTT 5; using 3.1.1", self._config.broker)
                    self._version, self._fall_back = "3.1.1", True
                    return
                self._callbacks.on_fatal(
                    f"{message}: it does not speak MQTT 5 (use --mqtt-version 3.1.1 or auto)"
                )
                self._stop.set()
            elif reason.value == _UNSUPPORTED_VERSION:
                self._callbacks.on_fatal(f"{message}: it does not speak MQTT 3.1.1 either")
                self._stop.set()
            elif reason.value in _FATAL_REASONS:
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
        self._backoff.reset()
        info = client.publish(self._status_topic, b"online", qos=1, retain=True)
        self._status_mids.add(info.mid)
        if self._config.receipts:
            # Every time: a broker that lost our session (killed) lost the subscription too.
            client.subscribe(receipt_topic(self._config.sensor_id), qos=1)
        self._callbacks.on_connection(
            True,
            f"connected to {self._config.broker} with MQTT {self._version} "
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
        if refused:
            self._callbacks.on_fatal(receipts_refused(self._config, str(refused[0])))
            self._stop.set()

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
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
