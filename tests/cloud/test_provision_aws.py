"""`cloud provision | revoke --target aws` against moto's IoT: thing, certificate from our
CSR, attachments, files and their modes, the Amazon root CA, and revocation."""

from __future__ import annotations

import datetime as dt
import json
import shlex
import stat
import sys
import uuid
from pathlib import Path

import certifi
import pytest
from botocore.exceptions import ClientError
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from cloud.aws import Endpoint
from cloud.errors import CertificateError, ConfigError
from cloud.identity.iot import (
    AMAZON_ROOT_CA_1_SHA256,
    ProvisionError,
    amazon_root_ca,
    certificate_matches_key,
    provision_device,
    revoke_device_aws,
)
from cloud.stack import template
from cloud.stack.resolver import Resolver


@pytest.fixture
def policy(aws: Endpoint) -> str:
    """The stack's device policy, made from the template's own document."""
    name = f"p-{uuid.uuid4().hex[:10]}"
    document = Resolver(stack_name=name).resolve(template.device_policy_document())
    aws.client("iot").create_policy(policyName=name, policyDocument=json.dumps(document))
    return name


@pytest.fixture
def device(device_id: str) -> str:
    return f"aws-{device_id}"[:128]


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _spki(public: object) -> bytes:
    return public.public_bytes(  # type: ignore[attr-defined,no-any-return]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _error(call: object) -> str:
    with pytest.raises(ClientError) as info:
        call()  # type: ignore[operator]
    return str(info.value.response["Error"]["Code"])


def test_provision_makes_thing_certificate_attachments_and_files(
    aws: Endpoint, tmp_path: Path, policy: str, device: str
):
    result = provision_device(aws, tmp_path, device, policy)
    iot = aws.client("iot")

    assert iot.describe_thing(thingName=device)["thingName"] == device
    assert iot.list_thing_principals(thingName=device)["principals"] == [result.certificate_arn]
    attached = iot.list_attached_policies(target=result.certificate_arn)["policies"]
    assert [p["policyName"] for p in attached] == [policy]
    described = iot.describe_certificate(certificateId=result.certificate_id)
    assert described["certificateDescription"]["status"] == "ACTIVE"

    ident = result.identity
    folder = tmp_path / "certs" / device
    assert (ident.cert, ident.key, ident.ca) == (
        folder / "cert.pem",
        folder / "key.pem",
        folder / "ca.pem",
    )
    assert ident.cert.read_text() == described["certificateDescription"]["certificatePem"]
    assert stat.S_IMODE(ident.key.stat().st_mode) == 0o600
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700

    # The certificate is for our CSR: its subject, and (on AWS) its public key. moto signs a
    # fresh key of its own instead of the CSR's, which provision reports.
    cert = _cert(ident.cert)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == device
    key = serialization.load_pem_private_key(ident.key.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert isinstance(key.curve, ec.SECP256R1)
    same_key = _spki(cert.public_key()) == _spki(key.public_key())
    assert result.certificate_matches_key == same_key
    assert same_key or aws.is_local, "a certificate for another key is accepted only from moto"

    # ca.pem: Amazon Root CA 1, the very block certifi's bundle labels so.
    ca = _cert(ident.ca)
    assert ca.subject.rfc4514_string() == "CN=Amazon Root CA 1,O=Amazon,C=US"
    assert ca.fingerprint(hashes.SHA256()).hex() == AMAZON_ROOT_CA_1_SHA256
    bundle = Path(certifi.where()).read_text()
    block = bundle.split('# Label: "Amazon Root CA 1"', 1)[1]
    block = block[block.index("-----BEGIN") : block.index("-----END CERTIFICATE-----") + 25]
    assert ca == x509.load_pem_x509_certificate(block.encode())

    host = iot.describe_endpoint(endpointType="iot:Data-ATS")["endpointAddress"]
    words = shlex.split(result.command)
    assert words[:3] == ["device-agent", "--id", device]
    assert words[3] == "--broker" and words[4].startswith("mqtts://")
    assert words[4].endswith("-ats.iot.us-east-1.amazonaws.com:8883")
    assert host.endswith("-ats.iot.us-east-1.amazonaws.com")  # moto names a new one each call
    assert words[5:] == ["--cert", str(ident.cert), "--key", str(ident.key), "--ca", str(ident.ca)]


def test_a_second_provision_refuses_without_force_and_replaces_with_it(
    aws: Endpoint, tmp_path: Path, policy: str, device: str
):
    first = provision_device(aws, tmp_path, device, policy)
    key_before = first.identity.key.read_bytes()
    with pytest.raises(CertificateError, match="--force"):
        provision_device(aws, tmp_path, device, policy)
    iot = aws.client("iot")
    assert first.identity.key.read_bytes() == key_before
    assert iot.list_thing_principals(thingName=device)["principals"] == [first.certificate_arn]

    second = provision_device(aws, tmp_path, device, policy, force=True)
    assert second.certificate_id != first.certificate_id
    assert second.replaced_certificate_id == first.certificate_id
    assert first.identity.key.read_bytes() != key_before
    assert iot.list_thing_principals(thingName=device)["principals"] == [second.certificate_arn]
    assert (
        _error(lambda: iot.describe_certificate(certificateId=first.certificate_id))
        == "ResourceNotFoundException"
    )


def test_provision_needs_the_stacks_policy_and_makes_nothing_without_it(
    aws: Endpoint, tmp_path: Path, device: str
):
    with pytest.raises(ConfigError, match="cloud deploy"):
        provision_device(aws, tmp_path, device, f"missing-{device}")
    iot = aws.client("iot")
    assert _error(lambda: iot.describe_thing(thingName=device)) == "ResourceNotFoundException"
    assert not (tmp_path / "certs" / device).exists()


def test_provision_refuses_an_id_that_cannot_be_a_thing_name(
    aws: Endpoint, tmp_path: Path, policy: str
):
    with pytest.raises(ConfigError, match="--id"):
        provision_device(aws, tmp_path, "sensors/+", policy)


def test_revoke_deactivates_detaches_and_deletes(
    aws: Endpoint, tmp_path: Path, policy: str, device: str
):
    made = provision_device(aws, tmp_path, device, policy)
    revoked = revoke_device_aws(aws, tmp_path, device)
    assert revoked.certificate_ids == [made.certificate_id] and revoked.deleted
    iot = aws.client("iot")
    assert (
        _error(lambda: iot.describe_certificate(certificateId=made.certificate_id))
        == "ResourceNotFoundException"
    )
    assert iot.list_thing_principals(thingName=device)["principals"] == []
    assert made.certificate_arn not in iot.list_targets_for_policy(policyName=policy)["targets"]
    with pytest.raises(ProvisionError, match="nothing to revoke"):
        revoke_device_aws(aws, tmp_path, device)


def test_revoke_can_keep_the_certificate_inactive(
    aws: Endpoint, tmp_path: Path, policy: str, device: str
):
    made = provision_device(aws, tmp_path, device, policy)
    revoke_device_aws(aws, tmp_path, device, delete=False)
    iot = aws.client("iot")
    described = iot.describe_certificate(certificateId=made.certificate_id)
    assert described["certificateDescription"]["status"] == "INACTIVE"
    assert iot.list_attached_policies(target=made.certificate_arn)["policies"] == []
    assert iot.list_principal_things(principal=made.certificate_arn)["things"] == []


def test_amazon_root_ca_comes_from_an_installed_bundle(monkeypatch: pytest.MonkeyPatch):
    pem = amazon_root_ca()
    assert _fingerprint(pem) == AMAZON_ROOT_CA_1_SHA256
    monkeypatch.setitem(sys.modules, "certifi", None)  # not installed: botocore's bundle
    assert amazon_root_ca() == pem


def test_certificate_matches_key_tells_our_key_from_another():
    key, other = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "d")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(other, hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
    )
    assert certificate_matches_key(cert, key)
    assert not certificate_matches_key(cert, other)


def _fingerprint(pem: bytes) -> str:
    return x509.load_pem_x509_certificate(pem).fingerprint(hashes.SHA256()).hex()
