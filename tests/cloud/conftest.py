"""Fixtures for the ingest bridge: settings on the shared broker, ingest run on a thread,
raw device publishers, and paced polls of the table."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cloud.aws import Endpoint
from cloud.ingest.settings import IngestSettings
from cloud.local.mosquitto import Mosquitto
from tests.conftest import Pki
from tests.ingest_run import Running, ingest_runner
from tests.mqtt import MqttClient


@pytest.fixture
def ingest_settings(
    pki: Pki, shared_broker: Mosquitto, aws: Endpoint, table: str, device_id: str, tmp_path: Path
) -> IngestSettings:
    """Ingest settings of this test's own: its identity (so client id) and share group are
    used by no other test, so no earlier test's offline session takes a share of our messages."""
    name, ident = pki.reader()
    return IngestSettings(
        host="127.0.0.1",
        port=shared_broker.config.port,
        tls=ident,
        endpoint=aws,
        table=table,
        dead_letter=tmp_path / "dead-letter.jsonl",
        client_id=name,
        share_group=f"g-{device_id}",
        batch_seconds=0.05,
        report_every=1.0,
    )


@pytest.fixture
def run_ingest() -> Iterator[Callable[..., Running]]:
    """Start ingest in-process; the test waits for its subscription before publishing."""
    yield from ingest_runner()


class DevicePublisher:
    """A device's own client (its certificate, so the ACL applies) for raw payloads."""

    def __init__(self, port: int, pki: Pki, sensor_id: str) -> None:
        self.topic = f"sensors/{sensor_id}/data"
        self.client = MqttClient.open(
            port, pki.device(sensor_id), f"raw-{sensor_id}", reconnect=True
        )

    def publish(self, *payloads: bytes, topic: str | None = None) -> None:
        """Publish at QoS 1 and wait for each PUBACK (MQTT 5: a refusal would raise)."""
        self.client.publish(topic or self.topic, *payloads)

    def close(self) -> None:
        self.client.close()


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


def poll(predicate: Callable[[], bool], timeout: float, interval: float, what: str) -> None:
    """Like tests.mqtt.wait_until, paced for checks that scan moto's table (~3k items/s)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(interval)
