"""The cloud package's exceptions: one root, a shallow tree."""

from __future__ import annotations


class PipelineError(Exception):
    """Root of every error the cloud tooling raises on purpose."""


class ConfigError(PipelineError):
    """A setting is missing or wrong; the message names it and where it was read."""


class LocalStackError(PipelineError):
    """The local stack (Mosquitto, moto) cannot be started, found or stopped."""


class CertificateError(PipelineError):
    """A key or certificate cannot be made, read or replaced."""
