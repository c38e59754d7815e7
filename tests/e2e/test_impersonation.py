"""A device with a valid certificate of its own (mallory) cannot publish as another device
(the victim), whatever client id it picks, and cannot read other devices' readings. What
counts is what subscribers receive: the broker's ACL goes by certificate name."""

from __future__ import annotations

import json
from collections.abc import Callable

from cloud.local.mosquitto import Mosquitto
from device.payload import encode_receipt
from tests.conftest import Pki
from tests.e2e.conftest import Agents, summary_line
from tests.mqtt import MqttClient, Subscriber

READINGS = 30


def forged(victim: str, seq: int) -> bytes:
    body = {"v": 1, "sensor_id": victim, "ts": 1_000 + seq, "seq": seq, "temperature": -99.0}
    return json.dumps(body).encode()


def test_a_device_cannot_publish_as_another_even_with_its_client_id(
    pki: Pki,
    shared_broker: Mosquitto,
    subscribe: Callable[..., Subscriber],
    agents: Agents,
    device_id: str,
) -> None:
    port = shared_broker.config.port
    victim, mallory = f"{device_id}-victim", f"{device_id}-mallory"
    witness = subscribe(port, topics=(f"sensors/{victim}/#",))
    agent = agents.one(victim, port, "--count", str(READINGS), "--interval", "0.05")
    witness.wait_readings(victim, 5)

    # Mallory takes the victim's client id (the broker hands it the victim's session) and
    # publishes readings and a retained status under the victim's topics.
    intruder = MqttClient.open(port, pki.device(mallory), client_id=victim)
    try:
        data = intruder.publish_all(
            f"sensors/{victim}/data", [forged(victim, 10_000 + n) for n in range(5)]
        )
        info = intruder.client.publish(f"sensors/{victim}/status", b"spoofed", qos=1, retain=True)
        intruder.wait(lambda: info.mid in intruder.acks, "the status PUBACK")
        status = intruder.acks[info.mid]
    finally:
        intruder.close()
    # MQTT 5 tells the publisher; MQTT 3.1.1 would have said "success" and dropped it.
    assert set(data) == {"Not authorized"} and status == "Not authorized"

    assert agent.wait(60) == 0, agent.err()[-3000:]
    assert f"acknowledged {READINGS}, buffered 0" in summary_line(agent.out(), victim)
    witness.wait_readings(victim, READINGS)
    seqs = sorted(r["seq"] for r in witness.readings(victim))
    assert sorted(set(seqs)) == list(range(READINGS)), "only the victim's own readings"
    assert all(r["temperature"] != -99.0 for r in witness.readings(victim))
    assert not [m for m in witness.messages if m.payload == b"spoofed"]
    # A newcomer gets the victim's own retained status, not mallory's.
    late = subscribe(port, topics=(f"sensors/{victim}/status",))
    late.wait_for(lambda ms: any(m.retain for m in ms), timeout=10)
    assert [m.payload for m in late.messages if m.retain] == [b"offline"]


def test_a_device_cannot_read_other_devices_readings(
    pki: Pki,
    shared_broker: Mosquitto,
    agents: Agents,
    subscribe: Callable[..., Subscriber],
    device_id: str,
) -> None:
    port = shared_broker.config.port
    victim, mallory = f"{device_id}-victim", f"{device_id}-mallory"
    spy = MqttClient.open(port, pki.device(mallory), client_id=mallory)
    try:
        subacks = spy.subscribe(
            "sensors/+/data", f"sensors/{victim}/data", f"sensors/{victim}/#", "sensors/#", "#"
        )
        witness = subscribe(port, topics=(f"sensors/{victim}/data",))
        agent = agents.one(victim, port, "--count", "20", "--interval", "0")
        assert agent.wait(60) == 0, agent.err()[-3000:]
        witness.wait_readings(victim, 20)  # the victim's readings were there to be read

        # The spy's own reading does reach it: its subscriptions work, for its own topic.
        assert spy.publish_all(f"sensors/{mallory}/data", [b"mine"]) == ["Success"]
        spy.wait(lambda: (f"sensors/{mallory}/data", b"mine") in spy.received(), "its own")
        leaked = [t for t, _ in spy.received() if not t.startswith(f"sensors/{mallory}/")]
    finally:
        spy.close()
    assert leaked == [], f"mallory read other devices' topics (SUBACKs: {subacks})"


def test_a_device_cannot_forge_receipts_for_itself_or_another(
    pki: Pki,
    shared_broker: Mosquitto,
    subscribe: Callable[..., Subscriber],
    device_id: str,
) -> None:
    """A receipt makes a device forget readings: only ingest may send one."""
    port = shared_broker.config.port
    victim, mallory = f"{device_id}-victim", f"{device_id}-mallory"
    witness = subscribe(port, topics=("sensors/+/receipt",))
    forged_receipt = encode_receipt([(0, 1_000)])
    intruder = MqttClient.open(port, pki.device(mallory), client_id=mallory)
    try:
        refused = intruder.publish_all(f"sensors/{victim}/receipt", [forged_receipt])
        refused += intruder.publish_all(f"sensors/{mallory}/receipt", [forged_receipt])
        # Its readings still go through: the refusals are about receipts, not the device.
        own = intruder.publish_all(f"sensors/{mallory}/data", [b"mine"])
        assert own in (["Success"], ["No matching subscribers"]), own
    finally:
        intruder.close()
    assert refused == ["Not authorized", "Not authorized"]
    # The genuine article, from the ingest identity, does reach the victim's topic.
    witness.publish(f"sensors/{victim}/receipt", encode_receipt([(0, 1_000)]))
    witness.wait_for(lambda ms: len(ms) >= 1)
    assert [m.topic for m in witness.messages] == [f"sensors/{victim}/receipt"]


def test_a_device_cannot_take_over_ingests_session_and_the_readings_queued_in_it(
    pki: Pki, shared_broker: Mosquitto, device_id: str
) -> None:
    """With ingest away, its session holds the readings queued for it. A device that
    connects with ingest's client id gets a session of its own (the broker names a client
    by its certificate), so ingest, back, receives every reading."""
    port = shared_broker.config.port
    name, ident = pki.reader()
    Subscriber(port, ident, client_id=name).start().stop()  # subscribed, now away
    sender = MqttClient.open(port, pki.device(device_id), client_id=device_id)
    try:
        readings = [forged(device_id, n) for n in range(8)]
        assert sender.publish_all(f"sensors/{device_id}/data", readings) == ["Success"] * 8
    finally:
        sender.close()

    # clean start: had the broker handed mallory ingest's session, it would be discarded.
    intruder = MqttClient.open(port, pki.device(f"{device_id}-mallory"), client_id=name)
    intruder.close()

    back = Subscriber(port, ident, client_id=name).start()
    try:
        got = back.wait_readings(device_id, 8, timeout=15)
    finally:
        back.stop()
    assert sorted(r["seq"] for r in got) == list(range(8))
