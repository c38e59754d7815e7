"""One process at a time for a resource: an exclusive flock on a file that holds the
holder's pid, released by the kernel when the process ends, however it ends."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable
from pathlib import Path
from typing import IO

from cloud.errors import ConfigError


class PidLock:
    """`with PidLock(path, busy, unusable): ...`; `busy(pid)` is the line when another
    process holds it, `unusable(reason)` when the file cannot be made."""

    def __init__(
        self, path: Path, busy: Callable[[str], str], unusable: Callable[[str], str]
    ) -> None:
        self.path = path
        self._busy = busy
        self._unusable = unusable
        self._file: IO[str] | None = None

    def __enter__(self) -> PidLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def acquire(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            handle = self.path.open("a+")
        except OSError as exc:
            raise ConfigError(self._unusable(str(exc.strerror or exc))) from None
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "?"
            handle.close()
            raise ConfigError(self._busy(holder)) from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        self._file = handle

    def release(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
