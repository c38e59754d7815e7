"""Where exports go: a local folder or `s3://bucket/prefix`, behind one small interface.

This module holds the interface (`Destination`, `Lease`, `PendingFile`) and its errors; the
two sides are `LocalFolder` (cloud/export/folder.py) and `S3Prefix` (cloud/export/s3.py),
and `ExportRoot.destination` (cloud/export/location.py) picks one.

Keys are relative to the destination's root and always use `/`. The one promise both sides
keep is that a file appears at its key whole or not at all:

- a folder: the bytes go to a hidden temporary name in the key's own folder (`.name.<hex>.tmp`,
  which Athena, Hive, Spark and pyarrow all skip because of the leading dot), are fsynced,
  and `os.replace` puts them in place; the folder is fsynced so the rename survives a crash.
- S3: the file is built on local disk, then `upload_file` sends it (multipart when large);
  S3 makes an object visible only when its PutObject or CompleteMultipartUpload succeeds.
  A killed process can leave incomplete multipart uploads behind: invisible to readers but
  billed, so give the bucket an AbortIncompleteMultipartUpload lifecycle rule.

`lease(key)` gives one holder at a time a key (an export takes one per destination and
format), and a holder that dies without releasing it blocks no one for long:

- a folder: an flock on the file at the key. The kernel drops it when the holder's process
  ends however it ends, so there is nothing to expire and no pid to check (and a pid would
  mean nothing to another machine sharing the folder). The file itself stays (deleting a
  locked file would let a second holder lock a new file of the same name); it holds the
  holder's details while it is held, for the refusal message.
- S3: an object at the key, created with a conditional put (If-None-Match: *) so exactly one
  of two racing creators wins. It says when it expires; the holder renews it (If-Match on its
  own ETag) every third of that, so only a dead holder's lease expires, and an expired one
  is replaced with If-Match on the dead holder's ETag, so two takers cannot both win.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cloud.errors import StorageError

TEMP_SUFFIX = ".tmp"
#: How long an S3 lease lasts unless renewed: the longest a dead holder blocks the next one.
LEASE_SECONDS = 300.0


class Lease(ABC):
    """A key of a destination held by this process until `release()`."""

    @abstractmethod
    def check(self) -> None:
        """Raise StorageError if the lease is not (or no longer) ours."""

    @abstractmethod
    def release(self) -> None:
        """Give the lease up; never raises (an unreleased lease ends by itself)."""


def holder_of(data: bytes) -> dict[str, Any]:
    """What a lease's body says of its holder; {} when it says nothing readable."""
    try:
        body = json.loads(data)
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


@dataclass(frozen=True)
class StoredObject:
    key: str
    size: int
    sha256: str | None = None  # known for files we wrote, not for listings
    etag: str | None = None  # S3 listings only


def check_key(key: str) -> str:
    """A relative key without `..`: nothing we write may land outside the root."""
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise StorageError(f"bad key {key!r}: must be relative, without empty or '..' parts")
    return key


def is_temporary(key: str) -> bool:
    name = key.rsplit("/", 1)[-1]
    return name.startswith(".") and name.endswith(TEMP_SUFFIX)


def sha256_of(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


class PendingFile(ABC):
    """A file being built at `path`; it becomes visible at `key` only on `commit()`."""

    def __init__(self, key: str, path: Path) -> None:
        self.key = key
        self.path = path

    @abstractmethod
    def commit(self) -> StoredObject:
        """Publish the whole file at `key` (replacing any file there) and say what it is."""

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)


class Destination(ABC):
    """An export root. Missing keys are not errors where a caller would only have to check."""

    url: str

    @abstractmethod
    def check(self) -> None:
        """Raise StorageError now if the root cannot be written, before any work is done."""

    @abstractmethod
    def create(self, key: str) -> PendingFile:
        """A local file to fill; it appears at `key` on commit."""

    @abstractmethod
    def list(self, prefix: str = "") -> Iterator[StoredObject]:
        """Every object whose key starts with `prefix` (recursively), in no promised order."""

    @abstractmethod
    def read(self, key: str) -> bytes | None:
        """The object's bytes, or None when there is none."""

    @abstractmethod
    def delete(self, keys: Iterable[str]) -> None:
        """Remove these objects; ones already gone are fine."""

    @abstractmethod
    def move(self, source: str, target: str) -> None:
        """Make `source` appear whole at `target`, then remove `source`."""

    @abstractmethod
    def lease(self, key: str, holder: dict[str, Any], seconds: float = LEASE_SECONDS) -> Lease:
        """Hold `key` until release, its body saying `holder`; LeaseHeld if someone does."""

    def put_bytes(self, key: str, data: bytes) -> StoredObject:
        pending = self.create(key)
        try:
            pending.path.write_bytes(data)
            return pending.commit()
        except BaseException:
            pending.discard()
            raise

    def location(self, key: str) -> str:
        """A key as a user would type it: a path or an s3:// URL."""
        return f"{self.url.rstrip('/')}/{key}"
