"""The local certificate authority: device and broker certificates for the local stack.

AWS IoT Core signs device certificates itself; locally this CA plays its part, so the same
mutual TLS (and the same "a device is its certificate's name" rule) holds on a laptop.
Keys are EC P-256: accepted by Mosquitto, awscrt and AWS IoT, and made in a millisecond.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import shlex
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from cloud.errors import CertificateError

CA_NAME = "sensor-pipeline local CA"
DEVICE_DAYS = 825
CA_DAYS = 3650


@dataclass(frozen=True)
class Identity:
    """The three files a TLS peer needs."""

    cert: Path
    key: Path
    ca: Path

    def agent_command(self, device_id: str, broker_url: str, *, receipts: bool = False) -> str:
        """The device-agent command line that runs this device with these files."""
        line = ["device-agent", "--id", device_id, "--broker", broker_url]
        line += ["--cert", str(self.cert), "--key", str(self.key), "--ca", str(self.ca)]
        return shlex.join([*line, "--receipts"] if receipts else line)


def certs_dir(root: Path) -> Path:
    """A project folder's certificates: certs/local-ca/ and certs/<id>/ (git-ignored)."""
    return root / "certs"


def refuse_replacing(root: Path, device_ids: Iterable[str], force: bool) -> None:
    """Without `force`, refuse before any is made to replace a device's key: the old
    certificate stops working, and a second run must not stop half way."""
    for device_id in device_ids:
        key = certs_dir(root) / device_id / "key.pem"
        if key.exists() and not force:
            raise CertificateError(
                f"{key} already exists; pass --force to replace it "
                "(the old certificate stops working)"
            )


def private_folder(path: Path) -> Path:
    """A folder only its owner can enter (0700), made if missing."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path, 0o700)
    return path


def write_private_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    """Write a PEM key created 0600 from the start: never world-readable, not even briefly."""
    data = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class LocalCA:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.cert_path = folder / "ca.pem"
        self.key_path = folder / "ca.key"
        #: Every certificate this CA issued, one JSON line each: {"cn": ..., "serial": ...}.
        self.ledger_path = folder / "issued.jsonl"
        try:
            self._cert = x509.load_pem_x509_certificate(self.cert_path.read_bytes())
            key = serialization.load_pem_private_key(self.key_path.read_bytes(), password=None)
        except FileNotFoundError:
            raise CertificateError(
                f"no local CA in {folder}: run `cloud local up` to make one"
            ) from None
        except ValueError as exc:
            raise CertificateError(f"local CA in {folder} is unreadable ({exc})") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise CertificateError(f"local CA key {self.key_path} is not an EC key")
        self._key = key

    @classmethod
    def create(cls, folder: Path) -> LocalCA:
        """Load the CA in `folder`, or make one there if it has none."""
        if (folder / "ca.pem").exists():
            return cls(folder)
        private_folder(folder)
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, CA_NAME)])
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(_now() - dt.timedelta(minutes=5))
            .not_valid_after(_now() + dt.timedelta(days=CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .sign(key, hashes.SHA256())
        )
        write_private_key(folder / "ca.key", key)
        (folder / "ca.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return cls(folder)

    def issue(
        self,
        common_name: str,
        folder: Path,
        *,
        server_names: tuple[str, ...] = (),
        force: bool = False,
        not_before: dt.datetime | None = None,
        not_after: dt.datetime | None = None,
    ) -> Identity:
        """Make a key and a certificate for `common_name` in `folder` (cert.pem, key.pem, ca.pem).

        With `server_names` the certificate is for a server (those DNS names or IPs);
        otherwise for a client whose identity is its common name.
        """
        identity = Identity(folder / "cert.pem", folder / "key.pem", folder / "ca.pem")
        if identity.key.exists() and not force:
            raise CertificateError(
                f"{identity.key} already exists; pass --force to replace it "
                "(the old certificate stops working)"
            )
        private_folder(folder)
        key = ec.generate_private_key(ec.SECP256R1())
        start = not_before or _now() - dt.timedelta(minutes=5)
        end = not_after or _now() + dt.timedelta(days=DEVICE_DAYS)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(self._cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()), False
            )
        )
        if server_names:
            alt: list[x509.GeneralName] = []
            for name in server_names:
                try:
                    alt.append(x509.IPAddress(ipaddress.ip_address(name)))
                except ValueError:
                    alt.append(x509.DNSName(name))
            builder = builder.add_extension(x509.SubjectAlternativeName(alt), critical=False)
            usage = ExtendedKeyUsageOID.SERVER_AUTH
        else:
            usage = ExtendedKeyUsageOID.CLIENT_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        cert = builder.sign(self._key, hashes.SHA256())
        # Recorded before the files are written: a certificate that exists anywhere is in
        # the ledger, so revoking an id can name every one ever issued for it.
        with self.ledger_path.open("a") as ledger:
            ledger.write(json.dumps({"cn": common_name, "serial": str(cert.serial_number)}) + "\n")
        write_private_key(identity.key, key)
        identity.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        identity.ca.write_bytes(self.cert_path.read_bytes())
        return identity

    def issued_serials(self, common_name: str) -> set[int]:
        """The serial of every certificate this CA issued for `common_name`."""
        try:
            lines = self.ledger_path.read_text().splitlines()
        except FileNotFoundError:
            return set()
        found = set()
        for line in lines:
            try:
                entry = json.loads(line)
                if entry["cn"] == common_name:
                    found.add(int(entry["serial"]))
            except (ValueError, KeyError, TypeError):
                continue  # a line torn by a crash mid-write names nothing
        return found
