"""Only the cloud sets a device's configuration: a device cannot write its own or another
device's desired config (MQTT 5 says "Not authorized", and nothing is retained), cannot
read another device's, and a reader identity (ingest's kind) can set it. The broker's ACL
goes by certificate name (cloud.local.mosquitto.acl_text)."""

from __future__ import annotations

from collections.abc import Callable

from cloud.local.mosquitto import Mosquitto
from device.payload import Desired, config_desired_topic, encode_desired, parse_desired
from tests.conftest import Pki
from tests.mqtt import MqttClient, Subscriber

FORGED = encode_desired(Desired(99, {"interval": 0.001}))


def retained_on(pki: Pki, port: int, topic: str, probe: str) -> list[bytes]:
    """The retained messages a new reader gets on `topic`: those come right after its
    SUBACK, so once its own later `probe` message is back, all of them are in."""
    name, ident = pki.reader()
    reader = MqttClient.open(port, ident, client_id=name)
    try:
        reader.subscribe(topic, probe)
        assert reader.publish_all(probe, [b"probe"]) == ["Success"]
        reader.wait(lambda: (probe, b"probe") in reader.received(), "the probe")
        return [m.payload for m in reader.messages if m.topic == topic and m.retain]
    finally:
        reader.close()


def test_a_device_cannot_set_its_own_or_another_devices_config(
    pki: Pki, shared_broker: Mosquitto, subscribe: Callable[..., Subscriber], device_id: str
) -> None:
    port = shared_broker.config.port
    victim, mallory = f"{device_id}-victim", f"{device_id}-mallory"
    # These two devices' topics only: the shared broker retains other tests' configs.
    witness = subscribe(port, topics=(config_desired_topic(victim), config_desired_topic(mallory)))
    intruder = MqttClient.open(port, pki.device(mallory), client_id=mallory)
    try:
        answers = []
        for target in (victim, mallory):
            info = intruder.client.publish(config_desired_topic(target), FORGED, qos=1, retain=True)
            intruder.wait(lambda mid=info.mid: mid in intruder.acks, "the PUBACK")
            answers.append(intruder.acks[info.mid])
    finally:
        intruder.close()
    assert answers == ["Not authorized", "Not authorized"]  # PUBACK reason 0x87

    for target in (victim, mallory):
        probe = f"sensors/{target}/receipt"  # a topic readers may write
        assert retained_on(pki, port, config_desired_topic(target), probe) == []
    # The genuine article, from a reader identity, is taken and kept.
    genuine = encode_desired(Desired(1, {"interval": 2.0}))
    info = witness.mqtt.client.publish(config_desired_topic(victim), genuine, qos=1, retain=True)
    witness.mqtt.wait(lambda: info.mid in witness.mqtt.acks, "the PUBACK")
    assert witness.mqtt.acks[info.mid] == "Success"
    witness.wait_for(lambda ms: len(ms) >= 1)
    assert [(m.topic, m.payload) for m in witness.messages] == [
        (config_desired_topic(victim), genuine)
    ], "nothing of mallory's reached a subscriber"
    kept = retained_on(pki, port, config_desired_topic(victim), f"sensors/{victim}/receipt")
    assert [parse_desired(p).version for p in kept] == [1]


def test_a_device_cannot_read_another_devices_config(
    pki: Pki, shared_broker: Mosquitto, subscribe: Callable[..., Subscriber], device_id: str
) -> None:
    port = shared_broker.config.port
    victim, mallory = f"{device_id}-victim", f"{device_id}-mallory"
    cloud = subscribe(port, topics=(f"sensors/{mallory}/receipt",))
    spy = MqttClient.open(port, pki.device(mallory), client_id=mallory)
    try:
        subacks = spy.subscribe(
            config_desired_topic(victim), "sensors/+/config/desired", config_desired_topic(mallory)
        )
        for target in (victim, mallory):  # the victim's first: it would arrive first
            info = cloud.mqtt.client.publish(
                config_desired_topic(target), encode_desired(Desired(1, {"qos": 0})), 1, True
            )
            info.wait_for_publish(10)
        # The spy's own desired config does reach it: its subscriptions work.
        spy.wait(lambda: any(t == config_desired_topic(mallory) for t, _ in spy.received()), "own")
        leaked = [t for t, _ in spy.received() if not t.startswith(f"sensors/{mallory}/")]
    finally:
        spy.close()
    assert leaked == [], f"mallory read another device's config (SUBACKs: {subacks})"
