"""The fleet library's one error; its root is the cloud tooling's (cloud.errors)."""

from __future__ import annotations

from cloud.errors import PipelineError


class FleetError(PipelineError):
    """The broker or AWS IoT cannot be reached, or refused to show or keep a device's
    retained messages; the message says which and what to do."""
