"""An export root in a local folder: files appear by `os.replace` from a hidden temporary
name, and a lease is an flock (cloud/export/storage.py says why)."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from cloud.errors import LeaseHeld, StorageError
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
from cloud.fsync import fsync_dir


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
            fsync_dir(self.target.parent)
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
            fsync_dir(dst.parent)
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
            found = holder_of(os.pread(fd, 1 << 16, 0))
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
