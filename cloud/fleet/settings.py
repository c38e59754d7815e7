"""`key=value` words of `cloud config set`, checked before anything is published, by the
rules the device itself applies to a remote config (device.config.check_remote_settings)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from cloud.errors import ConfigError
from device.config import check_remote_settings
from device.errors import ConfigError as DeviceConfigError


def parse_settings(words: Iterable[str]) -> dict[str, Any]:
    """{name: value} from `interval=10 sensor=bme280 ...`; ConfigError naming the bad one."""
    raw: dict[str, str] = {}
    for word in words:
        name, sep, text = word.partition("=")
        if not sep or not name.strip():
            raise ConfigError(f"{word!r} is not KEY=VALUE")
        if not text.strip():
            raise ConfigError(f"{word!r}: {name.strip()} has no value")
        raw[name.strip()] = text.strip()
    if not raw:
        raise ConfigError("give at least one KEY=VALUE setting")
    try:
        return check_remote_settings(raw, "config set")
    except DeviceConfigError as exc:
        raise ConfigError(str(exc)) from None
