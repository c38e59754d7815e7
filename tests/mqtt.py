"""Test helpers on the MQTT side: the tests' one raw MQTT client, a subscriber that records
what arrived (built on it), and agent runs."""

from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from cloud.identity.local_ca import Identity

REPO = Path(__file__).resolve().parent.parent


@dataclass
class Received:
    topic: str
    payload: bytes
    retain: bool

    def json(self) -> Any:
        return json.loads(self.payload)


class MqttClient:
    """The tests' raw MQTT client (paho, QoS 1) on 127.0.0.1: over mutual TLS as `identity`
    (so the broker's ACL applies to it), or plain MQTT when that is None. It records what
    the broker answered (CONNACK, PUBACK and SUBACK reasons, a disconnect) and every message
    it got, and waits for them as events.

    `reconnect` lets paho connect again after a lost connection (a subscriber that outlives
    a broker restart); without it one session's outcome is what the test asks. `persistent`
    asks for a session the broker keeps while the client is away; `resubscribe` topics are
    subscribed to on every CONNACK."""

    def __init__(
        self,
        port: int,
        identity: Identity | None,
        client_id: str,
        *,
        protocol: MQTTProtocolVersion = MQTTProtocolVersion.MQTTv5,
        reconnect: bool = False,
        persistent: bool = False,
        resubscribe: tuple[str, ...] = (),
    ) -> None:
        self.port = port
        self.protocol = protocol
        self.persistent = persistent
        self.resubscribe = resubscribe
        self._cond = threading.Condition()
        self.connack: str | None = None
        self.accepted = False
        self.disconnected: str | None = None
        #: Why connect() failed before any MQTT answer (socket or TLS handshake).
        self.refusal: str | None = None
        self.acks: dict[int, str] = {}
        self.subacks: list[list[str]] = []
        self.messages: list[Received] = []
        v311 = protocol == MQTTProtocolVersion.MQTTv311
        c = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=protocol,
            # 3.1.1's persistent session; MQTT 5 asks for one at connect.
            clean_session=(not persistent) if v311 else None,
            reconnect_on_failure=reconnect,
        )
        if identity is not None:
            c.tls_set(
                str(identity.ca),
                str(identity.cert),
                str(identity.key),
                tls_version=ssl.PROTOCOL_TLS_CLIENT,
            )
        if reconnect:
            c.reconnect_delay_set(0.05, 0.5)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_publish = self._on_publish
        c.on_subscribe = self._on_subscribe
        c.on_message = self._on_message
        self.client = c

    @classmethod
    def open(
        cls, port: int, identity: Identity | None, client_id: str, **options: Any
    ) -> MqttClient:
        """A client the broker let in; the test fails with the broker's answer otherwise."""
        client = cls(port, identity, client_id, **options)
        assert client.connect(), f"{client_id} refused: {client.answer()}"
        assert client.connack == "Success", client.connack
        return client

    def connect(self, timeout: float = 10) -> bool:
        """Connect and wait for the broker's answer: True if it let us in."""
        kwargs: dict[str, Any] = {}
        if self.persistent and self.protocol == MQTTProtocolVersion.MQTTv5:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = 3600
            kwargs = {"clean_start": False, "properties": props}
        try:
            self.client.connect("127.0.0.1", self.port, **kwargs)
        except OSError as exc:  # ssl.SSLError too: a handshake the broker refused
            self.refusal = f"{type(exc).__name__}: {exc}"
            return False
        self.client.loop_start()
        self.wait(
            lambda: self.connack is not None or self.disconnected is not None,
            "the broker to accept or refuse the CONNECT",
            timeout,
        )
        return self.accepted

    def answer(self) -> str:
        return f"CONNACK {self.connack}, disconnect {self.disconnected}, {self.refusal}"

    def _notify(self, change: Callable[[], None]) -> None:
        with self._cond:
            change()
            self._cond.notify_all()

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any
    ) -> None:
        def change() -> None:
            self.connack, self.accepted = str(reason), not reason.is_failure

        self._notify(change)
        if not reason.is_failure and self.resubscribe:
            client.subscribe([(t, 1) for t in self.resubscribe])

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any
    ) -> None:
        self._notify(lambda: setattr(self, "disconnected", str(reason)))

    def _on_publish(
        self, client: mqtt.Client, userdata: Any, mid: int, reason: Any, props: Any
    ) -> None:
        self._notify(lambda: self.acks.__setitem__(mid, str(reason)))

    def _on_subscribe(
        self, client: mqtt.Client, userdata: Any, mid: int, reasons: Any, props: Any
    ) -> None:
        self._notify(lambda: self.subacks.append([str(r) for r in reasons]))

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        received = Received(msg.topic, bytes(msg.payload), bool(msg.retain))
        self._notify(lambda: self.messages.append(received))

    def until(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Wait until `predicate` holds (checked at each event): whether it did in time."""
        with self._cond:
            return self._cond.wait_for(predicate, timeout)

    def wait(self, predicate: Callable[[], bool], what: str, timeout: float = 15) -> None:
        assert self.until(predicate, timeout), f"timed out waiting for {what}"

    def publish(self, topic: str, *payloads: bytes) -> None:
        """Publish each at QoS 1 and wait for its PUBACK."""
        infos = [self.client.publish(topic, p, qos=1) for p in payloads]
        for info in infos:
            info.wait_for_publish(10)
            assert info.is_published(), f"no PUBACK for {topic}"

    def publish_all(self, topic: str, payloads: list[bytes]) -> list[str]:
        """Publish each at QoS 1 and return the broker's PUBACK reason for each, in order."""
        mids = [self.client.publish(topic, p, qos=1).mid for p in payloads]
        self.wait(lambda: all(m in self.acks for m in mids), f"{len(mids)} PUBACKs")
        return [self.acks[m] for m in mids]

    def subscribe(self, *topics: str) -> list[str]:
        """Subscribe at QoS 1 and return the SUBACK's reasons."""
        before = len(self.subacks)
        self.client.subscribe([(t, 1) for t in topics])
        self.wait(lambda: len(self.subacks) > before, "a SUBACK")
        return self.subacks[before]

    def received(self) -> list[tuple[str, bytes]]:
        with self._cond:
            return [(m.topic, m.payload) for m in self.messages]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@dataclass
class Subscriber:
    """A persistent-session QoS 1 subscriber that keeps every message it gets."""

    port: int
    identity: Identity
    topics: tuple[str, ...] = ("sensors/+/data",)
    client_id: str = "test-subscriber"
    #: MQTT 3.1.1 for brokers that speak nothing newer (tests/nats.py).
    protocol: MQTTProtocolVersion = MQTTProtocolVersion.MQTTv5
    mqtt: MqttClient = field(init=False)

    def __post_init__(self) -> None:
        self.mqtt = MqttClient(
            self.port,
            self.identity,
            self.client_id,
            protocol=self.protocol,
            reconnect=True,
            persistent=True,
            resubscribe=self.topics,
        )

    @property
    def messages(self) -> list[Received]:
        return self.mqtt.messages

    def start(self) -> Subscriber:
        self.mqtt.connect()
        assert self.mqtt.until(lambda: bool(self.mqtt.subacks), 10), "subscriber got no SUBACK"
        return self

    def stop(self) -> None:
        self.mqtt.close()

    def publish(self, topic: str, payload: bytes) -> None:
        """QoS 1 as this identity (the ingest one sends receipts); waits for the PUBACK."""
        self.mqtt.publish(topic, payload)

    def wait_for(
        self, predicate: Callable[[list[Received]], bool], timeout: float = 30
    ) -> list[Received]:
        ok = self.mqtt.until(lambda: predicate(self.messages), timeout)
        assert ok, f"timed out; got {len(self.messages)} message(s)"
        return list(self.messages)

    def readings(self, sensor_id: str) -> list[dict[str, Any]]:
        topic = f"sensors/{sensor_id}/data"
        return [m.json() for m in list(self.messages) if m.topic == topic]

    def wait_readings(self, sensor_id: str, n: int, timeout: float = 30) -> list[dict[str, Any]]:
        """Wait until `n` distinct seqs of `sensor_id` arrived; return every copy received."""
        topic = f"sensors/{sensor_id}/data"
        self.wait_for(
            lambda ms: len({json.loads(m.payload)["seq"] for m in ms if m.topic == topic}) >= n,
            timeout,
        )
        return self.readings(sensor_id)


def agent_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "device", *args]


def device_args(port: int, device_id: str, tls: list[str], outbox: Path) -> list[str]:
    """A device-agent's identity, broker on loopback and outbox: what every test gives it."""
    broker = f"mqtts://127.0.0.1:{port}"
    return ["--id", device_id, "--broker", broker, *tls, "--outbox", str(outbox)]


def start_agent(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """The real `device-agent` entry point, as a child process."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    proc = subprocess.Popen(
        agent_command(*args),
        cwd=REPO,
        env=full_env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    CHILDREN.append(proc)
    return proc


#: Every child a test started, so a failed test leaves no stray process behind.
CHILDREN: list[subprocess.Popen[str]] = []


def reap_children() -> None:
    while CHILDREN:
        proc = CHILDREN.pop()
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def finish(proc: subprocess.Popen[str], timeout: float = 60) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def wait_until(
    predicate: Callable[[], bool],
    timeout: float = 30,
    what: str = "condition",
    every: float = 0.02,
) -> None:
    """Poll a condition no event announces (a row in a file, a process state), at a pace
    that suits its cost."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out after {timeout:g}s waiting for {what}"
        time.sleep(every)


def kill9(proc: subprocess.Popen[str]) -> None:
    """SIGKILL, as a power cut would: no handler runs, no flush."""
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
