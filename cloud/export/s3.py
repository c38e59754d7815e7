"""An export root under `s3://bucket/prefix`: files appear whole by upload, and a lease is
an object taken with a conditional put and renewed (cloud/export/storage.py says why)."""

from __future__ import annotations

import builtins
import datetime as dt
import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from boto3.exceptions import S3UploadFailedError
from botocore.exceptions import BotoCoreError, ClientError

from cloud.errors import LeaseHeld, StorageError, aws_code, aws_message
from cloud.export.storage import (
    LEASE_SECONDS,
    TEMP_SUFFIX,
    Destination,
    Lease,
    PendingFile,
    StoredObject,
    check_key,
    holder_of,
    sha256_of,
)

log = logging.getLogger(__name__)


def _aws_error(exc: Exception) -> tuple[str, str | None]:
    if isinstance(exc, ClientError):
        return f"{aws_code(exc)}: {aws_message(exc)}", aws_code(exc) or None
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
            code = aws_code(exc)
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
            if aws_code(exc) in ("NoSuchKey", "404"):
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
                if aws_code(exc) in ("NoSuchKey", "404"):
                    continue  # released since: try again
                raise self._fail(f"cannot read {key} from", exc) from None
            except BotoCoreError as exc:
                raise self._fail(f"cannot read {key} from", exc) from None
            found = holder_of(data)
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
            if aws_code(exc) in (*_CONDITION_FAILED, "NoSuchKey"):
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
            if aws_code(exc) in (*_CONDITION_FAILED, "NoSuchKey"):
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
