"""Devices that should not get in: no certificate, one from another CA, an expired one, a
revoked one. Each sends CONNECT and a PUBLISH back to back (no waiting for the CONNACK,
as an attacker would); none gets a session, and nothing it sent reaches a subscriber.

In the same broker, a trusted device doing exactly the same is let in and its message
arrives: the control that shows the refusals are the certificates', not the test's.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from cloud.identity.local_ca import Identity, LocalCA
from cloud.local.mosquitto import Mosquitto
from tests.conftest import Pki
from tests.e2e.conftest import Agents
from tests.e2e.mqtt_raw import Attempt, attempt, tls_context
from tests.mqtt import Subscriber

ATTACK = b'{"v":1,"sensor_id":"%s","ts":1,"seq":0,"temperature":99.9}'


def revocation_list(ca: LocalCA, *revoked: Identity) -> bytes:
    """A CRL signed with the test CA's key, listing the given certificates' serials."""
    ca_cert = x509.load_pem_x509_certificate(ca.cert_path.read_bytes())
    key = serialization.load_pem_private_key(ca.key_path.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(now - dt.timedelta(minutes=5))
        .next_update(now + dt.timedelta(days=1))
    )
    for ident in revoked:
        serial = x509.load_pem_x509_certificate(ident.cert.read_bytes()).serial_number
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(serial)
            .revocation_date(now - dt.timedelta(minutes=1))
            .build()
        )
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def untrusted(kind: str, name: str, pki: Pki, folder: Path) -> tuple[Identity | None, Identity]:
    """(the credentials the intruder presents, or None for no certificate; the identity the
    broker's CRL must revoke, a throwaway one unless the intruder is the revoked device)."""
    throwaway = pki.device(f"{name}-bystander")
    if kind == "no certificate":
        return None, throwaway
    if kind == "another CA":
        other = LocalCA.create(folder / "other-ca")
        # Same name as a real device: only the issuer tells them apart.
        return other.issue(name, folder / "other"), throwaway
    if kind == "expired":
        return pki.expired(name, folder / "expired"), throwaway
    assert kind == "revoked"
    revoked = pki.ca.issue(name, folder / "revoked")
    return revoked, revoked


@pytest.mark.parametrize(
    ("kind", "alert", "broker_reason"),
    [
        ("no certificate", "certificate required", "peer did not return a certificate"),
        ("another CA", "unknown ca", "certificate verify failed"),
        ("expired", "certificate expired", "certificate verify failed"),
        ("revoked", "certificate revoked", "certificate verify failed"),
    ],
)
def test_untrusted_client_gets_no_session_and_publishes_nothing(
    kind: str,
    alert: str,
    broker_reason: str,
    pki: Pki,
    start_broker: Callable[..., Mosquitto],
    subscribe: Callable[..., Subscriber],
    device_id: str,
    tmp_path: Path,
) -> None:
    presented, revoked = untrusted(kind, device_id, pki, tmp_path)
    crl = tmp_path / "crl.pem"
    crl.write_bytes(revocation_list(pki.ca, revoked))
    broker = start_broker(crl=crl)
    port = broker.config.port
    witness = subscribe(port, topics=("sensors/#",))

    ca = pki.ca.cert_path  # the intruder trusts the broker; the broker must not trust it
    ctx = tls_context(ca) if presented is None else tls_context(ca, presented.cert, presented.key)
    topic = f"sensors/{device_id}/data"
    intruder: Attempt = attempt(port, ctx, device_id, topic, ATTACK % device_id.encode())

    control_id = f"{device_id}-ok"
    control = pki.device(control_id)
    allowed = attempt(
        port,
        tls_context(ca, control.cert, control.key),
        control_id,
        f"sensors/{control_id}/data",
        b"control",
    )
    assert allowed.granted, f"a trusted device must get in: {allowed}"
    witness.wait_for(lambda ms: any(m.payload == b"control" for m in ms), timeout=15)

    assert intruder.connack is None, f"{kind}: the broker answered CONNACK {intruder.connack}"
    assert intruder.refusal is not None, intruder
    if "alert" in intruder.refusal:  # the TLS alert is not always read before the close
        assert alert in intruder.refusal, intruder
    assert [m.topic for m in witness.messages if m.topic != f"sensors/{control_id}/data"] == []
    log = broker.config.log_path.read_text()
    assert f"as {device_id} " not in log, "the broker logged a session for the intruder"
    assert broker_reason in log, f"the broker's log does not say why: {log[-2000:]}"


def test_agent_with_an_untrusted_certificate_says_the_tls_handshake_failed(
    pki: Pki,
    start_broker: Callable[..., Mosquitto],
    agents: Agents,
    device_id: str,
    tmp_path: Path,
) -> None:
    """What the device's owner sees: with --offline-limit the agent gives up (exit 1) and its
    message names the TLS handshake, not a mere lost connection, so they look at the
    certificate rather than the network."""
    kinds = ("another CA", "expired", "revoked")
    creds = {
        k: untrusted(k, f"{device_id}-{n}", pki, tmp_path / str(n)) for n, k in enumerate(kinds)
    }
    crl = tmp_path / "crl.pem"
    crl.write_bytes(revocation_list(pki.ca, *(revoked for _, revoked in creds.values())))
    port = start_broker(crl=crl).config.port
    procs = {}
    for n, (kind, (ident, _)) in enumerate(creds.items()):
        assert ident is not None
        procs[kind] = agents.one(
            f"{device_id}-{n}",
            port,
            "--offline-limit",
            "2",
            "--cert",
            str(ident.cert),
            "--key",
            str(ident.key),
            "--ca",
            str(pki.ca.cert_path),
        )
    problems = []
    for kind, proc in procs.items():
        code = proc.wait(60)
        final = (proc.err().strip().splitlines() or ["(nothing)"])[-1]
        if code != 1 or "TLS handshake" not in final:
            problems.append(f"{kind}: exit {code}, says: {final}")
    assert not problems, "\n".join(problems)
