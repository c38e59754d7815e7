"""The awsiotsdk (MQTT 5, awscrt) transport, end to end against the local Mosquitto.

Every test runs the real `device-agent --transport awsiot` as a child process, over mutual
TLS to 127.0.0.1, and looks at what a subscriber received.
"""

from __future__ import annotations

import itertools
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from cloud.identity.local_ca import LocalCA
from device.payload import parse_payload
from tests.conftest import Pki
from tests.mqtt import finish, start_agent

AwsiotAgent = Callable[..., subprocess.Popen[str]]


@pytest.fixture
def awsiot_agent(
    tls_args: Callable[[str], list[str]], device_id: str, tmp_path: Path
) -> AwsiotAgent:
    """Start `device-agent --transport awsiot` as this test's device, to a broker port,
    with `--count N --interval SECONDS` and any other flags; `tls` replaces the device's
    own `--cert --key --ca`."""

    def start(
        port: int, count: int, interval: str, *extra: str, tls: list[str] | None = None
    ) -> subprocess.Popen[str]:
        return start_agent(
            "--id",
            device_id,
            "--transport",
            "awsiot",
            "--broker",
            f"mqtts://127.0.0.1:{port}",
            *(tls_args(device_id) if tls is None else tls),
            "--outbox",
            str(tmp_path / "outbox.sqlite"),
            "--count",
            str(count),
            "--interval",
            interval,
            *extra,
        )

    return start


def test_fifty_readings_without_flow_control_arrive_in_order_as_payload_v1(
    shared_broker, subscribe, awsiot_agent, device_id
):
    port = shared_broker.config.port
    sub = subscribe(port)
    proc = awsiot_agent(port, 50, "0", "--no-flow-control")
    code, out, err = finish(proc)
    assert code == 0, err
    assert f"{device_id}: published 50, acknowledged 50, buffered 0, dropped 0" in out

    sub.wait_readings(device_id, 50)
    topic = f"sensors/{device_id}/data"
    readings = [parse_payload(m.payload, device_id) for m in sub.messages if m.topic == topic]
    assert [r.seq for r in readings] == list(range(50))
    assert all(b.ts > a.ts for a, b in itertools.pairwise(readings))


def test_with_flow_control_on_everything_still_arrives(
    shared_broker, subscribe, awsiot_agent, device_id
):
    port = shared_broker.config.port
    sub = subscribe(port)
    proc = awsiot_agent(port, 5, "0")
    code, out, err = finish(proc)
    assert code == 0, err
    assert "acknowledged 5, buffered 0" in out
    sub.wait_readings(device_id, 5)
    assert [r["seq"] for r in sub.readings(device_id)] == list(range(5))


def test_flow_control_on_keeps_to_aws_iot_cores_100_publishes_per_second(
    shared_broker, awsiot_agent, device_id
):
    port = shared_broker.config.port
    started = time.monotonic()
    proc = awsiot_agent(port, 300, "0")
    code, out, err = finish(proc)
    elapsed = time.monotonic() - started
    assert code == 0, err
    assert "acknowledged 300, buffered 0" in out
    # A lower bound only (a slow machine is slower, never faster): even with the CRT's
    # token bucket full at the start, 300 publishes at 100/s take at least 2 s.
    assert elapsed >= 2.0, f"300 publishes in {elapsed:.2f}s: flow control is not on"


def test_qos0_readings_are_acknowledged_once_sent(
    shared_broker, subscribe, awsiot_agent, device_id
):
    port = shared_broker.config.port
    sub = subscribe(port)
    proc = awsiot_agent(port, 20, "0", "--qos", "0")
    code, out, err = finish(proc)
    assert code == 0, err
    assert "acknowledged 20, buffered 0" in out
    sub.wait_readings(device_id, 20)


def test_retained_status_is_online_while_running_and_offline_after_a_clean_exit(
    shared_broker, subscribe, awsiot_agent, device_id
):
    port = shared_broker.config.port
    status = f"sensors/{device_id}/status"
    watcher = subscribe(port, topics=(status,))
    proc = awsiot_agent(port, 10, "0.2")
    watcher.wait_for(lambda ms: any(m.payload == b"online" for m in ms))
    assert proc.poll() is None, "online must be published while the agent runs"

    code, _, err = finish(proc)
    assert code == 0, err
    watcher.wait_for(lambda ms: len(ms) >= 2)

    late = subscribe(port, topics=(status,))
    (retained,) = late.wait_for(lambda ms: len(ms) >= 1)
    assert (retained.topic, retained.payload, retained.retain) == (status, b"offline", True)
    # A clean DISCONNECT: the broker must not have sent the will on top of our `offline`.
    assert [m.payload for m in watcher.messages] == [b"online", b"offline"]


def test_publish_refused_by_the_acl_stops_the_agent_with_one_clear_line(
    shared_broker, subscribe, awsiot_agent, tls_args, device_id
):
    port = shared_broker.config.port
    sub = subscribe(port)
    # Mosquitto names the client by its certificate: "other-dev" may not write under
    # sensors/<device_id>/, and MQTT 5 says so with PUBACK reason NOT_AUTHORIZED.
    proc = awsiot_agent(port, 5, "0", tls=tls_args("other-dev"))
    code, _, err = finish(proc)
    assert code == 1, err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, err
    assert "NOT_AUTHORIZED" in errors[0] or "Not authorized" in errors[0]
    assert f"sensors/{device_id}/data" in errors[0]

    time.sleep(0.5)  # nothing announces a message that never comes
    assert sub.readings(device_id) == []


def test_broker_certificate_from_another_ca_is_fatal_not_retried(
    pki: Pki, shared_broker, awsiot_agent, device_id, tmp_path: Path
):
    ident = pki.device(device_id)
    wrong_ca = LocalCA.create(tmp_path / "wrong-ca")
    tls = ["--cert", str(ident.cert), "--key", str(ident.key), "--ca", str(wrong_ca.cert_path)]
    started = time.monotonic()
    proc = awsiot_agent(shared_broker.config.port, 1, "0", tls=tls)
    code, _, err = finish(proc)
    assert code == 1, err
    assert "Traceback" not in err
    (error,) = [line for line in err.splitlines() if line.startswith("Error:")]
    assert "failed verification" in error and str(wrong_ca.cert_path) in error
    # awscrt's TLS holds a failed handshake back 10-30 s; the transport must not wait for it.
    assert time.monotonic() - started < 25


def test_broker_restarted_mid_run_the_client_reconnects_and_loses_nothing(
    start_broker, subscribe, awsiot_agent, device_id
):
    broker = start_broker()
    sub = subscribe(broker.config.port)
    proc = awsiot_agent(broker.config.port, 300, "0.005", "--no-flow-control")
    sub.wait_readings(device_id, 30)
    broker.stop()
    broker.start()
    code, out, err = finish(proc)
    assert code == 0, err
    assert "acknowledged 300, buffered 0" in out
    sub.wait_readings(device_id, 300)
    assert sorted({r["seq"] for r in sub.readings(device_id)}) == list(range(300))
