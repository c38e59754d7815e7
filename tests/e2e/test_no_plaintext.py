"""The local stack's broker has no plaintext listener unless asked for one: its default
config has exactly one listener, on loopback, with client certificates required; the
running broker listens on that one socket only; and plain MQTT to it gets no session."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path

import psutil

from cloud.cli.local import local_up
from cloud.local import stack
from cloud.local.mosquitto import Mosquitto, MosquittoConfig
from cloud.local.ports import free_port, is_listening
from tests.conftest import Pki
from tests.e2e.mqtt_raw import attempt
from tests.mqtt import MqttClient, wait_until


def listeners(conf: str) -> list[str]:
    return [ln for ln in conf.splitlines() if ln.split(" ", 1)[0] == "listener"]


def test_default_config_has_one_tls_listener_that_requires_certificates(
    pki: Pki, tmp_path: Path
) -> None:
    # `cloud local up` asks for no plaintext port unless --plaintext-port is given.
    assert local_up.make_context("up", []).params["plaintext_port"] is None
    assert inspect.signature(stack.up).parameters["plaintext_port"].default is None

    config = MosquittoConfig(tmp_path, 8883, pki.ca.cert_path, pki.server.cert, pki.server.key)
    conf = config.render()
    assert listeners(conf) == ["listener 8883 127.0.0.1"]
    after = conf.split("listener 8883 127.0.0.1", 1)[1].splitlines()
    for line in (
        f"cafile {pki.ca.cert_path}",
        "require_certificate true",
        "use_identity_as_username true",
    ):
        assert line in after, f"{line!r} missing from the listener's settings"
    assert "allow_anonymous false" in conf.splitlines()
    # The check above can fail: asking for a plaintext port shows up as a second listener.
    with_plain = MosquittoConfig(
        tmp_path, 8883, pki.ca.cert_path, pki.server.cert, pki.server.key, plaintext_port=1884
    )
    assert len(listeners(with_plain.render())) == 2


def test_running_broker_listens_only_on_its_tls_port_and_refuses_plain_mqtt(
    start_broker: Callable[..., Mosquitto], subscribe: Callable[..., object]
) -> None:
    broker = start_broker()  # the default config, as `cloud local up` writes it
    port = broker.config.port
    assert broker.pid is not None
    sockets = psutil.Process(broker.pid).net_connections(kind="inet")
    listening = {(c.laddr.ip, c.laddr.port) for c in sockets if c.status == psutil.CONN_LISTEN}
    assert listening == {("127.0.0.1", port)}

    plain = attempt(port, None, "plain-client", "sensors/plain-client/data", b"hello")
    assert plain.connack is None, f"plain MQTT got a CONNACK ({plain.connack})"
    assert plain.refusal, plain
    assert "New client connected" not in broker.config.log_path.read_text()


def test_an_asked_for_plaintext_listener_lets_anonymous_clients_read_readings_only(
    start_broker: Callable[..., Mosquitto], pki: Pki, device_id: str
) -> None:
    """--plaintext-port is for a dashboard or a legacy subscriber on this machine: it may
    read readings and statuses, and publish nothing (it has no identity to publish as)."""
    plain_port = free_port()
    broker = start_broker(plaintext_port=plain_port)
    wait_until(lambda: is_listening(plain_port), what="the plaintext listener")
    # No identity: plain MQTT, anonymous, as a dashboard would connect.
    reader = MqttClient.open(plain_port, None, "dashboard")
    try:
        reader.subscribe("sensors/+/data")  # waits for the SUBACK on the plaintext listener
        sender = MqttClient.open(broker.config.port, pki.device(device_id), client_id=device_id)
        try:
            assert sender.publish_all(f"sensors/{device_id}/data", [b"reading"]) == ["Success"]
        finally:
            sender.close()
        reader.wait(lambda: bool(reader.messages), "the reading to reach the plaintext reader")
        pubacks = reader.publish_all(f"sensors/{device_id}/data", [b"forged"])
    finally:
        reader.close()
    assert pubacks == ["Not authorized"]
    got = reader.received()
    assert got == [(f"sensors/{device_id}/data", b"reading")], "the forged one never came back"
