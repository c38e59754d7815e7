"""Helpers of the fleet tests (test_fleet_config.py, test_devices.py): `cloud` commands
run in-process against a test broker and moto's table, and retained messages published as
the device itself would (its own certificate, so the broker's ACL applies)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from cloud.aws import Endpoint
from cloud.cli import fleet as fleet_cli
from cloud.cli import main as cloud_main
from cloud.identity.local_ca import certs_dir
from cloud.local.mosquitto import FLEET_IDENTITY, Mosquitto
from cloud.local.state import StackState
from cloud.target import Target
from tests.conftest import Pki
from tests.mqtt import MqttClient

Cloud = Callable[..., Result]


def local_target(
    broker: Mosquitto,
    aws: Endpoint,
    table: str,
    pki: Pki,
    root: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Cloud:
    """`cloud ...` in-process, its target a local stack made of this broker and table.

    The stack's fleet certificate is the test CA's, as the stack's own CA would have issued
    it; only the target's resolution is replaced, not what a command does.
    """
    target = stack_target(broker.config.port, aws, table, pki, root, FLEET_IDENTITY)
    monkeypatch.setattr(fleet_cli.targets, "resolve", lambda *_: target)

    def cloud(*args: str) -> Result:
        return CliRunner().invoke(cloud_main, list(args), catch_exceptions=False)

    return cloud


def stack_target(
    broker_port: int, aws: Endpoint, table: str, pki: Pki, root: Path, identity: str
) -> Target:
    """A local stack in `root` made of a test broker and moto's table, with `identity`'s
    certificate (the test CA's) where the stack's own CA would have issued it."""
    ident = pki.device(identity)
    folder = certs_dir(root) / identity
    folder.mkdir(parents=True, exist_ok=True)
    for path in (ident.cert, ident.key, ident.ca):
        shutil.copy2(path, folder / path.name)
    table_port = int((aws.url or "").rsplit(":", 1)[1])
    state = StackState(
        root=str(root), mqtt_port=broker_port, table_port=table_port, data_dir=str(root / "data")
    )
    return Target("local", state.endpoint, table, state, "test")


def retain(broker: Mosquitto, pki: Pki, device_id: str, what: str, body: Any) -> None:
    """Publish `body` retained on sensors/<device_id>/<what> as the device."""
    payload = body if isinstance(body, bytes) else json.dumps(body).encode()
    client = MqttClient.open(broker.config.port, pki.device(device_id), f"{device_id}-t")
    try:
        info = client.client.publish(f"sensors/{device_id}/{what}", payload, qos=1, retain=True)
        client.wait(lambda: info.mid in client.acks, "a PUBACK")
        assert client.acks[info.mid] in ("Success", "No matching subscribers"), client.acks
    finally:
        client.close()


def retained(broker: Mosquitto, pki: Pki, topic: str) -> list[bytes]:
    """The retained message on `topic` (none: []), as a reader subscribing gets it.

    To know the broker has sent it, the reader also subscribes to a marker topic and
    publishes there: Mosquitto delivers the retained messages first.
    """
    name, ident = pki.reader()
    marker = f"sensors/{name}/receipt"
    client = MqttClient.open(broker.config.port, ident, name)
    try:
        client.subscribe(topic, marker)
        client.publish(marker, b"marker")
        client.wait(lambda: any(m.topic == marker for m in client.messages), "the marker")
        return [m.payload for m in client.messages if m.topic == topic and m.payload]
    finally:
        client.close()
