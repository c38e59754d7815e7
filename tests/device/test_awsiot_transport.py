"""The awsiotsdk (MQTT 5, awscrt) transport, end to end against the local Mosquitto.

Every test runs the real `device-agent --transport awsiot` as a child process, over mutual
TLS to 127.0.0.1, and looks at what a subscriber received.
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path

from cloud.identity.local_ca import LocalCA
from device.payload import parse_payload
from tests.conftest import Pki
from tests.mqtt import finish, start_agent


def agent_args(port: int, device_id: str, tls: list[str], tmp_path: Path, *extra: str) -> list[str]:
    return [
        "--id",
        device_id,
        "--transport",
        "awsiot",
        "--broker",
        f"mqtts://127.0.0.1:{port}",
        *tls,
        "--outbox",
        str(tmp_path / "outbox.sqlite"),
        *extra,
    ]


def test_fifty_readings_without_flow_control_arrive_in_order_as_payload_v1(
    shared_broker, subscribe, tls_args, device_id, tmp_path: Path
):
    port = shared_broker.config.port
    sub = subscribe(port)
    proc = start_agent(
        *agent_args(
            port,
            device_id,
            tls_args(device_id),
            tmp_path,
            "--no-flow-control",
            "--count",
            "50",
            "--interval",
            "0",
        )
    )
    code, out, err = finish(proc)
    assert code == 0, err
    assert f"{device_id}: published 50, acknowledged 50, buffered 0, dropped 0" in out

    sub.wait_readings(device_id, 50)
    topic = f"sensors/{device_id}/data"
    readings = [parse_payload(m.payload, device_id) for m in sub.messages if m.topic == topic]
    assert [r.seq for r in readings] == list(range(50))
    assert all(b.ts > a.ts for a, b in itertools.pairwise(readings))


def test_with_flow_control_on_everything_still_arrives(
    shared_broker, subscribe, tls_args, device_id, tmp_path: Path
):
    port = shared_broker.config.port
    sub = subscribe(port)
    proc = start_agent(
        *agent_args(
            port,
            device_id,
            tls_args(device_id),
            tmp_path,
            "--count",
            "5",
            "--interval",
            "0",
        )
    )
    code, out, err = finish(proc)
    assert code == 0, err
    assert "acknowledged 5, buffered 0" in out
    sub.wait_readings(device_id, 5)
    assert [r["seq"] for r in sub.readings(device_id)] == list(range(5))


def test_flow_control_on_keeps_to_aws_iot_cores_100_publishes_per_second(
    shared_broker, tls_args, device_id, tmp_path: Path
):
    port = shared_broker.config.port
    started = time.monotonic()
    proc = start_agent(
        *agent_args(
            port,
            device_id,
            tls_args(device_id),
            tmp_path,
            "--count",
            "300",
            "--interval",
            "0",
        )
    )
    code, out, err = finish(proc)
    elapsed = time.monotonic() - started
    assert code == 0, err
    assert "acknowledged 300, buffered 0" in out
    # A lower bound only (a slow machine is slower, never faster): even with the CRT's
    # token bucket full at the start, 300 publishes at 100/s take at least 2 s.
    assert elapsed >= 2.0, f"300 publishes in {elapsed:.2f}s: flow control is not on"


def test_qos0_readings_are_acknowledged_once_sent(
    shared_broker, subscribe, tls_args, device_id, tmp_path: Path
):
    port = shared_broker.config.port
    sub = subscribe(port)
    proc = start_agent(
        *agent_args(
            port,
            device_id,
            tls_args(device_id),
            tmp_path,
            "--qos",
            "0",
            "--count",
            "20",
            "--interval",
            "0",
        )
    )
    code, out, err = finish(proc)
    assert code == 0, err
    assert "acknowledged 20, buffered 0" in out
    sub.wait_readings(device_id, 20)


def test_retained_status_is_online_while_running_and_offline_after_a_clean_exit(
    shared_broker, subscribe, tls_args, device_id, tmp_path: Path
):
    port = shared_broker.config.port
    status = f"sensors/{device_id}/status"
    watcher = subscribe(port, topics=(status,))
    proc = start_agent(
        *agent_args(
            port,
            device_id,
            tls_args(device_id),
            tmp_path,
            "--count",
            "10",
            "--interval",
            "0.2",
        )
    )
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
    shared_broker, subscribe, tls_args, device_id, tmp_path: Path
):
    port = shared_broker.config.port
    sub = subscribe(port)
    # Mosquitto names the client by its certificate: "other-dev" may not write under
    # sensors/<device_id>/, and MQTT 5 says so with PUBACK reason NOT_AUTHORIZED.
    proc = start_agent(
        *agent_args(
            port,
            device_id,
            tls_args("other-dev"),
            tmp_path,
            "--count",
            "5",
            "--interval",
            "0",
        )
    )
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
    pki: Pki, shared_broker, device_id, tmp_path: Path
):
    ident = pki.device(device_id)
    wrong_ca = LocalCA.create(tmp_path / "wrong-ca")
    tls = ["--cert", str(ident.cert), "--key", str(ident.key), "--ca", str(wrong_ca.cert_path)]
    started = time.monotonic()
    proc = start_agent(
        *agent_args(
            shared_broker.config.port,
            device_id,
            tls,
            tmp_path,
            "--count",
            "1",
            "--interval",
            "0",
        )
    )
    code, _, err = finish(proc)
    assert code == 1, err
    assert "Traceback" not in err
    (error,) = [line for line in err.splitlines() if line.startswith("Error:")]
    assert "failed verification" in error and str(wrong_ca.cert_path) in error
    # awscrt's TLS holds a failed handshake back 10-30 s; the transport must not wait for it.
    assert time.monotonic() - started < 25


def test_broker_restarted_mid_run_the_client_reconnects_and_loses_nothing(
    start_broker, subscribe, tls_args, device_id, tmp_path: Path
):
    broker = start_broker()
    sub = subscribe(broker.config.port)
    proc = start_agent(
        *agent_args(
            broker.config.port,
            device_id,
            tls_args(device_id),
            tmp_path,
            "--no-flow-control",
            "--count",
            "300",
            "--interval",
            "0.005",
        )
    )
    sub.wait_readings(device_id, 30)
    broker.stop()
    broker.start()
    code, out, err = finish(proc)
    assert code == 0, err
    assert "acknowledged 300, buffered 0" in out
    sub.wait_readings(device_id, 300)
    assert sorted({r["seq"] for r in sub.readings(device_id)}) == list(range(300))
