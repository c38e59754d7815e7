"""Where exports go: a local folder or `s3://bucket/prefix`, behind one small interface.

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

import builtins
import contextlib
import datetime as dt
import fcntl
import hashlib
import json
import logging
import os
import secrets
import tempfile
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from boto3.exceptions import S3UploadFailedError
from botocore.exceptions import BotoCoreError, ClientError

from cloud.aws import Endpoint
from cloud.errors import PipelineError

log = logging.getLogger(__name__)

TEMP_SUFFIX = ".tmp"
#: How long an S3 lease lasts unless renewed: the longest a dead holder blocks the next one.
LEASE_SECONDS = 300.0


class StorageError(PipelineError):
    """The destination cannot be reached, read or written; `code` is AWS's error code."""

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code


class LeaseHeld(StorageError):
    """Someone else holds the lease: `holder` is what they wrote in it (may be empty), and
    `hint` says how it ends or how to clear it if that holder is gone."""

    def __init__(self, location: str, holder: dict[str, Any], hint: str) -> None:
        super().__init__(f"{location} is held by another process; {hint}", "LeaseHeld")
        self.holder = holder
        self.hint = hint


class Lease(ABC):
    """A key of a destination held by this process until `release()`."""

    @abstractmethod
    def check(self) -> None:
        """Raise StorageError if the lease is not (or no longer) ours."""

    @abstractmethod
    def release(self) -> None:
        """Give the lease up; never raises (an unreleased lease ends by itself)."""


def _holder_of(data: bytes) -> dict[str, Any]:
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


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _LocalPending(PendingFile):
    def __init__(self, key: str, target: Path) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        temp = target.with_name(f".{target.name}.{secrets.token_hex(4)}{TEMP_SUFFIX}")
        temp.touch()
        super().__init__(key, temp)
        self.target = target

    def commit(self) -> StoredObject:
        try:
            with self.path.open("rb+") as f:
                os.fsync(f.fileno())
                size = os.fstat(f.fileno()).st_size
            digest = sha256_of(self.path)
            os.replace(self.path, self.target)
            _fsync_dir(self.target.parent)
        except OSError as exc:
            self.discard()
            raise StorageError(f"cannot write {self.target}: {exc.strerror or exc}") from None
        return StoredObject(self.key, size, digest)


class LocalFolder(Destination):
    def __init__(self, root: Path) -> None:
        self.root = root.expanduser().absolute()
        self.url = str(self.root)

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*check_key(key).split("/"))

    def check(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            # os.access says yes to root for a read-only folder; only a real write tells.
            fd, probe = tempfile.mkstemp(prefix=".probe-", suffix=TEMP_SUFFIX, dir=self.root)
            os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            raise StorageError(
                f"cannot write to folder {self.root}: {exc.strerror or exc}"
            ) from None

    def create(self, key: str) -> PendingFile:
        try:
            return _LocalPending(key, self._path(key))
        except OSError as exc:
            raise StorageError(f"cannot write under {self.root}: {exc.strerror or exc}") from None

    def list(self, prefix: str = "") -> Iterator[StoredObject]:
        # Walk only the deepest folder the prefix names, then filter by the full prefix.
        folder = self.root.joinpath(*prefix.split("/")[:-1]) if "/" in prefix else self.root
        for dirpath, _dirs, files in os.walk(folder):
            for name in files:
                path = Path(dirpath, name)
                key = path.relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    try:
                        yield StoredObject(key, path.stat().st_size)
                    except FileNotFoundError:  # removed while we walked
                        continue

    def read(self, key: str) -> bytes | None:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StorageError(f"cannot read {self._path(key)}: {exc.strerror or exc}") from None

    def delete(self, keys: Iterable[str]) -> None:
        folders: set[Path] = set()
        for key in keys:
            path = self._path(key)
            try:
                path.unlink(missing_ok=True)
            except OSError as exc:
                raise StorageError(f"cannot delete {path}: {exc.strerror or exc}") from None
            folders.add(path.parent)
        for folder in sorted(folders, key=lambda p: len(p.parts), reverse=True):
            self._prune(folder)

    def move(self, source: str, target: str) -> None:
        src, dst = self._path(source), self._path(target)
        try:
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, dst)
            _fsync_dir(dst.parent)
        except OSError as exc:
            raise StorageError(f"cannot move {src} to {dst}: {exc.strerror or exc}") from None
        self._prune(src.parent)

    def lease(self, key: str, holder: dict[str, Any], seconds: float = LEASE_SECONDS) -> Lease:
        path = self._path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise StorageError(f"cannot create {path}: {exc.strerror or exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            found = _holder_of(os.pread(fd, 1 << 16, 0))
            os.close(fd)
            pid = found.get("pid")
            raise LeaseHeld(
                str(path),
                found,
                f"the system drops its lock on {path} when that process ends, so none is "
                "ever stale: if it hangs, stop it"
                + (f" (pid {pid} on {found.get('host')})" if pid else "")
                + ", then rerun",
            ) from None
        except OSError as exc:
            os.close(fd)
            raise StorageError(f"cannot lock {path}: {exc.strerror or exc}") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder).encode() + b"\n", 0)
        return _FolderLease(path, fd)

    def _prune(self, folder: Path) -> None:
        # Empty folders left behind (a day partition, a run's staging area) go, so the tree
        # shows only what holds data; rmdir refuses a folder still in use, which then stays.
        while folder != self.root and folder.is_relative_to(self.root):
            try:
                folder.rmdir()
            except OSError:
                return
            folder = folder.parent


class _FolderLease(Lease):
    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self.fd: int | None = fd

    def check(self) -> None:
        # The lock is ours while the file is open, unless someone deleted the file and a
        # second holder locked a new one of that name.
        try:
            ours = self.fd is not None and os.stat(self.path).st_ino == os.fstat(self.fd).st_ino
        except OSError:
            ours = False
        if not ours:
            raise StorageError(f"lost the lock {self.path}: the file was removed or replaced")

    def release(self) -> None:
        if self.fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(self.fd, 0)  # no stale holder's details for a reader of the file
        os.close(self.fd)  # drops the lock
        self.fd = None


def _aws_error(exc: Exception) -> tuple[str, str | None]:
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        return f"{error.get('Code')}: {error.get('Message')}", error.get("Code")
    return str(exc), None


#: What S3 answers a conditional put or delete whose condition does not hold.
_CONDITION_FAILED = frozenset({"PreconditionFailed", "412", "ConditionalRequestConflict", "409"})


class _S3Pending(PendingFile):
    def __init__(self, key: str, dest: S3Prefix) -> None:
        fd, name = tempfile.mkstemp(prefix="export-", suffix=TEMP_SUFFIX)
        os.close(fd)
        super().__init__(key, Path(name))
        self.dest = dest

    def commit(self) -> StoredObject:
        try:
            size = self.path.stat().st_size
            digest = sha256_of(self.path)
            self.dest.upload(self.path, self.key)
        finally:
            self.discard()
        return StoredObject(self.key, size, digest)


class S3Prefix(Destination):
    def __init__(self, client: Any, bucket: str, prefix: str = "") -> None:
        if not bucket:
            raise StorageError("s3:// destination without a bucket: use s3://BUCKET/PREFIX")
        self.client = client
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.url = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"

    @classmethod
    def from_url(cls, url: str, client: Any) -> S3Prefix:
        bucket, _, prefix = url.removeprefix("s3://").partition("/")
        return cls(client, bucket, prefix)

    def _key(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _relative(self, full: str) -> str:
        return full[len(self.prefix) + 1 :] if self.prefix else full

    def _fail(self, doing: str, exc: Exception) -> StorageError:
        detail, code = _aws_error(exc)
        return StorageError(f"{doing} {self.url}: {detail}", code)

    def check(self) -> None:
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code")
            if code in ("404", "NoSuchBucket"):
                raise StorageError(
                    f"bucket {self.bucket} does not exist; create it (aws s3 mb s3://{self.bucket})"
                    " or check --to",
                    "NoSuchBucket",
                ) from None
            if code in ("403", "AccessDenied"):
                raise StorageError(
                    f"no access to bucket {self.bucket} with these credentials", code
                ) from None
            raise self._fail("cannot reach", exc) from None
        except BotoCoreError as exc:
            raise self._fail("cannot reach", exc) from None

    def create(self, key: str) -> PendingFile:
        self._key(key)
        return _S3Pending(key, self)

    def upload(self, path: Path, key: str) -> None:
        try:
            self.client.upload_file(str(path), self.bucket, self._key(key))
        except (ClientError, BotoCoreError, S3UploadFailedError) as exc:
            raise self._fail(f"cannot upload {key} to", exc) from None

    def list(self, prefix: str = "") -> Iterator[StoredObject]:
        full = f"{self.prefix}/{prefix}" if self.prefix else prefix
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=full
            )
            for page in pages:
                for obj in page.get("Contents", []):
                    yield StoredObject(
                        self._relative(obj["Key"]),
                        int(obj["Size"]),
                        etag=str(obj.get("ETag", "")).strip('"') or None,
                    )
        except (ClientError, BotoCoreError) as exc:
            raise self._fail("cannot list", exc) from None

    def read(self, key: str) -> bytes | None:
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"]
            data: bytes = body.read()
            return data
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None
            raise self._fail(f"cannot read {key} from", exc) from None
        except BotoCoreError as exc:
            raise self._fail(f"cannot read {key} from", exc) from None

    def delete(self, keys: Iterable[str]) -> None:
        batch: builtins.list[str] = []
        for key in keys:
            batch.append(self._key(key))
            if len(batch) == 1000:  # DeleteObjects' limit per call
                self._delete(batch)
                batch = []
        if batch:
            self._delete(batch)

    def _delete(self, full_keys: Sequence[str]) -> None:
        try:
            response = self.client.delete_objects(
                Bucket=self.bucket,
                Delete={"Objects": [{"Key": k} for k in full_keys], "Quiet": True},
            )
        except (ClientError, BotoCoreError) as exc:
            raise self._fail("cannot delete from", exc) from None
        errors = response.get("Errors") or []
        if errors:
            first = errors[0]
            raise StorageError(
                f"cannot delete {first.get('Key')} from {self.url}: {first.get('Code')}: "
                f"{first.get('Message')} ({len(errors)} failed)",
                first.get("Code"),
            )

    def move(self, source: str, target: str) -> None:
        # S3 has no rename: a server-side copy (managed, multipart for big objects) makes
        # the target appear whole, then the source goes.
        try:
            self.client.copy(
                {"Bucket": self.bucket, "Key": self._key(source)}, self.bucket, self._key(target)
            )
        except (ClientError, BotoCoreError) as exc:
            raise self._fail(f"cannot copy {source} to {target} in", exc) from None
        self.delete([source])

    def lease(self, key: str, holder: dict[str, Any], seconds: float = LEASE_SECONDS) -> Lease:
        found: dict[str, Any] = {}
        for _ in range(3):  # each pass loses only to a holder that came and went meanwhile
            etag = self.put_lease(key, holder, seconds, IfNoneMatch="*")
            if etag is not None:
                return _S3Lease(self, key, holder, seconds, etag)
            try:
                answer = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
                data, stale = answer["Body"].read(), str(answer["ETag"])
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                    continue  # released since: try again
                raise self._fail(f"cannot read {key} from", exc) from None
            except BotoCoreError as exc:
                raise self._fail(f"cannot read {key} from", exc) from None
            found = _holder_of(data)
            expires = found.get("expires_at")
            # Compared with this machine's clock: a skew of seconds against minutes.
            if isinstance(expires, int | float) and expires > time.time():
                break
            # Expired (its holder died) or not ours to read: replace exactly that object.
            etag = self.put_lease(key, holder, seconds, IfMatch=stale)
            if etag is not None:
                log.warning("took over the expired lease %s: %s", self.location(key), found)
                return _S3Lease(self, key, holder, seconds, etag)
        until = found.get("expires", "a few minutes from now")
        raise LeaseHeld(
            self.location(key),
            found,
            f"it is renewed while that export runs; if it died, the lease expires at {until}, "
            f"or delete it now (aws s3 rm {self.location(key)})",
        )

    def put_lease(
        self, key: str, holder: dict[str, Any], seconds: float, **condition: str
    ) -> str | None:
        """Write the lease body if `condition` holds: its new ETag, or None if it did not."""
        expires = time.time() + seconds
        body = {
            **holder,
            "expires_at": expires,
            "expires": dt.datetime.fromtimestamp(expires, dt.UTC).isoformat(timespec="seconds"),
        }
        try:
            answer = self.client.put_object(
                Bucket=self.bucket,
                Key=self._key(key),
                Body=json.dumps(body).encode() + b"\n",
                ContentType="application/json",
                **condition,
            )
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in (*_CONDITION_FAILED, "NoSuchKey"):
                return None
            raise self._fail(f"cannot write the lease {key} to", exc) from None
        except BotoCoreError as exc:
            raise self._fail(f"cannot write the lease {key} to", exc) from None
        return str(answer["ETag"])

    def delete_lease(self, key: str, etag: str) -> None:
        """Delete the lease if it is still the one with `etag`: one another process took
        over is theirs to release."""
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self._key(key), IfMatch=etag)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in (*_CONDITION_FAILED, "NoSuchKey"):
                return
            raise self._fail(f"cannot delete the lease {key} from", exc) from None
        except BotoCoreError as exc:
            raise self._fail(f"cannot delete the lease {key} from", exc) from None


class _S3Lease(Lease):
    def __init__(
        self, dest: S3Prefix, key: str, holder: dict[str, Any], seconds: float, etag: str
    ) -> None:
        self.dest = dest
        self.key = key
        self.holder = holder
        self.seconds = seconds
        self.etag = etag
        self._lock = threading.Lock()
        self._lost: str | None = None
        self._stop = threading.Event()
        self._renewer = threading.Thread(target=self._renew_often, name="lease", daemon=True)
        self._renewer.start()

    def _renew_often(self) -> None:
        while not self._stop.wait(self.seconds / 3):
            try:
                self.check()
            except StorageError as exc:
                log.warning("%s", exc)
                if self._lost is not None:
                    return

    def check(self) -> None:
        """Renew the lease: proof it is still ours, and another `seconds` before it expires."""
        with self._lock:
            if self._lost is None:
                etag = self.dest.put_lease(self.key, self.holder, self.seconds, IfMatch=self.etag)
                if etag is None:
                    self._lost = (
                        f"lost the lease {self.dest.location(self.key)}: it was deleted, or "
                        "expired unrenewed and another process took it"
                    )
                else:
                    self.etag = etag
            if self._lost is not None:
                raise StorageError(self._lost, "LeaseLost")

    def release(self) -> None:
        self._stop.set()
        self._renewer.join()
        if self._lost is not None:
            return  # someone else's now
        try:
            self.dest.delete_lease(self.key, self.etag)
        except StorageError as exc:
            log.warning("could not release the lease (it expires by itself): %s", exc)


def open_destination(url: str, endpoint: Endpoint | None = None) -> Destination:
    """`s3://bucket/prefix` (through `endpoint`, e.g. the moto server) or a folder path."""
    if url.startswith("s3://"):
        client = (endpoint or Endpoint()).client("s3")
        return S3Prefix.from_url(url, client)
    if "://" in url:
        raise StorageError(f"--to {url}: use a folder path or s3://BUCKET/PREFIX")
    return LocalFolder(Path(url))
