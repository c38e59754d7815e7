"""Times on the command line: ISO 8601, epoch milliseconds, or relative like -1h, -7d."""

from __future__ import annotations

import datetime as dt
import re
import time

from cloud.errors import ConfigError

_RELATIVE = re.compile(r"^-(\d+(?:\.\d+)?)([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_time_ms(text: str, option: str = "--since", now: float | None = None) -> int:
    """Epoch milliseconds for `text`; a naive ISO time is taken as UTC."""
    text = text.strip()
    now = time.time() if now is None else now
    match = _RELATIVE.match(text)
    if match:
        return int((now - float(match.group(1)) * _UNITS[match.group(2)]) * 1000)
    if text.isdigit() and len(text) >= 12:
        return int(text)
    try:
        when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(
            f"{option}: {text!r} is not a time; use ISO 8601 (2026-11-28T10:00:00Z), "
            "epoch milliseconds, or a relative time like -1h, -7d"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return int(when.timestamp() * 1000)


def iso_ms(ms: int) -> str:
    return (
        dt.datetime.fromtimestamp(ms / 1000, dt.UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )
