"""`cloud provision | revoke --target aws`: a device's identity in AWS IoT Core.

The key never leaves this machine: an EC P-256 key and a CSR are made here, AWS IoT signs
the CSR (CreateCertificateFromCsr), and the certificate is tied to the device's thing and to
the stack's IoT policy, which lets it connect only as its thing name. Files go where the
local stack keeps them, `certs/<id>/` (key 0600, folder 0700), with `ca.pem` the Amazon Root
CA 1 taken from the CA bundle installed with botocore or certifi: nothing is downloaded.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from botocore.exceptions import ClientError
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.utils import CryptographyDeprecationWarning
from cryptography.x509.oid import NameOID

from cloud.aws import Endpoint
from cloud.errors import CertificateError, ConfigError, ProvisionError, aws_code
from cloud.identity.local_ca import Identity, certs_dir, private_folder, write_private_key
from cloud.stack.status import ats_host
from cloud.target import aws_errors
from device.errors import PayloadError
from device.payload import check_sensor_id

log = logging.getLogger(__name__)

AMAZON_ROOT_CA_1 = "Amazon Root CA 1"
#: SHA-256 of Amazon Root CA 1 (https://www.amazontrust.com/repository/): the bundle's copy
#: must be this very certificate, not merely one with that name.
AMAZON_ROOT_CA_1_SHA256 = "8ecde6884f3d87b1125ba31ac3fcb13d7016de7f57cc904fe1cb97c6ae98196e"
MQTT_TLS_PORT = 8883
#: AWS detaches things from certificates asynchronously; deleting too early is refused.
DETACH_WAIT_SECONDS = 60.0

T = TypeVar("T")


@dataclass(frozen=True)
class ProvisionResult:
    device_id: str  # also the thing name and the MQTT client id
    certificate_id: str
    certificate_arn: str
    identity: Identity
    broker_url: str  # mqtts://<account's ATS endpoint>:8883
    replaced_certificate_id: str | None  # the previous certificate, revoked (with force)
    #: Does AWS's certificate carry our key? Always on AWS (checked); moto signs a key of
    #: its own, so there it is False and only reported.
    certificate_matches_key: bool

    @property
    def command(self) -> str:
        """The device-agent command line for this device."""
        return self.identity.agent_command(self.device_id, self.broker_url)


@dataclass(frozen=True)
class RevokeResult:
    device_id: str
    certificate_ids: list[str]  # each set INACTIVE, detached, and deleted unless kept
    deleted: bool


def _bundles() -> list[Path]:
    """CA bundles that ship with what we install: certifi (with requests), botocore's own."""
    found: list[Path] = []
    try:
        import certifi

        found.append(Path(certifi.where()))
    except ImportError:
        pass
    import botocore

    found.append(Path(botocore.__file__).parent / "cacert.pem")
    return [p for p in found if p.is_file()]


def amazon_root_ca() -> bytes:
    """Amazon Root CA 1, in PEM, from an installed CA bundle; CertificateError if none has it."""
    marker = b"-----END CERTIFICATE-----"
    for bundle in _bundles():
        for block in bundle.read_bytes().split(marker):
            start = block.find(b"-----BEGIN CERTIFICATE-----")
            if start < 0:
                continue
            pem = block[start:] + marker + b"\n"
            with warnings.catch_warnings():
                # Some bundled roots have serial numbers RFC 5280 forbids; not ours to fix.
                warnings.simplefilter("ignore", CryptographyDeprecationWarning)
                try:
                    cert = x509.load_pem_x509_certificate(pem)
                except ValueError:
                    continue
            names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
            if [n.value for n in names] != [AMAZON_ROOT_CA_1]:
                continue
            if cert.fingerprint(hashes.SHA256()).hex() != AMAZON_ROOT_CA_1_SHA256:
                raise CertificateError(
                    f"{bundle} holds an '{AMAZON_ROOT_CA_1}' that is not Amazon's "
                    "(fingerprint differs); reinstall certifi/botocore"
                )
            return cert.public_bytes(serialization.Encoding.PEM)
    raise CertificateError(
        f"no '{AMAZON_ROOT_CA_1}' in the installed CA bundles "
        f"({', '.join(map(str, _bundles())) or 'none found'}); `pip install certifi`"
    )


def certificate_id(cert_pem: bytes) -> str:
    """AWS IoT's certificate id: the SHA-256 of the certificate's DER encoding (moto, by
    default, hashes the PEM text instead; `_find_certificate` does not rely on either)."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def _same_certificate(a: bytes | str, b: bytes | str) -> bool:
    def der(pem: bytes | str) -> bytes:
        raw = pem.encode() if isinstance(pem, str) else pem
        return x509.load_pem_x509_certificate(raw).public_bytes(serialization.Encoding.DER)

    try:
        return der(a) == der(b)
    except ValueError:
        return False


def _thing_certificates(iot: Any, thing: str) -> list[str]:
    """Ids of the certificates attached to `thing` (none if there is no such thing)."""
    ids: list[str] = []
    try:
        for page in iot.get_paginator("list_thing_principals").paginate(thingName=thing):
            ids += [arn.rsplit("/", 1)[1] for arn in page.get("principals", []) if ":cert/" in arn]
    except ClientError as exc:
        if aws_code(exc) != "ResourceNotFoundException":
            raise
    return ids


def _find_certificate(iot: Any, thing: str, cert_pem: bytes) -> str | None:
    """The id AWS IoT knows `cert_pem` by: among the thing's certificates, else by its id."""
    candidates = [*_thing_certificates(iot, thing)]
    try:
        candidates.append(certificate_id(cert_pem))
    except ValueError:
        return None
    for cert_id in dict.fromkeys(candidates):
        try:
            described = iot.describe_certificate(certificateId=cert_id)
        except ClientError as exc:
            if aws_code(exc) == "ResourceNotFoundException":
                continue
            raise
        if _same_certificate(described["certificateDescription"]["certificatePem"], cert_pem):
            return cert_id
    return None


def certificate_matches_key(cert_pem: bytes, key: ec.EllipticCurvePrivateKey) -> bool:
    def spki(public: Any) -> bytes:
        data: bytes = public.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return data

    cert = x509.load_pem_x509_certificate(cert_pem)
    return spki(cert.public_key()) == spki(key.public_key())


def _csr(device_id: str, key: ec.EllipticCurvePrivateKey) -> bytes:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_id)])
    csr = x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM)


def _write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _device_id(device_id: str) -> str:
    try:
        return check_sensor_id(device_id)
    except PayloadError as exc:
        raise ConfigError(f"--id: {exc}") from None


def _ensure_thing(iot: Any, name: str) -> None:
    try:
        iot.describe_thing(thingName=name)
    except ClientError as exc:
        if aws_code(exc) != "ResourceNotFoundException":
            raise
        try:
            iot.create_thing(thingName=name)
        except ClientError as again:
            if aws_code(again) != "ResourceAlreadyExistsException":  # made meanwhile: fine
                raise


def _retry(call: Callable[[], T], codes: set[str], timeout: float) -> T:
    """Repeat `call` while AWS answers with one of `codes` (eventual consistency)."""
    deadline = time.monotonic() + timeout
    delay = 0.5
    while True:
        try:
            return call()
        except ClientError as exc:
            if aws_code(exc) not in codes or time.monotonic() + delay > deadline:
                raise
        time.sleep(delay)
        delay = min(delay * 2, 8.0)


def _revoke_certificate(iot: Any, cert_id: str, delete: bool) -> bool:
    """INACTIVE first (AWS disconnects its devices within minutes), then detach everything,
    then delete. False if AWS does not know the certificate."""
    try:
        arn = iot.describe_certificate(certificateId=cert_id)["certificateDescription"][
            "certificateArn"
        ]
    except ClientError as exc:
        if aws_code(exc) == "ResourceNotFoundException":
            return False
        raise
    iot.update_certificate(certificateId=cert_id, newStatus="INACTIVE")
    for page in iot.get_paginator("list_attached_policies").paginate(target=arn):
        for policy in page.get("policies", []):
            iot.detach_policy(policyName=policy["policyName"], target=arn)
    for page in iot.get_paginator("list_principal_things").paginate(principal=arn):
        for thing in page.get("things", []):
            iot.detach_thing_principal(thingName=thing, principal=arn)
    if delete:
        _retry(
            lambda: iot.delete_certificate(certificateId=cert_id),
            {"DeleteConflictException"},
            DETACH_WAIT_SECONDS,
        )
    return True


@aws_errors("provision", ProvisionError)
def provision_device(
    endpoint: Endpoint,
    root: Path,
    device_id: str,
    policy_name: str,
    force: bool = False,
) -> ProvisionResult:
    """Make `device_id`'s key here and its certificate in AWS IoT, tied to its thing and to
    `policy_name` (the stack's IotPolicyName output); write certs/<id>/.

    Refuses to replace an existing key unless `force`; with `force` the previous certificate
    (the one in certs/<id>/cert.pem) is revoked once the new one works.
    """
    device_id = _device_id(device_id)
    folder = certs_dir(root) / device_id
    identity = Identity(folder / "cert.pem", folder / "key.pem", folder / "ca.pem")
    if identity.key.exists() and not force:
        raise CertificateError(
            f"{identity.key} already exists; pass --force to replace it "
            "(its AWS certificate is then revoked)"
        )
    ca_pem = amazon_root_ca()  # before anything is made in AWS
    iot = endpoint.client("iot")
    previous = (
        _find_certificate(iot, device_id, identity.cert.read_bytes())
        if identity.cert.exists()
        else None
    )
    try:
        iot.get_policy(policyName=policy_name)
    except ClientError as exc:
        if aws_code(exc) == "ResourceNotFoundException":
            raise ConfigError(
                f"IoT policy {policy_name} not found: deploy the stack first (`cloud deploy`)"
            ) from None
        raise ProvisionError(
            f"cannot read IoT policy {policy_name}: {exc}", aws_code(exc)
        ) from None
    host = ats_host(iot)

    key = ec.generate_private_key(ec.SECP256R1())
    try:
        made = iot.create_certificate_from_csr(
            certificateSigningRequest=_csr(device_id, key).decode(), setAsActive=True
        )
    except ClientError as exc:
        raise ProvisionError(
            f"AWS IoT refused the certificate request for {device_id}: {exc}", aws_code(exc)
        ) from None
    cert_pem = str(made["certificatePem"]).encode()
    cert_id, cert_arn = str(made["certificateId"]), str(made["certificateArn"])
    matches = certificate_matches_key(cert_pem, key)
    try:
        if not matches and not endpoint.is_local:
            raise ProvisionError(f"AWS IoT signed a key other than ours for {device_id}")
        if not matches:
            log.warning("%s: the local endpoint's certificate is not for our key", device_id)
        _ensure_thing(iot, device_id)
        iot.attach_thing_principal(thingName=device_id, principal=cert_arn)
        iot.attach_policy(policyName=policy_name, target=cert_arn)
        private_folder(folder)
        write_private_key(identity.key, key)
        _write(identity.cert, cert_pem)
        _write(identity.ca, ca_pem)
    except BaseException as exc:
        # No half-made identity: an active certificate whose key we lost is a liability.
        try:
            _revoke_certificate(iot, cert_id, delete=True)
        except ClientError as undo:
            log.error("could not remove certificate %s after a failure: %s", cert_id, undo)
        if isinstance(exc, ClientError):
            raise ProvisionError(f"cannot provision {device_id}: {exc}", aws_code(exc)) from None
        if isinstance(exc, OSError):
            raise CertificateError(f"cannot write {folder}: {exc}") from None
        raise
    replaced = None
    if previous is not None and previous != cert_id:
        replaced = previous if _revoke_certificate(iot, previous, delete=True) else None
    return ProvisionResult(
        device_id=device_id,
        certificate_id=cert_id,
        certificate_arn=cert_arn,
        identity=identity,
        broker_url=f"mqtts://{host}:{MQTT_TLS_PORT}",
        replaced_certificate_id=replaced,
        certificate_matches_key=matches,
    )


@aws_errors("revoke", ProvisionError)
def revoke_device_aws(
    endpoint: Endpoint, root: Path, device_id: str, *, delete: bool = True
) -> RevokeResult:
    """Revoke every certificate of `device_id`: those attached to its thing, and the one in
    certs/<id>/cert.pem. Each is set INACTIVE (AWS disconnects the device within minutes),
    detached from policies and things, and deleted (or kept INACTIVE with delete=False).
    The thing and the local files stay; `cloud provision --force` makes a new identity."""
    device_id = _device_id(device_id)
    iot = endpoint.client("iot")
    local = certs_dir(root) / device_id / "cert.pem"
    revoked: list[str] = []
    try:
        ids = _thing_certificates(iot, device_id)
        mine = _find_certificate(iot, device_id, local.read_bytes()) if local.exists() else None
        if mine is not None and mine not in ids:
            ids.append(mine)  # detached, yet perhaps still active
        for cert_id in ids:
            if _revoke_certificate(iot, cert_id, delete):
                revoked.append(cert_id)
    except ClientError as exc:
        raise ProvisionError(f"cannot revoke {device_id}: {exc}", aws_code(exc)) from None
    if not revoked:
        raise ProvisionError(
            f"{device_id} has no certificate in AWS IoT (no thing, nothing attached, and "
            f"no known {local}); nothing to revoke"
        )
    return RevokeResult(device_id, revoked, delete)
