"""The device package's exceptions: one root, a shallow tree."""

from __future__ import annotations


class AgentError(Exception):
    """Root of every error the device agent raises on purpose."""


class ConfigError(AgentError):
    """A setting of the agent is missing or wrong; the message names it and where it was
    read. (A `cloud` command's settings raise cloud.errors.ConfigError.)"""


class SensorError(AgentError):
    """A sensor cannot be used at all (missing driver, no such device)."""


class SensorReadError(AgentError):
    """One read failed (a DHT checksum error, a 1-Wire CRC miss); worth retrying."""


class BrokerError(AgentError):
    """The broker refused us for a reason waiting will not fix, or stayed out of reach."""

    def __init__(self, message: str, reason_code: int | None = None) -> None:
        super().__init__(message)
        self.reason_code = reason_code


class PayloadError(AgentError):
    """A message is not a valid payload v1 (or a sensor id is not valid); `reason` is short
    and stable (for dead letters). The payload's checks are shared with the cloud side,
    which turns this into a dead letter (ingest) or a ConfigError (a command's --id)."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


class OutboxError(AgentError):
    """The on-disk outbox cannot be opened or written (disk full, read-only, corrupt)."""
