"""Readings reach the broker well-formed, in order, on the device's own topic."""

from __future__ import annotations

import itertools
from pathlib import Path

from device.payload import parse_payload
from tests.mqtt import finish, start_agent


def test_fifty_readings_arrive_as_payload_v1_in_order(
    tls_args, shared_broker, subscribe, device_id, tmp_path: Path
):
    sub = subscribe(shared_broker.config.port)
    proc = start_agent(
        "--id",
        device_id,
        "--broker",
        f"mqtts://127.0.0.1:{shared_broker.config.port}",
        *tls_args(device_id),
        "--count",
        "50",
        "--interval",
        "0",
        "--outbox",
        str(tmp_path / "outbox.sqlite"),
    )
    code, out, err = finish(proc)
    assert code == 0, err
    assert " ERROR " not in err, "a clean run logs no error"
    assert (
        f"{device_id}: published 50, acknowledged 50, buffered 0, dropped 0, read errors 0" in out
    )

    got = sub.wait_readings(device_id, 50)
    readings = [
        parse_payload(m.payload, device_id)
        for m in sub.messages
        if m.topic == f"sensors/{device_id}/data"
    ]
    assert [r.seq for r in readings] == list(range(50))
    assert all(b.ts > a.ts for a, b in itertools.pairwise(readings))
    assert set(got[0]) == {"v", "sensor_id", "ts", "seq", "temperature"}
    assert got[0]["v"] == 1 and got[0]["sensor_id"] == device_id
