"""`cloud revoke --target local`: a certificate revocation list from the local CA.

The CRL (`certs/local-ca/crl.pem`) names every revoked device certificate by serial; the
broker reads it through its listener's `crlfile` option. Measured with Mosquitto 2.0.11 and
OpenSSL 3.0 (tests/cloud/test_revocation.py):

- a broker started with `crlfile` re-reads that file on SIGHUP: new connections of a
  revoked certificate are refused from then on;
- but SIGHUP leaves an established connection open, and a broker started *without*
  `crlfile` does not take one up on SIGHUP. So revoking restarts the broker
  (`restart_broker`; `cloud.local.stack.restart_broker` for the local stack): every client
  is disconnected, the others reconnect (devices keep an outbox, ingest a persistent
  session), the revoked one cannot.
- with `crlfile` set, a missing CRL file stops the broker from starting, and a CRL past
  its nextUpdate, or dated in the future, makes OpenSSL refuse *every* client. So a CRL
  exists from the start (`ensure_crl`, an empty one), it is dated now, never ahead of the
  clock, and its nextUpdate is the CA's own expiry.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from cloud.errors import CertificateError, LocalStackError
from cloud.identity.local_ca import Identity, LocalCA, certs_dir
from cloud.local.mosquitto import Mosquitto

CRL_NAME = "crl.pem"
CA_FOLDER = "local-ca"


def crl_path(root: Path) -> Path:
    return certs_dir(root) / CA_FOLDER / CRL_NAME


def _load_ca(ca_folder: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    try:
        cert = x509.load_pem_x509_certificate((ca_folder / "ca.pem").read_bytes())
        key = serialization.load_pem_private_key((ca_folder / "ca.key").read_bytes(), password=None)
    except FileNotFoundError:
        raise CertificateError(f"no local CA in {ca_folder}: run `cloud local up`") from None
    except ValueError as exc:
        raise CertificateError(f"local CA in {ca_folder} is unreadable ({exc})") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CertificateError(f"local CA key in {ca_folder} is not an EC key")
    return cert, key


def _current(ca: x509.Certificate, path: Path) -> tuple[list[x509.RevokedCertificate], int]:
    """The existing CRL's entries and number; nothing if absent or not from `ca`
    (a CRL signed by a CA that was since replaced revokes nothing this CA issued)."""
    try:
        crl = x509.load_pem_x509_crl(path.read_bytes())
    except FileNotFoundError:
        return [], 0
    except ValueError as exc:
        raise CertificateError(
            f"{path} is not a PEM CRL ({exc}); delete it to start anew"
        ) from None
    public = ca.public_key()
    if crl.issuer != ca.subject or not (
        isinstance(public, ec.EllipticCurvePublicKey) and crl.is_signature_valid(public)
    ):
        return [], 0
    try:
        number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    except x509.ExtensionNotFound:
        number = 0
    return list(crl), number


def write_crl(ca_folder: Path, revoke: list[int], path: Path) -> Path:
    """Write the CRL at `path`: the serials it already lists plus `revoke`."""
    ca, key = _load_ca(ca_folder)
    entries, number = _current(ca, path)
    # Never ahead of the clock: OpenSSL takes a CRL from the future for "not yet valid" and
    # then refuses every client. (Two CRLs of the same second are fine: the broker restarts
    # with one, and on SIGHUP OpenSSL 3 was seen to take the newly loaded one.)
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    this_update = now
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.subject)
        .last_update(this_update)
        # A CRL past its nextUpdate makes OpenSSL refuse every client: outlive the CA.
        .next_update(max(ca.not_valid_after_utc, this_update + dt.timedelta(days=1)))
        .add_extension(x509.CRLNumber(number + 1), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()), critical=False
        )
    )
    listed = set()
    for entry in entries:
        builder = builder.add_revoked_certificate(entry)
        listed.add(entry.serial_number)
    for serial in revoke:
        if serial not in listed:
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(now).build()
            )
            listed.add(serial)
    crl = builder.sign(key, hashes.SHA256())
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(crl.public_bytes(serialization.Encoding.PEM))
    os.chmod(tmp, 0o644)  # public data; the broker may run as another user
    os.replace(tmp, path)
    return path


def revoked_serials(path: Path) -> set[int]:
    try:
        return {entry.serial_number for entry in x509.load_pem_x509_crl(path.read_bytes())}
    except FileNotFoundError:
        return set()


def ensure_crl(root: Path) -> Path:
    """certs/local-ca/crl.pem, written empty if missing: a broker with `crlfile` needs one."""
    path = crl_path(root)
    if not path.exists():
        write_crl(path.parent, [], path)
    return path


def _serial_issued_by(ca_folder: Path, cert_path: Path) -> int:
    ca, _ = _load_ca(ca_folder)
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except FileNotFoundError:
        raise CertificateError(f"no certificate {cert_path}: nothing to revoke") from None
    except ValueError as exc:
        raise CertificateError(f"{cert_path} is not a PEM certificate ({exc})") from None
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        raise CertificateError(
            f"{cert_path} was not issued by the local CA in {ca_folder} "
            "(an AWS IoT certificate? revoke it with --target aws)"
        ) from None
    return cert.serial_number


def revoke_device_local(root: Path, device_id: str, keep: int | None = None) -> Path:
    """Revoke every certificate the local CA ever issued for `device_id` (its ledger, and
    certs/<id>/cert.pem), but `keep`; returns the CRL's path.

    Every one, not only the newest: a copy of an earlier certificate (on a stolen Pi) must
    stop working too. The broker applies the CRL when restarted
    (`cloud.local.stack.restart_broker`). The device's files stay.
    """
    folder = certs_dir(root)
    ca_folder = folder / CA_FOLDER
    serials = LocalCA(ca_folder).issued_serials(device_id)
    cert_path = folder / device_id / "cert.pem"
    if cert_path.exists() or not serials:
        serials.add(_serial_issued_by(ca_folder, cert_path))  # one issued before the ledger
    if keep is not None:
        serials.discard(keep)
    return write_crl(ca_folder, sorted(serials), crl_path(root))


def reissue_device_local(root: Path, device_id: str) -> Identity:
    """A new key and certificate for `device_id`; every earlier certificate is revoked."""
    folder = certs_dir(root)
    ca = LocalCA(folder / CA_FOLDER)
    identity = ca.issue(device_id, folder / device_id, force=True)
    new = x509.load_pem_x509_certificate(identity.cert.read_bytes()).serial_number
    revoke_device_local(root, device_id, keep=new)
    return identity


def reload_broker(pid: int) -> None:
    """SIGHUP: Mosquitto re-reads its config, certificates and CRL. New connections of a
    revoked certificate are refused; established ones stay (see the module's docstring)."""
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError:
        raise LocalStackError(f"no broker with pid {pid}") from None


def restart_broker(broker: Mosquitto) -> None:
    """Stop (SIGTERM: Mosquitto saves its persistence) and start again: every connection is
    re-made, so a revoked certificate's open connection ends too."""
    broker.stop()
    broker.start()
