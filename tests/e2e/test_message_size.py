"""Sizes are bounded: a device cannot fill the broker's memory, ingest's or the disk.

The broker ends the connection of a client that sends a packet bigger than a reading can
be (cloud.local.mosquitto.MAX_PACKET_BYTES); ingest refuses a payload over the contract's
limit; and its dead letter keeps a bounded prefix with the whole payload's size and hash.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable

from cloud.ingest.deadletter import PAYLOAD_PREFIX_BYTES, read_dead_letters
from cloud.ingest.settings import IngestSettings
from cloud.local.mosquitto import MAX_PACKET_BYTES, Mosquitto
from device.payload import MAX_PAYLOAD_BYTES
from tests.conftest import Pki
from tests.e2e.conftest import Running
from tests.mqtt import MqttClient, Subscriber


def reading(sensor_id: str, seq: int) -> bytes:
    body = {"v": 1, "sensor_id": sensor_id, "ts": 1_764_345_600_000 + seq, "seq": seq}
    return json.dumps({**body, "temperature": 21.5}).encode()


def test_the_broker_ends_a_connection_that_sends_a_huge_message(
    pki: Pki,
    shared_broker: Mosquitto,
    subscribe: Callable[..., Subscriber],
    device_id: str,
) -> None:
    port = shared_broker.config.port
    witness = subscribe(port, topics=(f"sensors/{device_id}/data",))
    sender = MqttClient.open(port, pki.device(device_id), client_id=device_id)
    try:
        sender.client.publish(f"sensors/{device_id}/data", b"x" * (20 * 2**20), qos=1)
        sender.wait(lambda: sender.disconnected is not None, "the broker to end the connection")
    finally:
        sender.close()
    assert sender.disconnected in ("Packet too large", "Unspecified error"), sender.disconnected

    # The device itself is not shut out: a reading of a sane size goes through.
    again = MqttClient.open(port, pki.device(device_id), client_id=device_id)
    try:
        assert again.publish_all(f"sensors/{device_id}/data", [reading(device_id, 0)]) == [
            "Success"
        ]
    finally:
        again.close()
    got = witness.wait_readings(device_id, 1)
    assert [r["seq"] for r in got] == [0], "the huge message never reached a subscriber"


def test_an_oversize_payload_is_dead_lettered_as_a_bounded_prefix_and_a_hash(
    pki: Pki,
    shared_broker: Mosquitto,
    make_ingest_settings: Callable[..., IngestSettings],
    run_ingest: Callable[..., Running],
    device_id: str,
) -> None:
    """Bigger than a reading, small enough for the broker: ingest refuses it."""
    port = shared_broker.config.port
    settings = make_ingest_settings(port, share_group=None)
    running = run_ingest(settings)
    oversize = reading(device_id, 1)[:-1] + b" " * MAX_PAYLOAD_BYTES + b"}"
    assert MAX_PAYLOAD_BYTES < len(oversize) < MAX_PACKET_BYTES - 256
    sender = MqttClient.open(port, pki.device(device_id), client_id=device_id)
    try:
        assert sender.publish_all(f"sensors/{device_id}/data", [oversize]) == ["Success"]
    finally:
        sender.close()
    running.wait(lambda s: s.dead_lettered == 1)
    running.finish()

    (letter,) = list(read_dead_letters(settings.dead_letter))
    assert letter.reason == "oversize payload"
    assert letter.payload == oversize[:PAYLOAD_PREFIX_BYTES] and letter.truncated
    assert (letter.size, letter.sha256) == (len(oversize), hashlib.sha256(oversize).hexdigest())
