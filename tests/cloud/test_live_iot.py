"""The dashboard's live stream on AWS (cloud.live.iot): IoT Core over WebSockets, signed
with the user's AWS credentials. Nothing here is IoT Core: what is tested is what a user
sees when it cannot be reached (the reason, on the page's banner, and retries), and the
stream through a stand-in endpoint (tests/iot_endpoint.py) that checks the handshake's
signature and relays the MQTT to a real Mosquitto."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

from cloud.identity.local_ca import Identity
from cloud.live.events import LiveEvent
from cloud.live.iot import IotLiveStream
from cloud.local.ports import free_port
from device.payload import Reading
from tests.conftest import BrokerFactory, Pki
from tests.iot_endpoint import iot_endpoint
from tests.mqtt import MqttClient


def test_an_unreachable_iot_endpoint_is_reported_and_retried(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Signing needs credentials; none of these leave the machine.
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "example")
    port = free_port()  # nothing listens there
    states: list[str | None] = []
    two = threading.Event()

    def on_state(problem: str | None) -> None:
        states.append(problem)
        if len(states) >= 2:
            two.set()

    stream = IotLiveStream(
        "127.0.0.1", "us-east-1", "dashboard", lambda e: None, on_state, port=port
    )
    stream.start()
    try:
        assert two.wait(20), f"two failed attempts reported; got {states}"
    finally:
        stream.stop()
    assert all(
        s is not None
        and s.startswith(f"cannot connect to IoT Core at wss://127.0.0.1:{port} (")
        and s.endswith("); retrying")
        for s in states[:2]
    ), states


class Events:
    """What a stream handed its user, awaited as it comes."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.events: list[LiveEvent] = []
        self.states: list[str | None] = []

    def on_event(self, event: LiveEvent) -> None:
        with self._cond:
            self.events.append(event)
            self._cond.notify_all()

    def on_state(self, problem: str | None) -> None:
        with self._cond:
            self.states.append(problem)
            self._cond.notify_all()

    def wait(self, predicate: Callable[[], bool], what: str, timeout: float = 20) -> None:
        with self._cond:
            assert self._cond.wait_for(predicate, timeout), (
                f"timed out waiting for {what}: {self.states}, {self.events}"
            )


def test_the_stream_reads_the_fleet_through_a_signed_websocket_and_comes_back(
    monkeypatch: pytest.MonkeyPatch, start_broker: BrokerFactory, pki: Pki, device_id: str
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "example")
    broker = start_broker()
    device = MqttClient.open(broker.config.port, pki.device(device_id), device_id)
    device.client.publish(
        f"sensors/{device_id}/status", b"online", qos=1, retain=True
    ).wait_for_publish(10)
    seen = Events()
    server = Identity(pki.server.cert, pki.server.key, pki.ca.cert_path)
    with iot_endpoint(free_port(), server, broker.config.port, pki.device("dashboard")) as iot:
        stream = IotLiveStream(
            "127.0.0.1", "eu-west-1", "dashboard", seen.on_event, seen.on_state,
            port=iot.port, ca=pki.ca.cert_path,
        )  # fmt: skip
        stream.start()
        try:
            # Subscribed: the page's banner clears, and the broker's retained status arrives.
            seen.wait(lambda: None in seen.states, "the subscriptions confirmed")
            seen.wait(
                lambda: any(e.kind == "status" and e.retained for e in seen.events),
                "the retained status",
            )
            reading = Reading(device_id, 1_780_000_000_000, 0, 4.5)
            device.publish(reading.topic, reading.to_payload())
            seen.wait(lambda: any(e.kind == "reading" for e in seen.events), "the reading")
            got = [e for e in seen.events if e.kind == "reading"]
            assert [(e.sensor_id, e.reading) for e in got] == [(device_id, reading)]
            status = next(e for e in seen.events if e.kind == "status")
            assert (status.sensor_id, status.status) == (device_id, "online")
            # Signed with the user's credentials, for the region asked.
            credential = iot.handshakes[0]["X-Amz-Credential"][0]
            assert (
                credential.startswith("AKIAEXAMPLE/")
                and "/eu-west-1/iotdevicegateway/" in credential
            )

            # The endpoint goes away: said on the banner; back: the stream resumes itself.
            iot.stop()
            seen.wait(
                lambda: any(
                    s and s.startswith("lost IoT Core at wss://127.0.0.1:") for s in seen.states
                ),
                "the loss reported",
            )
            lost_at = len(seen.states)
            iot.start()
            seen.wait(lambda: None in seen.states[lost_at:], "the stream back", timeout=30)
            later = Reading(device_id, 1_780_000_001_000, 1, 4.6)
            device.publish(later.topic, later.to_payload())
            seen.wait(
                lambda: any(e.kind == "reading" and e.reading == later for e in seen.events),
                "a reading after the return",
            )
        finally:
            stream.stop()
            device.close()
