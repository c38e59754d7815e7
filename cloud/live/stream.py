"""The fleet's live stream: every device's readings, statuses and health, as they arrive at
the broker, for a watcher of the cloud side (never a device's identity). This module is the
local stack's (and any Mosquitto's); AWS IoT Core's is cloud.live.iot; `open_live` picks.

One paho client (device.transport.session builds it: mutual TLS, MQTT 5) subscribed to
`sensors/+/data`, `sensors/+/status` and `sensors/+/health`, in paho's own network thread,
which also reconnects after the broker goes away, backing off up to RECONNECT_MAX_S. The
retained status and health come first, at subscribe time: the last known state of every
device. Messages that are not valid (a garbled payload, a topic of another shape) are
logged and skipped: a watcher only reads, and one bad device must not blind it.

`persistent=True` keeps the session while the watcher is away (`cloud alerts watch`: the
readings of its restart are queued for it); the dashboard's session ends with it.
"""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from cloud.errors import ConfigError
from cloud.identity.local_ca import Identity
from cloud.live.events import LiveEvent
from cloud.pidlock import PidLock
from cloud.target import Target
from device.errors import PayloadError
from device.payload import SENSOR_ID_RE, parse_health, parse_payload
from device.transport.session import KEEPALIVE_SECONDS, Session, SessionSpec

log = logging.getLogger(__name__)

TOPICS = ("sensors/+/data", "sensors/+/status", "sensors/+/health")
_LEAVES = {"data": "reading", "status": "status", "health": "health"}
RECONNECT_MAX_S = 5
#: How long the broker keeps a persistent watcher's session (and its queued readings).
PERSISTENT_EXPIRY_S = 24 * 3600

OnEvent = Callable[[LiveEvent], None]
#: None once subscribed; else why the stream is not receiving (a line for the user).
OnState = Callable[[str | None], None]


def now_ms() -> int:
    return int(time.time() * 1000)


def event_of(topic: str, payload: bytes, retained: bool, received_ms: int) -> LiveEvent | None:
    """The event a message on one of TOPICS carries; None (logged) for one not valid."""
    parts = topic.split("/")
    if len(parts) != 3 or parts[0] != "sensors" or parts[2] not in _LEAVES:
        return None
    sensor_id, kind = parts[1], _LEAVES[parts[2]]
    if not SENSOR_ID_RE.fullmatch(sensor_id):
        return None
    try:
        if kind == "reading":
            reading = parse_payload(payload, sensor_id)
            return LiveEvent(kind, sensor_id, received_ms, reading=reading, retained=retained)
        if kind == "health":
            health = parse_health(payload, sensor_id)
            return LiveEvent(kind, sensor_id, received_ms, health=health, retained=retained)
    except PayloadError as exc:
        log.warning("skipped a message on %s: %s", topic, exc)
        return None
    text = payload.decode("utf-8", "replace").strip()
    if not payload:
        return None  # a cleared retained status: nothing known
    if text not in ("online", "offline"):
        log.warning("skipped a status on %s: %r is neither online nor offline", topic, text[:40])
        return None
    return LiveEvent(kind, sensor_id, received_ms, status=text, retained=retained)


class LiveStream:
    """The stream from one MQTT broker, as `identity` (a watcher of the local stack)."""

    def __init__(
        self,
        host: str,
        port: int,
        identity: Identity,
        client_id: str,
        on_event: OnEvent,
        on_state: OnState,
        persistent: bool = False,
        lock: PidLock | None = None,
    ) -> None:
        self.label = f"mqtts://{host}:{port}"
        #: Held while the stream lives: one process per identity (`open_live`).
        self._lock = lock
        self._on_event = on_event
        self._on_state = on_state
        self._persistent = persistent
        spec = SessionSpec(
            client_id=client_id,
            host=host,
            port=port,
            label=self.label,
            mqtt_version="5",
            session_expiry_seconds=PERSISTENT_EXPIRY_S if persistent else 0,
            tls=identity,
        )
        try:
            self._session = Session(spec, self._configure)
        except (ssl.SSLError, OSError) as exc:  # paho reads the files at once
            raise ConfigError(
                f"the certificate {identity.cert}, key {identity.key} or CA {identity.ca} "
                f"cannot be used ({exc}): give PEM files (`cloud provision` makes them)"
            ) from None
        self._client = self._session.client

    def _configure(self, client: mqtt.Client) -> None:
        client.on_connect = self._connected
        client.on_disconnect = self._disconnected
        client.on_connect_fail = self._connect_failed
        client.on_subscribe = self._subscribed
        client.on_message = self._message
        client.reconnect_delay_set(1, RECONNECT_MAX_S)

    def start(self) -> None:
        """Connect in the background: a broker that is down now is retried until it is up."""
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = self._session.spec.session_expiry_seconds
        spec = self._session.spec
        self._client.connect_async(
            spec.host,
            spec.port,
            keepalive=KEEPALIVE_SECONDS,
            clean_start=not self._persistent,
            properties=props,
        )
        self._client.loop_start()

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()
        if self._lock is not None:
            self._lock.release()

    # -- paho's callbacks, in its network thread ----------------------------------------

    def _connected(
        self, client: mqtt.Client, u: object, flags: object, reason: object, p: object
    ) -> None:
        if getattr(reason, "is_failure", False):
            self._on_state(f"the broker at {self.label} refused us: {reason}")
            return
        client.subscribe([(t, 1) for t in TOPICS])

    def _subscribed(
        self,
        client: mqtt.Client,
        u: object,
        mid: int,
        reasons: list[ReasonCode],
        p: Properties | None,
    ) -> None:
        refused = [t for t, r in zip(TOPICS, reasons, strict=False) if "Granted" not in str(r)]
        if refused:
            self._on_state(f"the broker at {self.label} refused a subscription to {refused[0]}")
        else:
            self._on_state(None)

    def _disconnected(
        self, client: mqtt.Client, u: object, flags: object, reason: object, p: object
    ) -> None:
        self._on_state(f"lost the broker at {self.label} ({reason}); reconnecting")

    def _connect_failed(self, client: mqtt.Client, u: object) -> None:
        self._on_state(f"cannot reach the broker at {self.label}; retrying")

    def _message(self, client: mqtt.Client, u: object, msg: mqtt.MQTTMessage) -> None:
        event = event_of(msg.topic, bytes(msg.payload), bool(msg.retain), now_ms())
        if event is None:
            return
        try:
            self._on_event(event)
        except Exception:
            # paho re-raises a callback's exception and its network thread ends with it:
            # the stream would go quiet while saying it is connected. One bad event is
            # logged; the stream goes on.
            log.exception("the live stream's user failed on a message on %s", msg.topic)


class Stream(Protocol):
    """A live stream of either side: LiveStream (an MQTT broker over mutual TLS) or
    cloud.live.iot.IotLiveStream (AWS IoT Core, signed with AWS credentials)."""

    def start(self) -> None: ...

    def stop(self) -> None: ...


def open_broker(
    url: str,
    identity: Identity,
    client_id: str,
    on_event: OnEvent,
    on_state: OnState,
    persistent: bool = False,
) -> LiveStream:
    """The live stream of a broker given by its address (`--broker mqtts://HOST:PORT`), as
    `identity`, not started."""
    from device.config import BrokerUrl
    from device.errors import ConfigError as AgentConfigError

    try:
        parsed = BrokerUrl.parse(url)
    except AgentConfigError as exc:
        raise ConfigError(str(exc)) from None
    if not parsed.tls:
        raise ConfigError(f"--broker {url}: the live stream is read over TLS: mqtts://HOST:PORT")
    return LiveStream(
        parsed.host, parsed.port, identity, client_id, on_event, on_state, persistent=persistent
    )


def open_live(
    target: Target, watcher: str, on_event: OnEvent, on_state: OnState, persistent: bool = False
) -> Stream:
    """The live stream of the side `target` names, not started. Locally the stack's broker
    as `watcher` (one of cloud.local.mosquitto.WATCHERS; its certificate issued by the
    local CA on first use); on AWS, IoT Core as the user's AWS credentials (a session of
    its own each time: `persistent` is for the local broker only)."""
    if target.stack is None:
        return _iot_stream(target, watcher, on_event, on_state)
    from cloud.local.identities import device_identity  # the local CA: the cloud half only
    from cloud.local.state import state_dir

    root = Path(target.stack.root)
    lock = watcher_lock(state_dir(root) / f"{watcher}.lock", watcher)
    lock.acquire()
    try:
        identity = device_identity(root, watcher)
        return LiveStream(
            "127.0.0.1",
            target.stack.mqtt_port,
            identity,
            f"cloud-{watcher}",
            on_event,
            on_state,
            persistent=persistent,
            lock=lock,
        )
    except BaseException:
        lock.release()
        raise


def watcher_lock(path: Path, watcher: str) -> PidLock:
    """One process per watcher identity on a stack: the broker names a client by its
    certificate, so a second `cloud dashboard` (or `alerts watch`) would throw the first
    off, and the two would take turns doing so."""
    return PidLock(
        path,
        lambda pid: (
            f"another process (pid {pid}) watches this stack's broker as `{watcher}`, and the "
            "broker names a client by its certificate: a second would throw it off; stop "
            "that one first"
        ),
        lambda why: f"cannot make the lock file {path} ({why})",
    )


def _iot_stream(target: Target, watcher: str, on_event: OnEvent, on_state: OnState) -> Stream:
    from cloud.stack.status import iot_data_endpoint

    try:
        from cloud.live.iot import IotLiveStream
    except ImportError:
        raise ConfigError(
            "the live stream from AWS IoT Core needs awsiotsdk: pip install "
            "'sensor-pipeline[cloud,awsiot]'"
        ) from None
    host = iot_data_endpoint(target.endpoint)
    return IotLiveStream(host, target.endpoint.region_name(), watcher, on_event, on_state)
