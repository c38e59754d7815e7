"""Test helpers on the MQTT side: a subscriber that records what arrived, and agent runs."""

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


@dataclass
class Subscriber:
    """A persistent-session QoS 1 subscriber that keeps every message it gets."""

    port: int
    identity: Identity
    topics: tuple[str, ...] = ("sensors/+/data",)
    client_id: str = "test-subscriber"
    messages: list[Received] = field(default_factory=list)
    #: MQTT 3.1.1 for brokers that speak nothing newer (tests/nats.py).
    protocol: MQTTProtocolVersion = MQTTProtocolVersion.MQTTv5

    def __post_init__(self) -> None:
        self._cond = threading.Condition()
        self._subscribed = threading.Event()
        c = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=self.protocol,
            # 3.1.1's persistent session; MQTT 5 asks for one at connect.
            clean_session=False if self.protocol == MQTTProtocolVersion.MQTTv311 else None,
        )
        c.tls_set(
            str(self.identity.ca),
            str(self.identity.cert),
            str(self.identity.key),
            tls_version=ssl.PROTOCOL_TLS_CLIENT,
        )
        c.reconnect_delay_set(0.05, 0.5)
        c.on_connect = self._on_connect
        c.on_subscribe = lambda *a: self._subscribed.set()
        c.on_message = self._on_message
        self._client = c

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any
    ) -> None:
        if not reason.is_failure:
            client.subscribe([(t, 1) for t in self.topics])

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with self._cond:
            self.messages.append(Received(msg.topic, msg.payload, bool(msg.retain)))
            self._cond.notify_all()

    def start(self) -> Subscriber:
        if self.protocol == MQTTProtocolVersion.MQTTv311:
            self._client.connect("127.0.0.1", self.port)
        else:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = 3600
            self._client.connect("127.0.0.1", self.port, clean_start=False, properties=props)
        self._client.loop_start()
        assert self._subscribed.wait(10), "subscriber got no SUBACK"
        return self

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def publish(self, topic: str, payload: bytes) -> None:
        """QoS 1 as this identity (the ingest one sends receipts); waits for the PUBACK."""
        info = self._client.publish(topic, payload, qos=1)
        info.wait_for_publish(10)
        assert info.is_published(), f"no PUBACK for {topic}"

    def wait_for(
        self, predicate: Callable[[list[Received]], bool], timeout: float = 30
    ) -> list[Received]:
        with self._cond:
            ok = self._cond.wait_for(lambda: predicate(self.messages), timeout)
            assert ok, f"timed out; got {len(self.messages)} message(s)"
            return list(self.messages)

    def readings(self, sensor_id: str) -> list[dict[str, Any]]:
        with self._cond:
            return [m.json() for m in self.messages if m.topic == f"sensors/{sensor_id}/data"]

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


def wait_until(predicate: Callable[[], bool], timeout: float = 30, what: str = "condition") -> None:
    """Poll a condition no event announces (a row in a file, a process state)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def kill9(proc: subprocess.Popen[str]) -> None:
    """SIGKILL, as a power cut would: no handler runs, no flush."""
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
