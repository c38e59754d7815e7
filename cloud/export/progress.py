"""Progress of a long export on a terminal, and sizes as a person reads them."""

from __future__ import annotations

import time
from typing import Protocol, TextIO


def human_bytes(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    size = n / 1024
    for unit in ("KiB", "MiB"):
        if size < 1024:
            return f"{size:,.1f} {unit}"
        size /= 1024
    return f"{size:,.1f} GiB"


class Progress(Protocol):
    def update(self, done: int, total: int | None, note: str) -> None: ...

    def close(self) -> None: ...


class LineProgress:
    """One line on a terminal, redrawn at most every `interval` seconds."""

    def __init__(self, stream: TextIO, interval: float = 0.2) -> None:
        self.stream = stream
        self.interval = interval
        self.started = time.monotonic()
        self._drawn = 0.0

    def update(self, done: int, total: int | None, note: str) -> None:
        now = time.monotonic()
        if now - self._drawn < self.interval:
            return
        self._drawn = now
        elapsed = max(now - self.started, 1e-9)
        parts = [note]
        if done or total:
            rate = done / elapsed
            # DescribeTable's ItemCount is refreshed every few hours: an estimate only.
            parts.append(f"{done:,}" + (f"/~{total:,}" if total else "") + " scanned")
            parts.append(f"{rate:,.0f}/s")
            if total and rate > 0 and done < total:
                parts.append(f"~{(total - done) / rate:,.0f}s left")
        parts.append(f"{elapsed:,.0f}s")
        self.stream.write("\r\x1b[2K" + ", ".join(parts))
        self.stream.flush()

    def close(self) -> None:
        self.stream.write("\r\x1b[2K")
        self.stream.flush()
