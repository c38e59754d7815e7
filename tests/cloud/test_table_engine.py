"""The local stack's table engine (dynalite, cloud/local/dynalite/serve.js) as a process of
its own: a client that dies in the middle of a request must not take it down."""

from __future__ import annotations

import socket
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from cloud.aws import Endpoint
from cloud.local import table_engine
from cloud.local.ports import free_port, wait_listening
from cloud.table import create_table
from tests.mqtt import wait_until


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[tuple[Endpoint, subprocess.Popen[str], Path]]:
    port = free_port()
    log = tmp_path / "table.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            table_engine.command(port, tmp_path / "data"), stdout=out, stderr=out, text=True
        )
    try:
        wait_listening(port, proc, "table engine", str(log), timeout=30)
        yield Endpoint.local(port), proc, log
    finally:
        proc.terminate()
        proc.wait(10)


def test_a_client_dying_mid_request_leaves_the_engine_serving(
    engine: tuple[Endpoint, subprocess.Popen[str], Path],
) -> None:
    endpoint, proc, log = engine
    ddb = endpoint.client("dynamodb")
    create_table(ddb, "SensorData")
    port = int((endpoint.url or "").rsplit(":", 1)[1])
    # A request that announces 1,000 bytes of body, sends 20 and is reset (SO_LINGER 0),
    # as a killed ingest's would be.
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(
            b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-amz-json-1.0\r\n"
            b"X-Amz-Target: DynamoDB_20120810.PutItem\r\nContent-Length: 1000\r\n\r\n"
            b'{"TableName": "Sens'
        )
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    # The engine notices the reset on its own time, perhaps after serving another client's
    # request: wait for its word before asking it anything.
    wait_until(
        lambda: "a client went away mid-request" in log.read_text() or proc.poll() is not None,
        15,
        "the engine to log the dropped request",
    )
    assert proc.poll() is None, log.read_text()
    assert "a client went away mid-request" in log.read_text()
    assert ddb.describe_table(TableName="SensorData")["Table"]["TableStatus"] == "ACTIVE"
