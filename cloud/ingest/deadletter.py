"""Dead letters: messages the rule refused, kept as JSON lines with their bytes.

The AWS IoT rule's error action plays this part on AWS; locally `cloud ingest` appends here.
One line per message: `{"time", "topic", "reason", "detail", "payload_b64", "size",
"sha256"}`. The payload is kept whole up to PAYLOAD_PREFIX_BYTES (every valid reading fits);
of a bigger one only that prefix, with its size and hash, so one device cannot fill the
disk. A line is on disk (flushed and fsynced) before the message is acknowledged, so a
refused message is never lost, only moved here.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from cloud.errors import DeadLetterError
from cloud.fsync import fsync_dir

log = logging.getLogger(__name__)


#: Bytes of a refused payload kept in its dead letter: the payload contract's limit
#: (device.payload.MAX_PAYLOAD_BYTES), so a reading refused for its content is kept whole.
PAYLOAD_PREFIX_BYTES = 4096


@dataclass(frozen=True)
class DeadLetter:
    time: str  # ISO 8601, UTC, when ingest refused the message
    topic: str
    reason: str  # PayloadError.reason: short and stable, for grouping
    detail: str
    payload: bytes  # what the broker delivered, its first PAYLOAD_PREFIX_BYTES
    size: int  # of the whole payload
    sha256: str  # of the whole payload, hex

    @property
    def truncated(self) -> bool:
        return len(self.payload) < self.size

    @classmethod
    def now(cls, topic: str, reason: str, detail: str, payload: bytes) -> DeadLetter:
        stamp = dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")
        digest = hashlib.sha256(payload).hexdigest()
        return cls(
            stamp, topic, reason, detail, payload[:PAYLOAD_PREFIX_BYTES], len(payload), digest
        )

    def to_json(self) -> str:
        return json.dumps(
            {
                "time": self.time,
                "topic": self.topic,
                "reason": self.reason,
                "detail": self.detail,
                "payload_b64": base64.b64encode(self.payload).decode("ascii"),
                "size": self.size,
                "sha256": self.sha256,
            },
            ensure_ascii=True,  # one line, whatever the topic or detail holds
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, line: str) -> DeadLetter:
        body: Any = json.loads(line)
        if not isinstance(body, dict):
            raise ValueError("not a JSON object")
        payload = base64.b64decode(body["payload_b64"], validate=True)
        return cls(
            time=str(body["time"]),
            topic=str(body["topic"]),
            reason=str(body["reason"]),
            detail=str(body.get("detail", "")),
            payload=payload,
            # Letters written before size and hash were kept hold the whole payload.
            size=int(body.get("size", len(payload))),
            sha256=str(body.get("sha256") or hashlib.sha256(payload).hexdigest()),
        )


class DeadLetterFile:
    """An append-only JSON-lines sink; each `append` returns once the line is durable."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: IO[bytes] | None = None

    def _open(self) -> IO[bytes]:
        if self._file is not None:
            return self._file
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            created = not self.path.exists()
            handle = self.path.open("ab")
            if created:
                # A new file's name is only durable once its folder is synced too.
                fsync_dir(self.path.parent)
            elif not _ends_with_newline(self.path):
                # A crash mid-append leaves a torn last line: start ours on a line of its own
                # so one torn record never swallows the next.
                handle.write(b"\n")
        except OSError as exc:
            raise DeadLetterError(f"cannot open dead-letter file {self.path}: {exc}") from None
        self._file = handle
        return handle

    def append(self, letter: DeadLetter) -> None:
        handle = self._open()
        try:
            handle.write(letter.to_json().encode("ascii") + b"\n")
            handle.flush()
            os.fsync(handle.fileno())
        except OSError as exc:
            raise DeadLetterError(f"cannot write dead-letter file {self.path}: {exc}") from None

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _ends_with_newline(path: Path) -> bool:
    with path.open("rb") as fh:
        if fh.seek(0, os.SEEK_END) == 0:
            return True
        fh.seek(-1, os.SEEK_END)
        return fh.read(1) == b"\n"


def read_dead_letters(path: Path) -> Iterator[DeadLetter]:
    """Every dead letter in `path`, oldest first; none if the file does not exist.

    A line that does not parse (a torn write from a crash) is skipped with a warning
    rather than hiding every letter after it.
    """
    try:
        handle = path.open("r", encoding="ascii", errors="replace")
    except FileNotFoundError:
        return
    except OSError as exc:
        raise DeadLetterError(f"cannot read dead-letter file {path}: {exc}") from None
    with handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                yield DeadLetter.from_json(line)
            except (ValueError, KeyError, binascii.Error) as exc:
                log.warning("%s:%d: skipping unreadable dead letter (%s)", path, number, exc)
