"""The local stack's identities: its CA, and the certificates it issues to devices, ingest
and its broker, all under certs/ (kept even by `cloud local reset`)."""

from __future__ import annotations

from pathlib import Path

from cloud.identity.local_ca import Identity, LocalCA, certs_dir
from cloud.identity.revocation import reissue_device_local

INGEST_IDENTITY = "ingest"
BROKER_IDENTITY = "local-broker"


def local_ca(root: Path) -> LocalCA:
    return LocalCA.create(certs_dir(root) / "local-ca")


def device_identity(root: Path, device_id: str, force: bool = False) -> Identity:
    """The device's files under certs/<id>/, issued by the local CA when missing."""
    folder = certs_dir(root) / device_id
    identity = Identity(folder / "cert.pem", folder / "key.pem", folder / "ca.pem")
    if identity.key.exists() and identity.cert.exists() and not force:
        return identity
    if force:
        # The one replaced stops working: a copy of it (a stolen Pi's) must not connect.
        return reissue_device_local(root, device_id)
    return local_ca(root).issue(device_id, folder)
