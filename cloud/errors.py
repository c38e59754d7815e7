"""Every error the cloud tooling raises on purpose, in one shallow tree, and the one place
an AWS error's code and message are read.

The CLI prints any `PipelineError` as one line and exits 1 (cloud.cli); anything else is
a bug and keeps its traceback. `code`, when set, is AWS's error code (or
a query engine's error class), for callers that act on it and for tests.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # botocore comes with the cloud extra; this module must import without it
    from botocore.exceptions import ClientError


class PipelineError(Exception):
    """Root of every error the cloud tooling raises on purpose."""

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code


class ConfigError(PipelineError):
    """A setting of a `cloud` command is missing or wrong; the message names it and where it
    was read. (The agent's own settings raise device.errors.ConfigError.)"""


class LocalStackError(PipelineError):
    """The local stack (Mosquitto, moto) cannot be started, found or stopped."""


class CertificateError(PipelineError):
    """A key or certificate cannot be made, read or replaced."""


class ProvisionError(PipelineError):
    """A device identity cannot be made or revoked in AWS IoT."""


class IngestError(PipelineError):
    """The bridge cannot go on: the broker refuses our certificate, client id or subscription."""


class DeadLetterError(PipelineError):
    """The dead-letter file cannot be written or read."""


class TableError(PipelineError):
    """The SensorData table cannot be created, written or read."""


class ExportError(PipelineError):
    """The export cannot run or failed."""


class StorageError(PipelineError):
    """An export's destination cannot be reached, read or written."""


class LeaseHeld(StorageError):
    """Someone else holds the lease: `holder` is what they wrote in it (may be empty), and
    `hint` says how it ends or how to clear it if that holder is gone."""

    def __init__(self, location: str, holder: dict[str, Any], hint: str) -> None:
        super().__init__(f"{location} is held by another process; {hint}", "LeaseHeld")
        self.holder = holder
        self.hint = hint


class QueryError(PipelineError):
    """A query cannot run or failed; `code` is the engine's error class or AWS's state/code."""


class FleetError(PipelineError):
    """The broker or AWS IoT cannot be reached, or refused to show or keep a device's
    retained messages (cloud config, cloud devices); the message says which and what to do."""


class PlotError(PipelineError):
    """Nothing to plot, or the image cannot be written."""


class DeployError(PipelineError):
    """A stack operation failed or was refused."""


class StackNotFound(DeployError):
    """No stack of that name exists (`cloud deploy` makes one)."""


class DestroyRefused(DeployError):
    """The stack still holds data or serves devices; `blockers` says which, force removes them."""

    def __init__(self, message: str, blockers: list[str]) -> None:
        super().__init__(message)
        self.blockers = blockers


def aws_code(exc: ClientError) -> str:
    """AWS's error code of a failed call ("" when the answer had none)."""
    return str(exc.response.get("Error", {}).get("Code", ""))


def aws_message(exc: ClientError) -> str:
    """AWS's message of a failed call (the exception's text when the answer had none)."""
    return str(exc.response.get("Error", {}).get("Message", exc))
