"""`cloud revoke --target local`: the local CA's CRL, and a real Mosquitto that applies it.

What a user sees is checked: a device that connected before its revocation cannot connect
after it, its open connection ends, and every other device still connects (a broken or
expired CRL would lock everyone out and make a naive test pass).
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509

from cloud.errors import CertificateError
from cloud.identity.local_ca import Identity, LocalCA
from cloud.identity.revocation import (
    crl_path,
    ensure_crl,
    reload_broker,
    restart_broker,
    revoke_device_local,
    revoked_serials,
)
from cloud.local.identities import device_identity
from cloud.local.ports import free_port
from cloud.local.state import StackState, running_state, state_dir
from tests.conftest import BrokerFactory, Pki
from tests.mqtt import REPO, MqttClient, wait_until


def serial(ident: Identity) -> int:
    return x509.load_pem_x509_certificate(ident.cert.read_bytes()).serial_number


@pytest.fixture
def devices() -> Iterator[list[MqttClient]]:
    """Device clients of one CONNECT each (no reconnect): its outcome is what a test asks."""
    made: list[MqttClient] = []
    yield made
    for device in made:
        device.close()


@pytest.fixture
def root(pki: Pki, tmp_path: Path) -> Path:
    """A project folder whose local CA is the session's test CA, so the fixtures' brokers
    trust the device certificates `cloud.local.stack` issues in it."""
    shutil.copytree(pki.ca.folder, tmp_path / "certs" / "local-ca")
    return tmp_path


def connects(devices: list[MqttClient], port: int, ident: Identity) -> bool:
    """Whether the broker lets this identity in (a fresh client id each time)."""
    device = MqttClient(port, ident, f"c{len(devices)}-{ident.cert.parent.name}")
    devices.append(device)
    return device.connect()


def dropped(device: MqttClient) -> bool:
    """Whether the broker ended this open connection (within 10 s)."""
    return device.until(lambda: device.disconnected is not None, 10)


def test_crl_lists_each_revoked_serial_once_and_outlives_the_ca(root: Path):
    ca = x509.load_pem_x509_certificate((root / "certs/local-ca/ca.pem").read_bytes())
    a = device_identity(root, "crl-a")
    b = device_identity(root, "crl-b")
    empty = x509.load_pem_x509_crl(ensure_crl(root).read_bytes())
    assert len(empty) == 0 and empty.is_signature_valid(ca.public_key())
    assert empty.next_update_utc is not None
    assert empty.next_update_utc >= ca.not_valid_after_utc

    assert revoke_device_local(root, "crl-a") == crl_path(root)
    assert revoked_serials(crl_path(root)) == {serial(a)}
    first = x509.load_pem_x509_crl(crl_path(root).read_bytes())
    revoke_device_local(root, "crl-b")
    revoke_device_local(root, "crl-a")
    crl = x509.load_pem_x509_crl(crl_path(root).read_bytes())
    assert sorted(e.serial_number for e in crl) == sorted([serial(a), serial(b)])
    assert crl.is_signature_valid(ca.public_key())
    assert first.last_update_utc <= crl.last_update_utc <= dt.datetime.now(dt.UTC)
    number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    assert number == 4  # empty, a, b, a again


def test_a_certificate_from_another_ca_is_not_revoked(
    root: Path, tmp_path_factory: pytest.TempPathFactory
):
    other = LocalCA.create(tmp_path_factory.mktemp("other-ca"))
    stranger = other.issue("stranger", root / "certs" / "stranger")
    with pytest.raises(CertificateError, match="not issued by the local CA"):
        revoke_device_local(root, "stranger")
    assert serial(stranger) not in revoked_serials(crl_path(root))
    with pytest.raises(CertificateError, match="nothing to revoke"):
        revoke_device_local(root, "never-provisioned")


def test_a_revoked_device_is_refused_after_a_broker_restart(
    root: Path, start_broker: BrokerFactory, devices: list[MqttClient]
):
    revoked = device_identity(root, "rv-gone")
    other = device_identity(root, "rv-other")
    broker = start_broker(crl=ensure_crl(root))
    port = broker.config.port
    assert connects(devices, port, revoked) and connects(devices, port, other)
    held = devices[0]

    revoke_device_local(root, "rv-gone")
    restart_broker(broker)

    assert dropped(held), "the revoked device's open connection survived"
    assert not connects(devices, port, revoked)
    assert connects(devices, port, other)


def test_sighup_refuses_new_connections_but_keeps_open_ones(
    root: Path, start_broker: BrokerFactory, devices: list[MqttClient]
):
    """Why revocation restarts the broker: Mosquitto 2.0 re-reads the CRL on SIGHUP, but
    an established connection of the revoked certificate carries on."""
    revoked = device_identity(root, "hup-gone")
    other = device_identity(root, "hup-other")
    broker = start_broker(crl=ensure_crl(root))
    port = broker.config.port
    assert connects(devices, port, revoked)
    held = devices[0]

    revoke_device_local(root, "hup-gone")
    assert broker.pid is not None
    reload_broker(broker.pid)
    log = broker.config.log_path
    wait_until(lambda: "Reloading config." in log.read_text(), 10, "the broker's reload")

    assert not connects(devices, port, revoked)
    assert connects(devices, port, other)
    held.publish("sensors/hup-gone/data", b"still here")  # asserts its PUBACK
    assert held.disconnected is None


def cloud(root: Path, *args: str) -> str:
    """A `cloud` command, or this library in a process of its own, as the CLI runs it."""
    done = subprocess.run(
        [sys.executable, *args],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_restart_local_broker_applies_the_crl_to_a_running_stack(
    root: Path, devices: list[MqttClient]
):
    """`cloud local up` starts Mosquitto without `crlfile`, and SIGHUP cannot add one: the
    stack's broker is restarted with it."""
    up = ("-m", "cloud", "local", "up", "--no-ingest")
    cloud(root, *up, "--mqtt-port", str(free_port()), "--table-port", str(free_port()))
    try:
        state = StackState.load(root)
        assert state is not None
        before = state.pids["mosquitto"]
        gone = device_identity(root, "st-gone")
        other = device_identity(root, "st-other")
        assert connects(devices, state.mqtt_port, gone)

        revoke_device_local(root, "st-gone")
        restart = "import sys; from pathlib import Path; from cloud.local.stack import "
        restart += "restart_broker as r; print(r(Path(sys.argv[1])))"
        new_pid = int(cloud(root, "-c", restart, str(root)))

        assert new_pid != before
        assert running_state(root).pids["mosquitto"] == new_pid
        assert dropped(devices[0])
        assert not connects(devices, state.mqtt_port, gone)
        assert connects(devices, state.mqtt_port, other)
        conf = state_dir(root) / "mosquitto" / "mosquitto.conf"
        assert f"crlfile {crl_path(root)}" in conf.read_text()
    finally:
        cloud(root, "-m", "cloud", "local", "down")


def test_the_crl_is_public_and_current(root: Path):
    device_identity(root, "mode")
    path = revoke_device_local(root, "mode")
    assert path.stat().st_mode & 0o777 == 0o644  # a broker running as another user reads it
    next_update = x509.load_pem_x509_crl(path.read_bytes()).next_update_utc
    assert next_update is not None and dt.datetime.now(dt.UTC) < next_update


def test_a_reissued_certificate_revokes_the_one_it_replaced_and_revoke_covers_every_one(
    root: Path, start_broker: BrokerFactory, devices: list[MqttClient]
):
    """`cloud provision --id X --force` on a Pi that was stolen: the thief's copy of the
    first certificate stops working at once, and `cloud revoke` later ends the new one too."""
    first = device_identity(root, "rv-stolen")
    stolen_folder = root / "stolen"
    shutil.copytree(first.cert.parent, stolen_folder)
    stolen = Identity(
        stolen_folder / "cert.pem", stolen_folder / "key.pem", stolen_folder / "ca.pem"
    )
    second = device_identity(root, "rv-stolen", force=True)
    assert serial(second) != serial(stolen)
    broker = start_broker(crl=ensure_crl(root))
    port = broker.config.port

    assert not connects(devices, port, stolen), "the replaced certificate still connects"
    assert connects(devices, port, second)

    revoke_device_local(root, "rv-stolen")
    restart_broker(broker)
    assert not connects(devices, port, second)
    assert not connects(devices, port, stolen)
    assert {serial(stolen), serial(second)} <= revoked_serials(crl_path(root))
