"""The awsiotsdk transport: AWS IoT Core's own MQTT 5 client (awscrt), over mutual TLS.

The CRT client connects, reconnects (capped exponential backoff with full jitter) and keeps
unacknowledged QoS 1 publishes queued across reconnects by itself, so this module only
translates: publish futures into `on_ack` / `on_failed` / `on_fatal`, lifecycle events into
`on_connection` / `on_fatal`.

Its callbacks run on awscrt's event-loop threads. Calling into the client from there only
schedules work on that loop, so it cannot deadlock; our lock guards plain flags and is never
held while calling the client or the agent's callbacks.

It stays one module past the usual length: it is one transport, and its callbacks and the
agent's side share the state that lock guards.
"""

from __future__ import annotations

import concurrent.futures
import functools
import logging
import socket
import ssl
import threading
from enum import Enum

from awscrt import mqtt5
from awscrt.exceptions import AwsCrtError
from awsiot import mqtt5_client_builder

from device.config import AgentConfig
from device.errors import PayloadError
from device.payload import config_desired_topic, parse_receipt, receipt_topic, status_topic
from device.transport import Callbacks, desired_refused, receipts_refused
from device.transport.session import FATAL_CONNACK, UNSUPPORTED_VERSION

log = logging.getLogger(__name__)

#: The broker keeps our session (and our unacknowledged publishes) this long while we are away.
SESSION_EXPIRY_SECONDS = 3600
#: The builder's default keep-alive is 20 minutes: far too long to notice a dead link.
KEEPALIVE_SECONDS = 30
#: Must stay at least a second under the keep-alive, or the CRT refuses the options.
PING_TIMEOUT_MS = 10_000
MIN_RECONNECT_DELAY_MS = 500
MAX_RECONNECT_DELAY_MS = 30_000
#: How long stop() waits for the broker to acknowledge the retained `offline`.
OFFLINE_ACK_TIMEOUT = 5.0

#: CONNACK reason codes that retrying cannot fix: the paho session's, and a broker without
#: MQTT 5 (this transport speaks nothing else).
_FATAL_CONNACK = FATAL_CONNACK | {UNSUPPORTED_VERSION}
#: A broker DISCONNECT for these would only repeat after every reconnect.
_FATAL_DISCONNECT = {
    mqtt5.DisconnectReasonCode.NOT_AUTHORIZED,
}
#: PUBACK and SUBACK reason codes below 0x80 are successes (SUCCESS, NO_MATCHING_SUBSCRIBERS).
_PUBACK_FAILURE_MIN = _SUBACK_FAILURE_MIN = 0x80
#: CRT errors that name a failed check of the broker's certificate (other TLS back ends).
_TLS_VERIFY_ERRORS = {
    "AWS_IO_TLS_ERROR_X509_CHAIN_VALIDATION_FAILURE",
    "AWS_IO_TLS_ERROR_X509_HOSTNAME_MISMATCH",
}
#: s2n (awscrt's TLS on Linux) reports an untrusted broker certificate only as this
#: generic error, which other handshake failures share: on it we check the broker's
#: certificate ourselves (see _diagnose_tls) to tell a wrong --ca from a passing fault.
_TLS_NEGOTIATION_FAILURE = "AWS_IO_TLS_ERROR_NEGOTIATION_FAILURE"
TLS_CHECK_TIMEOUT = 10.0
#: s2n also holds a failed handshake back 10-30 s (its "blinding" against timing attacks)
#: before the client hears of it; an attempt still pending after this long is checked then.
SLOW_CONNECT_CHECK_AFTER = 3.0
#: A publish the client refused as malformed is refused again however often it is resent.
_INVALID_PUBLISH_ERRORS = {
    "AWS_ERROR_MQTT5_PUBLISH_OPTIONS_VALIDATION",
    "AWS_ERROR_MQTT5_PACKET_VALIDATION",
}


def _crt_reason(exc: BaseException | None) -> str:
    if isinstance(exc, AwsCrtError):
        return f"{exc.name}: {exc.message}"
    return str(exc) if exc is not None else "no reason given"


def _code_name(code: object) -> str:
    return code.name if isinstance(code, Enum) else str(code)


class AwsIotTransport:
    def __init__(self, config: AgentConfig, callbacks: Callbacks) -> None:
        if config.tls is None:
            raise ValueError("the awsiot transport needs mutual TLS files")
        self._config = config
        self._callbacks = callbacks
        self._status_topic = status_topic(config.sensor_id)
        self._desired_topic = config_desired_topic(config.sensor_id)
        self._desired_warned = False
        self._lock = threading.Lock()  # guards the flags below; never held around the client
        self._connected = False
        self._stopping = False
        self._fatal = False
        self._tls_check_running = False
        self._attempts = 0
        self._pending_attempt: int | None = None  # the attempt not yet answered, if any
        self._stopped = threading.Event()

        flow = (
            mqtt5.ExtendedValidationAndFlowControlOptions.AWS_IOT_CORE_DEFAULTS
            if config.flow_control
            else mqtt5.ExtendedValidationAndFlowControlOptions.NONE
        )
        self._client = mqtt5_client_builder.mtls_from_path(
            endpoint=config.broker.host,
            port=config.broker.port,
            cert_filepath=str(config.tls.cert),
            pri_key_filepath=str(config.tls.key),
            ca_filepath=str(config.tls.ca),
            client_id=config.sensor_id,
            # A fresh process has none of the previous one's in-flight packet ids (the
            # outbox resends those as new publishes), so its first CONNECT asks for a clean
            # session; later reconnects rejoin it, so the client retransmits unacknowledged
            # QoS 1 publishes under their packet ids, as MQTT intends.
            session_behavior=mqtt5.ClientSessionBehaviorType.REJOIN_POST_SUCCESS,
            session_expiry_interval_sec=SESSION_EXPIRY_SECONDS,
            keep_alive_interval_sec=KEEPALIVE_SECONDS,
            ping_timeout_ms=PING_TIMEOUT_MS,
            will=mqtt5.PublishPacket(
                topic=self._status_topic,
                payload=b"offline",
                qos=mqtt5.QoS.AT_LEAST_ONCE,
                retain=True,
            ),
            will_delay_interval_sec=0,
            # QoS 1 publishes stay queued across reconnects (unacknowledged ones first);
            # a QoS 0 publish is failed instead, and the agent gives it again.
            offline_queue_behavior=(
                mqtt5.ClientOperationQueueBehaviorType.FAIL_NON_QOS1_PUBLISH_ON_DISCONNECT
            ),
            extended_validation_and_flow_control_options=flow,
            retry_jitter_mode=mqtt5.ExponentialBackoffJitterMode.FULL,
            min_reconnect_delay_ms=MIN_RECONNECT_DELAY_MS,
            max_reconnect_delay_ms=MAX_RECONNECT_DELAY_MS,
            # The SDK would put its version in the CONNECT user name; brokers other than
            # AWS IoT Core may read that field as a user name.
            enable_metrics_collection=False,
            on_lifecycle_attempting_connect=self._on_attempting_connect,
            on_lifecycle_connection_success=self._on_connection_success,
            on_lifecycle_connection_failure=self._on_connection_failure,
            on_lifecycle_disconnection=self._on_disconnection,
            on_lifecycle_stopped=self._on_stopped,
            on_publish_received=self._on_publish_received,
        )

    # -- the agent's side ------------------------------------------------------------------

    def start(self) -> None:
        self._client.start()

    def publish(self, topic: str, payload: bytes, qos: int, token: int) -> None:
        packet = mqtt5.PublishPacket(
            topic=topic,
            payload=payload,
            qos=mqtt5.QoS.AT_LEAST_ONCE if qos else mqtt5.QoS.AT_MOST_ONCE,
        )
        try:
            future = self._client.publish(packet)
        except AwsCrtError as exc:
            self._publish_error(topic, token, exc)
            return
        # Runs on the event-loop thread, or right here if the future is already done.
        future.add_done_callback(functools.partial(self._on_published, topic, qos, token))

    def publish_state(self, topic: str, payload: bytes) -> bool:
        with self._lock:
            connected = self._connected
        if not connected:
            return False  # the offline queue would keep it; the agent sends it later
        try:
            future = self._client.publish(
                mqtt5.PublishPacket(
                    topic=topic, payload=payload, qos=mqtt5.QoS.AT_LEAST_ONCE, retain=True
                )
            )
        except AwsCrtError as exc:
            log.warning("retained message on %s not sent: %s", topic, _crt_reason(exc))
            return False
        future.add_done_callback(functools.partial(self._on_state_published, topic))
        return True

    @property
    def mqtt_version(self) -> str:
        return "5"

    def stop(self, timeout: float) -> None:
        with self._lock:
            self._stopping = True
            connected = self._connected
        disconnect = mqtt5.DisconnectPacket()
        if connected:
            future = self._client.publish(
                mqtt5.PublishPacket(
                    topic=self._status_topic,
                    payload=b"offline",
                    qos=mqtt5.QoS.AT_LEAST_ONCE,
                    retain=True,
                )
            )
            try:
                future.result(timeout=min(timeout, OFFLINE_ACK_TIMEOUT))
            except (TimeoutError, concurrent.futures.CancelledError, AwsCrtError) as exc:
                # Not acknowledged in time (queued behind data, or the link just went):
                # ask the broker for our will, so the retained status still says offline.
                log.info("retained offline status not acknowledged (%s)", _crt_reason(exc))
                disconnect = mqtt5.DisconnectPacket(
                    reason_code=mqtt5.DisconnectReasonCode.DISCONNECT_WITH_WILL_MESSAGE
                )
        # Without a DISCONNECT_WITH_WILL_MESSAGE this is a normal DISCONNECT: no will.
        self._client.stop(disconnect)
        if not self._stopped.wait(timeout):
            # Seen while s2n holds back a failed handshake; the process may exit regardless.
            log.info("MQTT client did not stop within %.1fs", timeout)

    # -- publish completions, on an event-loop thread --------------------------------------

    def _on_published(
        self, topic: str, qos: int, token: int, future: concurrent.futures.Future[object]
    ) -> None:
        exc = future.exception()
        if exc is not None:
            self._publish_error(topic, token, exc)
            return
        if qos == 0:
            self._callbacks.on_ack(token)
            return
        result = future.result()
        puback = getattr(result, "puback", None)
        code = getattr(puback, "reason_code", None)
        if code == mqtt5.PubackReasonCode.NO_MATCHING_SUBSCRIBERS:
            # Mosquitto dropped it, as nobody subscribes (yet): keep it and send it again.
            self._callbacks.on_failed(token)
            return
        if isinstance(code, mqtt5.PubackReasonCode) and code < _PUBACK_FAILURE_MIN:
            self._callbacks.on_ack(token)
            return
        # An unknown code comes through as None: awscrt only maps the ones it knows.
        detail = getattr(puback, "reason_string", None)
        self._fatal_once(
            f"broker {self._config.broker} refused a publish on {topic}: "
            f"{_code_name(code) if code is not None else 'unrecognised reason code'}"
            f"{f' ({detail})' if detail else ''} "
            f"(is this device's certificate made for {self._config.sensor_id!r}, "
            "and may it publish there?)"
        )

    def _publish_error(self, topic: str, token: int, exc: BaseException) -> None:
        if isinstance(exc, AwsCrtError) and exc.name in _INVALID_PUBLISH_ERRORS:
            self._fatal_once(f"publish on {topic} refused by the MQTT client: {_crt_reason(exc)}")
            return
        # Failed by the client (offline queue policy, stopped, ack timeout): the agent
        # still has the reading in its outbox and gives it again.
        log.debug("publish of token %d on %s failed: %s", token, topic, _crt_reason(exc))
        self._callbacks.on_failed(token)

    # -- lifecycle events, on an event-loop thread -----------------------------------------

    def _on_attempting_connect(self, data: mqtt5.LifecycleAttemptingConnectData) -> None:
        with self._lock:
            self._attempts += 1
            attempt = self._pending_attempt = self._attempts
        timer = threading.Timer(SLOW_CONNECT_CHECK_AFTER, self._check_slow_connect, (attempt,))
        timer.daemon = True
        timer.start()

    def _check_slow_connect(self, attempt: int) -> None:
        with self._lock:
            pending = attempt == self._pending_attempt and not self._stopping
        if pending:
            self._start_tls_check()

    def _on_connection_success(self, data: mqtt5.LifecycleConnectSuccessData) -> None:
        with self._lock:
            self._connected = True
            self._pending_attempt = None
            stopping = self._stopping
        if stopping:
            return
        future = self._client.publish(
            mqtt5.PublishPacket(
                topic=self._status_topic,
                payload=b"online",
                qos=mqtt5.QoS.AT_LEAST_ONCE,
                retain=True,
            )
        )
        future.add_done_callback(self._on_status_published)
        desired = self._client.subscribe(
            mqtt5.SubscribePacket(
                subscriptions=[mqtt5.Subscription(self._desired_topic, qos=mqtt5.QoS.AT_LEAST_ONCE)]
            )
        )
        desired.add_done_callback(self._on_desired_subscribed)
        if self._config.receipts:
            # Every time: a broker that lost our session (killed) lost the subscription too.
            topic = receipt_topic(self._config.sensor_id)
            subscribed = self._client.subscribe(
                mqtt5.SubscribePacket(
                    subscriptions=[mqtt5.Subscription(topic, qos=mqtt5.QoS.AT_LEAST_ONCE)]
                )
            )
            subscribed.add_done_callback(self._on_receipts_subscribed)
        settings = data.negotiated_settings
        rejoined = bool(getattr(settings, "rejoined_session", False))
        self._callbacks.on_connection(
            True, f"connected to {self._config.broker} (session rejoined: {rejoined})"
        )

    def _on_state_published(self, topic: str, future: concurrent.futures.Future[object]) -> None:
        exc = future.exception()
        if exc is not None:
            log.debug("retained message on %s not sent: %s", topic, _crt_reason(exc))
            return
        code = getattr(getattr(future.result(), "puback", None), "reason_code", None)
        if not isinstance(code, mqtt5.PubackReasonCode) or code >= _PUBACK_FAILURE_MIN:
            log.warning("broker %s refused %s: %s", self._config.broker, topic, _code_name(code))

    def _on_desired_subscribed(self, future: concurrent.futures.Future[object]) -> None:
        exc = future.exception()
        if exc is not None:
            # The connection went before the SUBACK: the next connection subscribes again.
            log.debug("desired config subscription not confirmed: %s", _crt_reason(exc))
            return
        codes = getattr(future.result(), "reason_codes", None) or []
        refused = [c for c in codes if not isinstance(c, Enum) or c.value >= _SUBACK_FAILURE_MIN]
        with self._lock:
            first = bool(refused) and not self._desired_warned
            self._desired_warned = self._desired_warned or bool(refused)
        if first:
            log.warning("%s", desired_refused(self._config, _code_name(refused[0])))

    def _on_status_published(self, future: concurrent.futures.Future[object]) -> None:
        # Like the paho transport, a refused status is not fatal: the data is what counts,
        # and a refusal there stops the agent with a clear message of its own.
        exc = future.exception()
        if exc is not None:
            log.debug("retained online status not sent: %s", _crt_reason(exc))
            return
        code = getattr(getattr(future.result(), "puback", None), "reason_code", None)
        if not isinstance(code, mqtt5.PubackReasonCode) or code >= _PUBACK_FAILURE_MIN:
            log.warning(
                "broker %s refused the retained status on %s: %s",
                self._config.broker,
                self._status_topic,
                _code_name(code),
            )

    def _on_receipts_subscribed(self, future: concurrent.futures.Future[object]) -> None:
        exc = future.exception()
        if exc is not None:
            # The connection went before the SUBACK: the next connection subscribes again.
            log.debug("receipt subscription not confirmed: %s", _crt_reason(exc))
            return
        codes = getattr(future.result(), "reason_codes", None) or []
        refused = [c for c in codes if not isinstance(c, Enum) or c.value >= _SUBACK_FAILURE_MIN]
        if refused:
            self._fatal_once(receipts_refused(self._config, _code_name(refused[0])))

    def _on_publish_received(self, data: mqtt5.PublishReceivedData) -> None:
        packet = data.publish_packet
        if packet.topic == self._desired_topic:
            self._callbacks.on_config(bytes(packet.payload or b""))
            return
        try:
            confirmed = parse_receipt(bytes(packet.payload or b""))
        except PayloadError as exc:
            log.warning("ignored a message on %s: %s", packet.topic, exc)
            return
        self._callbacks.on_receipt(confirmed)

    def _on_connection_failure(self, data: mqtt5.LifecycleConnectFailureData) -> None:
        with self._lock:
            self._connected = False
            self._pending_attempt = None
            stopping = self._stopping
        if stopping:
            return
        broker = self._config.broker
        exc = data.exception
        connack = data.connack_packet
        code = getattr(connack, "reason_code", None)
        if connack is not None and code is not None:
            message = f"broker {broker} refused the connection: {_code_name(code)}"
            reason_string = getattr(connack, "reason_string", None)
            if reason_string:
                message += f" ({reason_string})"
            if code in _FATAL_CONNACK:
                self._fatal_once(
                    message + f" (is this device's certificate made for "
                    f"{self._config.sensor_id!r}?)"
                )
                return
            self._callbacks.on_connection(False, message)
            return
        reason = f"cannot connect to broker {broker} ({_crt_reason(exc)})"
        if isinstance(exc, AwsCrtError) and exc.name in _TLS_VERIFY_ERRORS:
            self._fatal_once(self._tls_verify_message(_crt_reason(exc)))
            return
        if isinstance(exc, AwsCrtError) and exc.name == _TLS_NEGOTIATION_FAILURE:
            self._start_tls_check()
        self._callbacks.on_connection(False, reason)

    # -- telling a wrong --ca from a passing TLS fault --------------------------------------

    def _tls_verify_message(self, detail: str) -> str:
        tls = self._config.tls
        return (
            f"broker {self._config.broker}: its certificate failed verification against "
            f"{tls.ca if tls else 'the system CAs'} ({detail}); "
            "check --ca and the broker's host name"
        )

    def _start_tls_check(self) -> None:
        with self._lock:
            if self._tls_check_running or self._fatal:
                return
            self._tls_check_running = True
        # A blocking handshake must not run on the CRT's event-loop thread.
        threading.Thread(
            target=self._diagnose_tls, name=f"tls-check-{self._config.sensor_id}", daemon=True
        ).start()

    def _diagnose_tls(self) -> None:
        """One handshake with Python's ssl and the same files: it names what s2n does not."""
        tls = self._config.tls
        broker = self._config.broker
        try:
            if tls is None:
                return
            context = ssl.create_default_context(cafile=str(tls.ca))
            context.load_cert_chain(str(tls.cert), str(tls.key))
            with (
                socket.create_connection(
                    (broker.host, broker.port), timeout=TLS_CHECK_TIMEOUT
                ) as sock,
                context.wrap_socket(sock, server_hostname=broker.host),
            ):
                pass
        except ssl.SSLCertVerificationError as exc:
            with self._lock:
                stopping = self._stopping
            if not stopping:
                self._fatal_once(self._tls_verify_message(exc.verify_message or str(exc)))
        except (OSError, ValueError) as exc:
            # Anything else (our certificate refused there, the network) may pass: the
            # client keeps retrying, and each failure was already reported as lost.
            log.debug("TLS check of %s: %s", broker, exc)
        finally:
            with self._lock:
                self._tls_check_running = False

    def _on_disconnection(self, data: mqtt5.LifecycleDisconnectData) -> None:
        with self._lock:
            self._connected = False
            stopping = self._stopping
        if stopping:
            return
        broker = self._config.broker
        packet = data.disconnect_packet
        code = getattr(packet, "reason_code", None)
        if packet is not None and code is not None:
            reason = f"the broker sent DISCONNECT {_code_name(code)}"
            if getattr(packet, "reason_string", None):
                reason += f" ({packet.reason_string})"
            if code in _FATAL_DISCONNECT:
                self._fatal_once(f"disconnected from {broker}: {reason}")
                return
        else:
            reason = _crt_reason(data.exception)
        self._callbacks.on_connection(False, f"disconnected from {broker}: {reason}")

    def _on_stopped(self, data: mqtt5.LifecycleStoppedData) -> None:
        self._stopped.set()

    def _fatal_once(self, message: str) -> None:
        # The client keeps retrying until the agent stops it: report the cause only once.
        with self._lock:
            first = not self._fatal
            self._fatal = True
        if first:
            self._callbacks.on_fatal(message)
