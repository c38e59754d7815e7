"""`key=value` words of `cloud config set`, checked before anything is published."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from cloud.errors import ConfigError
from cloud.fleet.messages import REMOTE_SETTINGS


def parse_settings(words: Iterable[str]) -> dict[str, Any]:
    """{name: value} from `interval=10 sensor=bme280 ...`; ConfigError naming the bad word.

    A value is an integer (0x.. too, for an I2C address), else a number, else the text:
    the device checks each against its own rules and refuses the whole config otherwise.
    """
    settings: dict[str, Any] = {}
    for word in words:
        name, sep, text = word.partition("=")
        name = name.strip()
        if not sep or not name:
            raise ConfigError(f"{word!r} is not KEY=VALUE")
        if name not in REMOTE_SETTINGS:
            raise ConfigError(
                f"{word!r}: unknown setting {name!r}; a remote config may set "
                + ", ".join(REMOTE_SETTINGS)
            )
        if not text.strip():
            raise ConfigError(f"{word!r}: {name} has no value")
        settings[name] = _value(text.strip())
    if not settings:
        raise ConfigError("give at least one KEY=VALUE setting")
    return settings


def _value(text: str) -> Any:
    try:
        return int(text, 0)
    except ValueError:
        pass
    try:
        number = float(text)
    except ValueError:
        return text
    if not math.isfinite(number):
        # "nan" and "inf" are floats to Python but not JSON, nor any setting's value.
        raise ConfigError(f"{text!r} is not a finite number")
    return number
