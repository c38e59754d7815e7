"""The agent on a broker that speaks only MQTT 3.1.1 (NATS, tests/nats.py), and on
Mosquitto with 3.1.1 chosen: every reading delivered, across a broker restart."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from paho.mqtt.enums import MQTTProtocolVersion

from tests.mqtt import Subscriber, finish, start_agent


@pytest.fixture
def subscriber311(pki) -> Iterator[Callable[[int], Subscriber]]:
    subs: list[Subscriber] = []

    def make(port: int) -> Subscriber:
        name, ident = pki.reader()
        sub = Subscriber(
            port,
            ident,
            client_id=name,
            protocol=MQTTProtocolVersion.MQTTv311,
        )
        subs.append(sub)
        return sub.start()

    yield make
    for sub in subs:
        sub.stop()


def agent_args(device_id: str, port: int, tls: list[str], outbox: Path, *extra: str) -> list[str]:
    return [
        "--id",
        device_id,
        "--broker",
        f"mqtts://127.0.0.1:{port}",
        *tls,
        "--outbox",
        str(outbox),
        *extra,
    ]


def test_auto_falls_back_to_311_and_delivers_every_reading_across_a_broker_restart(
    nats, subscriber311, tls_args, device_id, tmp_path: Path
):
    sub = subscriber311(nats.mqtt_port)
    proc = start_agent(
        *agent_args(
            device_id,
            nats.mqtt_port,
            tls_args(device_id),
            tmp_path / "outbox.sqlite",
            "--count",
            "300",
            "--interval",
            "0.01",
        )
    )
    sub.wait_readings(device_id, 50)
    nats.kill()  # SIGKILL mid-run, then back on the same port and JetStream folder
    nats.start()
    code, out, err = finish(proc, timeout=120)
    assert code == 0, err
    assert f"{device_id}: published 300, acknowledged 300, buffered 0, dropped 0" in out
    assert "does not speak MQTT 5; using 3.1.1" in err
    assert "with MQTT 3.1.1" in err
    # At least once: a publish in flight at the kill may arrive twice, none is missing.
    got = sub.wait_readings(device_id, 300, timeout=60)
    assert {r["seq"] for r in got} == set(range(300))


def test_mqtt_version_5_on_a_311_broker_says_why_it_cannot_connect(
    nats, tls_args, device_id, tmp_path: Path
):
    proc = start_agent(
        *agent_args(
            device_id,
            nats.mqtt_port,
            tls_args(device_id),
            tmp_path / "outbox.sqlite",
            "--count",
            "1",
            "--mqtt-version",
            "5",
        )
    )
    code, out, err = finish(proc)
    assert code == 1, err
    assert "Traceback" not in err
    line = err.strip().splitlines()[-1]
    assert line.startswith("Error: broker mqtts://127.0.0.1:"), line
    assert "does not speak MQTT 5 (use --mqtt-version 3.1.1 or auto)" in line, line
    assert f"{device_id}: published 0, acknowledged 0, buffered 1" in out


def test_mqtt_311_chosen_on_mosquitto(shared_broker, subscribe, tls_args, device_id, tmp_path):
    sub = subscribe(shared_broker.config.port)
    proc = start_agent(
        *agent_args(
            device_id,
            shared_broker.config.port,
            tls_args(device_id),
            tmp_path / "outbox.sqlite",
            "--count",
            "20",
            "--interval",
            "0",
            "--mqtt-version",
            "3.1.1",
        )
    )
    code, out, err = finish(proc)
    assert code == 0, err
    assert "with MQTT 3.1.1" in err
    assert f"{device_id}: published 20, acknowledged 20, buffered 0" in out
    assert sorted(r["seq"] for r in sub.wait_readings(device_id, 20)) == list(range(20))
