"""The agent's settings, from flags, environment, a TOML file and defaults, in that order.

Each value remembers where it came from, so an error can say "--interval" or
"DEVICE_AGENT_INTERVAL" or "config/sensor-3.toml: interval" instead of guessing.
"""

from __future__ import annotations

import math
import os
import stat
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from device.errors import ConfigError, PayloadError
from device.payload import check_sensor_id

ENV_PREFIX = "DEVICE_AGENT_"
SENSORS = ("simulated", "cpu", "ds18b20", "dht22", "bme280")
TRANSPORTS = ("paho", "awsiot")
FULL_POLICIES = ("drop-oldest", "refuse-newest")
MQTT_VERSIONS = ("auto", "5", "3.1.1")


@dataclass(frozen=True)
class BrokerUrl:
    """`mqtt://host:port` (plain TCP) or `mqtts://host:port` (TLS)."""

    scheme: str
    host: str
    port: int

    @classmethod
    def parse(cls, text: str, source: str = "--broker") -> BrokerUrl:
        parts = urlsplit(text)
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
            raise ConfigError(
                f"{source}: {text!r} is not a broker URL; use mqtts://HOST:8883 or mqtt://HOST:1883"
            )
        try:
            port = parts.port
        except ValueError:
            raise ConfigError(f"{source}: {text!r} has a bad port number") from None
        if parts.path not in ("", "/") or parts.query or parts.username:
            raise ConfigError(f"{source}: {text!r} has a path, query or user; give only host:port")
        default = 8883 if parts.scheme == "mqtts" else 1883
        return cls(parts.scheme, parts.hostname, port or default)

    @property
    def tls(self) -> bool:
        return self.scheme == "mqtts"

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


@dataclass(frozen=True)
class TlsFiles:
    """The three files of mutual TLS; checked on construction so a typo fails at start."""

    cert: Path
    key: Path
    ca: Path

    def __post_init__(self) -> None:
        for flag, path in (("--cert", self.cert), ("--key", self.key), ("--ca", self.ca)):
            if not path.is_file():
                raise ConfigError(f"{flag}: file {path} not found")
            if not os.access(path, os.R_OK):
                raise ConfigError(f"{flag}: file {path} is not readable by this user")
        mode = stat.S_IMODE(self.key.stat().st_mode)
        if mode & 0o077:
            raise ConfigError(
                f"--key: private key {self.key} is readable by group or others "
                f"(mode {mode:04o}); fix it with: chmod 600 {self.key}"
            )


@dataclass(frozen=True)
class AgentConfig:
    sensor_id: str
    broker: BrokerUrl
    tls: TlsFiles | None
    transport: str = "paho"
    sensor: str = "simulated"
    interval: float = 5.0
    count: int | None = None
    qos: int = 1
    outbox: Path = Path("outbox.sqlite")
    outbox_max: int = 100_000
    outbox_full: str = "drop-oldest"
    inflight: int = 100
    flush_timeout: float = 10.0
    offline_limit: float = 0.0
    flow_control: bool = True
    #: Keep each reading until `cloud ingest` confirms it is in the table, not only until
    #: the broker's PUBACK (Mosquitto acknowledges before a message is safe; see
    #: cloud/ingest/service.py). On by default against the local stack.
    receipts: bool = False
    #: How long a PUBACKed reading may wait for its receipt before it is sent again.
    receipt_timeout: float = 30.0
    #: Until the system clock is synchronised, hold readings (stamped once it is) for at
    #: most this long; 0 stamps them at once with the clock as it is.
    clock_wait: float = 120.0
    #: "auto" tries MQTT 5 and falls back to 3.1.1 when the broker refuses the version.
    mqtt_version: str = "auto"
    seed: int | None = None
    pin: str = "D4"
    w1_id: str | None = None  # ds18b20: which one on the bus (None: the first found)
    i2c_address: int = 0x76
    #: Seconds between health messages (sensors/<id>/health).
    health_interval: float = 60.0
    #: Settings given as command-line flags: a remote config does not change them.
    from_flags: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        if self.broker.tls and self.tls is None:
            raise ConfigError(
                f"--broker {self.broker} uses TLS: give --cert, --key and --ca "
                "(or run `cloud provision --id ID` and use the files it prints)"
            )
        if self.transport == "awsiot" and self.tls is None:
            raise ConfigError(
                "--transport awsiot needs mutual TLS: mqtts:// with --cert/--key/--ca"
            )


def default_outbox(sensor_id: str) -> Path:
    """Per-device state folder: $STATE_DIRECTORY under systemd, else XDG's state home."""
    base = os.environ.get("STATE_DIRECTORY") or os.environ.get("XDG_STATE_HOME")
    root = Path(base) if base else Path.home() / ".local" / "state"
    if not os.environ.get("STATE_DIRECTORY"):
        root = root / "device-agent"
    return root / f"{sensor_id}.outbox.sqlite"


class Settings:
    """Layered lookup: flag > environment > file > default, remembering each value's source."""

    def __init__(
        self,
        flags: Mapping[str, Any],
        environ: Mapping[str, str],
        config_file: Path | None,
    ) -> None:
        self._flags = {k: v for k, v in flags.items() if v is not None}
        self._environ = environ
        self._file: dict[str, Any] = {}
        self._file_name = ""
        if config_file is not None:
            self._file_name = str(config_file)
            try:
                with config_file.open("rb") as fh:
                    self._file = tomllib.load(fh)
            except FileNotFoundError:
                raise ConfigError(f"--config: file {config_file} not found") from None
            except tomllib.TOMLDecodeError as exc:
                raise ConfigError(f"--config: {config_file} is not valid TOML: {exc}") from None

    def get(self, name: str) -> tuple[Any, str] | None:
        if name in self._flags:
            return self._flags[name], "--" + name.replace("_", "-")
        env = ENV_PREFIX + name.upper()
        if env in self._environ:
            return self._environ[env], env
        if name in self._file:
            return self._file[name], f"{self._file_name}: {name}"
        return None

    def from_flag(self, name: str) -> bool:
        return name in self._flags

    def unknown_file_keys(self, known: set[str]) -> list[str]:
        return sorted(set(self._file) - known)


def _convert(name: str, raw: Any, source: str, kind: type) -> Any:
    try:
        if kind is bool and isinstance(raw, str):
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if kind is int and isinstance(raw, str):
            return int(raw, 0)
        if kind is int and isinstance(raw, bool | float):
            raise ValueError(raw)
        value = kind(raw)
        if kind is float and not math.isfinite(value):
            raise ValueError(raw)  # nan passes every minimum; inf would wait forever
        return value
    except (TypeError, ValueError):
        raise ConfigError(f"{source}: {raw!r} is not a valid {kind.__name__} for {name}") from None


_KINDS: dict[str, type] = {
    "broker": str,
    "cert": Path,
    "key": Path,
    "ca": Path,
    "transport": str,
    "sensor": str,
    "interval": float,
    "count": int,
    "qos": int,
    "outbox": Path,
    "outbox_max": int,
    "outbox_full": str,
    "inflight": int,
    "flush_timeout": float,
    "offline_limit": float,
    "flow_control": bool,
    "receipts": bool,
    "receipt_timeout": float,
    "clock_wait": float,
    "mqtt_version": str,
    "seed": int,
    "pin": str,
    "w1_id": str,
    "i2c_address": int,
    "health_interval": float,
}
_CHOICES = {
    "transport": TRANSPORTS,
    "sensor": SENSORS,
    "outbox_full": FULL_POLICIES,
    "qos": (0, 1),
    "mqtt_version": MQTT_VERSIONS,
}
_MINIMUMS: dict[str, float] = {
    "interval": 0,
    "count": 1,
    "outbox_max": 1,
    "inflight": 1,
    "flush_timeout": 0,
    "offline_limit": 0,
    "receipt_timeout": 1,
    "clock_wait": 0,
    "health_interval": 1,
}
#: What a remote config (sensors/<id>/config/desired) may set; the rest is the device's.
REMOTE_SETTINGS = (
    "interval",
    "sensor",
    "health_interval",
    "qos",
    "pin",
    "w1_id",
    "i2c_address",
    "receipt_timeout",
)


def _check(name: str, raw: Any, source: str) -> Any:
    """One setting's value, converted and checked against its choices and minimum."""
    value = _convert(name, raw, source, _KINDS[name])
    if name in _CHOICES and value not in _CHOICES[name]:
        allowed = ", ".join(str(c) for c in _CHOICES[name])
        raise ConfigError(f"{source}: {raw!r} is not one of {allowed}")
    if name in _MINIMUMS and value < _MINIMUMS[name]:
        raise ConfigError(f"{source}: {name} must be at least {_MINIMUMS[name]}, not {raw!r}")
    return value


def check_remote_settings(settings: Mapping[str, Any], source: str) -> dict[str, Any]:
    """A remote config's settings, checked by the rules of the local ones; ConfigError
    ("unknown setting X", or the local rule's message) refuses the config as a whole."""
    unknown = sorted(set(settings) - set(REMOTE_SETTINGS))
    if unknown:
        raise ConfigError(f"{source}: unknown setting {', '.join(unknown)}")
    return {name: _check(name, raw, f"{source}: {name}") for name, raw in settings.items()}


def load_config(
    sensor_id: str,
    flags: Mapping[str, Any],
    environ: Mapping[str, str] | None = None,
    config_file: Path | None = None,
    default_broker: Callable[[], Mapping[str, Any] | None] | None = None,
) -> AgentConfig:
    """Build the agent's config; `default_broker()` (broker, cert, key, ca...) fills in
    last, called only when neither a flag, the environment nor the file names a broker."""
    environ = os.environ if environ is None else environ
    try:
        check_sensor_id(sensor_id)
    except PayloadError as exc:
        raise ConfigError(f"--id: {exc}") from None
    settings = Settings(flags, environ, config_file)
    unknown = settings.unknown_file_keys(set(_KINDS) | {"id"})
    if unknown:
        raise ConfigError(f"--config {config_file}: unknown setting(s) {', '.join(unknown)}")

    values: dict[str, Any] = {}
    for name in _KINDS:
        found = settings.get(name)
        if found is None:
            continue
        raw, source = found
        values[name] = (_check(name, raw, source), source)

    defaults = default_broker() if "broker" not in values and default_broker else None
    if defaults:
        for name in ("broker", "cert", "key", "ca", "receipts", "clock_wait"):
            if name not in values and defaults.get(name) is not None:
                values[name] = (_KINDS[name](defaults[name]), "the local stack")
    if "broker" not in values:
        raise ConfigError(
            "no broker given: pass --broker mqtts://HOST:8883 (or set DEVICE_AGENT_BROKER), "
            "or start the local stack with `cloud local up`"
        )
    broker = BrokerUrl.parse(values["broker"][0], values["broker"][1])
    tls_given = [n for n in ("cert", "key", "ca") if n in values]
    tls: TlsFiles | None = None
    if tls_given:
        missing = [f"--{n}" for n in ("cert", "key", "ca") if n not in values]
        if missing:
            raise ConfigError(
                f"mutual TLS needs --cert, --key and --ca; missing {', '.join(missing)}"
            )
        tls = TlsFiles(values["cert"][0], values["key"][0], values["ca"][0])

    plain = {k: v[0] for k, v in values.items() if k not in ("broker", "cert", "key", "ca")}
    if "outbox" not in plain:
        plain["outbox"] = default_outbox(sensor_id)
    flagged = frozenset(n for n in _KINDS if settings.from_flag(n))
    return AgentConfig(sensor_id=sensor_id, broker=broker, tls=tls, from_flags=flagged, **plain)
