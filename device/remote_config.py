"""Remote configuration, the device's side: which desired config is in force, and what the
device reports about it.

The cloud keeps a retained `config/desired` per device; it comes again at every connect,
so a version not newer than the last one handled is ignored. A desired config is checked
by the rules of the local settings (device.config.check_remote_settings) and put in force
as a whole or not at all; a setting given as a command-line flag keeps the flag's value
and is listed in `overridden`. The last applied one is kept in the outbox's state table,
so the next run starts with it before it connects.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable
from typing import Any

from device.config import AgentConfig, check_remote_settings
from device.errors import AgentError, OutboxError, PayloadError
from device.outbox import Outbox
from device.payload import (
    Reported,
    config_reported_topic,
    encode_reported,
    parse_desired,
)
from device.transport import Transport

log = logging.getLogger(__name__)


class RemoteConfig:
    """The remote config in force over `base` (the config from flags, environment, file)."""

    def __init__(self, base: AgentConfig, outbox: Outbox) -> None:
        self._base = base
        self._outbox = outbox
        self._topic = config_reported_topic(base.sensor_id)
        #: The version in force (None: none yet) and its settings, as the cloud gave them.
        self.version: int | None = None
        self._settings: dict[str, Any] = {}
        self._seen = 0  # the newest version handled, applied or refused
        self._unsent: bytes | None = None  # a `reported` waiting for a connection

    def restore(self) -> AgentConfig:
        """The config to start with: `base` with the last applied remote config, if any."""
        stored = self._outbox.remote_config
        if stored is None:
            return self._base
        try:
            body = json.loads(stored)
            version, settings = int(body["version"]), dict(body["settings"])
            checked = check_remote_settings(settings, f"remote config v{version}")
        except (ValueError, KeyError, TypeError, AgentError) as exc:
            # Rules may have changed with an upgrade; the cloud's retained one comes soon.
            log.warning("the stored remote config is not used: %s", exc)
            return self._base
        self.version, self._settings, self._seen = version, settings, version
        log.info("starting with remote config v%d", version)
        return self._in_force(checked)

    def _in_force(self, checked: dict[str, Any]) -> AgentConfig:
        kept = {k: v for k, v in checked.items() if k not in self._base.from_flags}
        return dataclasses.replace(self._base, **kept)

    def desired(self, payload: bytes, apply: Callable[[AgentConfig], None]) -> None:
        """Handle a message on config/desired; `apply` puts a config in force (and raises
        AgentError when it cannot, e.g. a sensor that is not there)."""
        if not payload:
            return  # cleared by the cloud: what is in force stays, no new desired
        version = self._seen
        try:
            desired = parse_desired(payload)
            version = desired.version
            if version <= self._seen:
                return  # the retained one again, at a reconnect
            self._seen = version
            source = f"remote config v{version}"
            apply(self._in_force(check_remote_settings(desired.settings, source)))
        except (PayloadError, AgentError) as exc:
            log.warning("remote config v%d refused, the previous one stays: %s", version, exc)
            self._report("refused", version, str(exc))
            return
        self.version, self._settings = version, dict(desired.settings)
        try:
            self._outbox.keep_remote_config(
                json.dumps({"version": version, "settings": self._settings})
            )
        except OutboxError as exc:
            log.error("%s; remote config v%d applied for this run only", exc, version)
        log.info("remote config v%d applied: %s", version, self._settings)
        self._report("applied", version, None)

    def _report(self, status: str, version: int, error: str | None) -> None:
        # `applied` and `overridden` describe what is in force: after a refusal, the old.
        flagged = sorted(n for n in self._settings if n in self._base.from_flags)
        applied = {k: v for k, v in self._settings.items() if k not in self._base.from_flags}
        reported = Reported(
            sensor_id=self._base.sensor_id,
            version=version,
            status="applied" if status == "applied" else "refused",
            applied=applied,
            error=error,
            overridden=tuple(flagged),
        )
        self._unsent = encode_reported(reported)

    def flush(self, transport: Transport) -> None:
        """Publish the `reported` that waits, if the transport is connected."""
        if self._unsent is not None and transport.publish_state(self._topic, self._unsent):
            self._unsent = None
