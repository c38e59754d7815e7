"""Fixtures for the ingest bridge: settings on the shared broker, ingest run on a thread,
raw device publishers, and table reads."""

from __future__ import annotations

import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from cloud.aws import Endpoint
from cloud.ingest import Ingest, IngestSettings, IngestStats
from cloud.local.mosquitto import Mosquitto
from tests.conftest import Pki


@pytest.fixture
def tls_args(pki: Pki) -> Callable[[str], list[str]]:
    def make(name: str) -> list[str]:
        ident = pki.device(name)
        return ["--cert", str(ident.cert), "--key", str(ident.key), "--ca", str(ident.ca)]

    return make


@pytest.fixture
def ingest_settings(
    pki: Pki, shared_broker: Mosquitto, aws: Endpoint, table: str, device_id: str, tmp_path: Path
) -> IngestSettings:
    """Ingest settings of this test's own: its client id and share group are used by no other
    test, so no earlier test's offline session takes a round-robin share of our messages."""
    return IngestSettings(
        host="127.0.0.1",
        port=shared_broker.config.port,
        tls=pki.device("ingest"),
        endpoint=aws,
        table=table,
        dead_letter=tmp_path / "dead-letter.jsonl",
        client_id=f"ingest-{device_id}",
        share_group=f"g-{device_id}",
        batch_seconds=0.05,
        report_every=1.0,
    )


@dataclass
class Running:
    """An Ingest running on a thread of the test process."""

    ingest: Ingest
    stop: threading.Event = field(default_factory=threading.Event)
    outcome: IngestStats | BaseException | None = None

    def __post_init__(self) -> None:
        self.thread = threading.Thread(target=self._run, name="test-ingest", daemon=True)

    def _run(self) -> None:
        try:
            self.outcome = self.ingest.run(self.stop)
        except BaseException as exc:  # handed to the test by finish()
            self.outcome = exc

    @property
    def stats(self) -> IngestStats:
        return self.ingest.stats

    def wait(self, predicate: Callable[[IngestStats], bool], timeout: float = 30) -> None:
        """Poll the bridge's own counters (cheap, unlike scanning moto's table)."""
        deadline = time.monotonic() + timeout
        while not predicate(self.ingest.stats):
            if not self.thread.is_alive():
                raise AssertionError(f"ingest stopped early: {self.outcome!r}")
            assert time.monotonic() < deadline, f"timed out; {self.ingest.stats.line()}"
            time.sleep(0.02)

    def finish(self, timeout: float = 20) -> IngestStats:
        self.stop.set()
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "ingest did not stop"
        if isinstance(self.outcome, BaseException):
            raise self.outcome
        assert self.outcome is not None
        return self.outcome


@pytest.fixture
def run_ingest() -> Iterator[Callable[..., Running]]:
    """Start ingest in-process; the test waits for its subscription before publishing."""
    started: list[Running] = []

    def start(settings: IngestSettings, wait_ready: bool = True, **kwargs: Any) -> Running:
        running = Running(Ingest(settings, **kwargs))
        started.append(running)
        running.thread.start()
        if wait_ready:
            deadline = time.monotonic() + 15
            while not running.ingest.ready.wait(0.05):
                assert running.thread.is_alive(), f"ingest stopped: {running.outcome!r}"
                assert time.monotonic() < deadline, "ingest never subscribed"
        return running

    yield start
    for running in started:
        running.stop.set()
        running.thread.join(20)


class DevicePublisher:
    """A device's own MQTT 5 client (its certificate, so the ACL applies) for raw payloads."""

    def __init__(self, port: int, pki: Pki, sensor_id: str) -> None:
        ident = pki.device(sensor_id)
        self.topic = f"sensors/{sensor_id}/data"
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"raw-{sensor_id}",
            protocol=MQTTProtocolVersion.MQTTv5,
        )
        client.tls_set(
            str(ident.ca), str(ident.cert), str(ident.key), tls_version=ssl.PROTOCOL_TLS_CLIENT
        )
        client.connect("127.0.0.1", port)
        client.loop_start()
        self._client = client

    def publish(self, *payloads: bytes, topic: str | None = None) -> None:
        """Publish at QoS 1 and wait for each PUBACK (MQTT 5: a refusal would raise)."""
        infos = [self._client.publish(topic or self.topic, p, qos=1) for p in payloads]
        for info in infos:
            info.wait_for_publish(10)
            assert info.is_published()

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


@pytest.fixture
def device_publisher(
    pki: Pki, shared_broker: Mosquitto
) -> Iterator[Callable[[str], DevicePublisher]]:
    made: list[DevicePublisher] = []

    def make(sensor_id: str) -> DevicePublisher:
        pub = DevicePublisher(shared_broker.config.port, pki, sensor_id)
        made.append(pub)
        return pub

    yield make
    for pub in made:
        pub.close()


def scan_items(ddb: Any, table: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    kwargs: dict[str, Any] = {"TableName": table}
    while True:
        page = ddb.scan(**kwargs)
        items.extend(page["Items"])
        if "LastEvaluatedKey" not in page:
            return items
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def poll(predicate: Callable[[], bool], timeout: float, interval: float, what: str) -> None:
    """Like tests.mqtt.wait_until, paced for checks that scan moto's table (~3k items/s)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(interval)
