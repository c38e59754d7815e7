"""One MQTT session over paho-mqtt, for the device agent and for `cloud ingest` alike.

It holds what both need from paho and must not differ between them: the client (mutual
TLS, or TLS against the system CAs), a session the broker keeps while we are away (MQTT 5:
clean_start False and an expiry interval; 3.1.1: clean_session False), `auto`'s fall back
from MQTT 5 to 3.1.1 when the broker refuses 5, what a failed connect attempt or a refused
CONNACK means (give up, or retry), and the backoff between attempts. Each user keeps its own
network loop, callbacks and policy (the agent's status and receipts, ingest's manual acks,
receive maximum and shared subscription) and words what it tells the user.

It lives in the device package so the agent installs without the cloud half.
"""

from __future__ import annotations

import enum
import errno
import logging
import resource
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from device.backoff import Backoff
from device.config import MQTT_VERSIONS

log = logging.getLogger(__name__)

KEEPALIVE_SECONDS = 30
#: CONNACK reason codes that retrying cannot fix (MQTT 5 values; paho maps a 3.1.1
#: CONNACK's return code onto them).
FATAL_CONNACK = frozenset(
    {
        0x85,  # client identifier not valid
        0x86,  # bad user name or password
        0x87,  # not authorized
        0x8A,  # banned
        0x8C,  # bad authentication method
        0x90,  # topic name invalid (the will's)
        0x99,  # payload format invalid (the will's)
    }
)
#: CONNACK of a broker that does not speak the protocol version we asked for.
UNSUPPORTED_VERSION = 0x84
_PROTOCOLS = {"5": MQTTProtocolVersion.MQTTv5, "3.1.1": MQTTProtocolVersion.MQTTv311}


class TlsPaths(Protocol):
    """The three files of mutual TLS (device.config.TlsFiles, cloud's Identity)."""

    @property
    def cert(self) -> Path: ...

    @property
    def key(self) -> Path: ...

    @property
    def ca(self) -> Path: ...


@dataclass(frozen=True)
class SessionSpec:
    client_id: str
    host: str
    port: int
    #: How messages name the broker (the agent: its URL; ingest: host:port).
    label: str
    #: auto, 5 or 3.1.1; auto starts with 5 and falls back once the broker refuses it.
    mqtt_version: str
    #: MQTT 5: how long the broker keeps our session while we are away.
    session_expiry_seconds: int
    tls: TlsPaths | None = None  # mutual TLS
    system_tls: bool = False  # without `tls`: TLS, the broker checked against the system CAs
    receive_maximum: int | None = None  # MQTT 5: unacknowledged messages the broker may send
    manual_ack: bool = False  # the user acknowledges what it received (Session.client.ack)

    def __post_init__(self) -> None:
        if self.mqtt_version not in MQTT_VERSIONS:
            raise ValueError(f"mqtt_version {self.mqtt_version!r}: one of auto, 5, 3.1.1")


@dataclass(frozen=True)
class ConnectFailure:
    """Why a connect attempt failed, in a line for the log."""

    message: str
    #: The broker's certificate failed verification: retrying cannot fix that.
    unverified: ssl.SSLCertVerificationError | None = None

    @property
    def fatal(self) -> bool:
        return self.unverified is not None


class Refusal(enum.Enum):
    """What a CONNACK's failure reason means."""

    FALL_BACK = "fall back"  # auto, and the broker refused MQTT 5: 3.1.1 next, at once
    NO_MQTT_5 = "no MQTT 5"  # refused MQTT 5, and 3.1.1 was not allowed: fatal
    NO_MQTT_311 = "no MQTT 3.1.1"  # refused 3.1.1 too: fatal
    FATAL = "fatal"  # identity or authorization (FATAL_CONNACK): fatal
    RETRY = "retry"  # anything else: it may pass


class Session:
    """The paho client of one MQTT session, remade when `auto` falls back to 3.1.1.

    `configure` sets the user's callbacks and options on each client made."""

    def __init__(
        self,
        spec: SessionSpec,
        configure: Callable[[mqtt.Client], None],
        backoff: Backoff | None = None,
    ) -> None:
        self.spec = spec
        self.backoff = backoff or Backoff()
        #: The version spoken now: 5 or 3.1.1.
        self.version = "3.1.1" if spec.mqtt_version == "3.1.1" else "5"
        self._configure = configure
        self._fall_back = False
        self.client = self._make_client()

    def _make_client(self) -> mqtt.Client:
        spec = self.spec
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=spec.client_id,
            protocol=_PROTOCOLS[self.version],
            # 3.1.1 keeps the session (and what was queued for us) with clean_session=False;
            # MQTT 5 says so at connect (clean_start=False, an expiry interval).
            clean_session=None if self.version == "5" else False,
            manual_ack=spec.manual_ack,
        )
        if spec.tls is not None:
            client.tls_set(
                ca_certs=str(spec.tls.ca),
                certfile=str(spec.tls.cert),
                keyfile=str(spec.tls.key),
                tls_version=ssl.PROTOCOL_TLS_CLIENT,
            )
        elif spec.system_tls:
            client.tls_set(tls_version=ssl.PROTOCOL_TLS_CLIENT)
        self._configure(client)
        return client

    def connect(self) -> ConnectFailure | None:
        """One attempt: TCP, the TLS handshake, CONNECT queued (the CONNACK comes to the
        client's on_connect). None once done, else why it failed."""
        label = self.spec.label
        try:
            self._connect()
        except ssl.SSLCertVerificationError as exc:
            return ConnectFailure(
                f"broker {label}: certificate verification failed ({exc})", unverified=exc
            )
        except ssl.SSLError as exc:
            # A handshake the broker aborted: most often our certificate is not trusted
            # there (revoked, another CA, expired). Retried: it may be a blip.
            return ConnectFailure(f"TLS handshake with {label} failed ({exc.reason or exc})")
        except OSError as exc:  # TimeoutError included
            if exc.errno == errno.EMFILE:
                soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
                return ConnectFailure(
                    f"cannot connect to {label}: this process is out of file descriptors "
                    f"(ulimit -n is {soft}; raise it, or have this process hold fewer connections)"
                )
            return ConnectFailure(f"cannot reach broker {label} ({exc.strerror or exc})")
        sock = self.client.socket()
        if isinstance(sock, socket.socket):  # an ssl.SSLSocket is one
            # paho leaves Nagle on: a small packet written while the last one is unacked
            # waits for the broker's delayed ACK (40 ms here), twice in a config round trip.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return None

    def _connect(self) -> None:
        spec = self.spec
        if self.version == "3.1.1":
            self.client.connect(spec.host, spec.port, keepalive=KEEPALIVE_SECONDS)
            return
        # paho's Properties.__init__ has no annotations.
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = spec.session_expiry_seconds
        if spec.receive_maximum is not None:
            props.ReceiveMaximum = spec.receive_maximum
        self.client.connect(
            spec.host,
            spec.port,
            keepalive=KEEPALIVE_SECONDS,
            clean_start=False,
            properties=props,
        )

    def refused(self, reason: ReasonCode) -> Refusal:
        """What a failed CONNACK means; on FALL_BACK the next client speaks 3.1.1."""
        if reason.value == UNSUPPORTED_VERSION:
            if self.version == "3.1.1":
                return Refusal.NO_MQTT_311
            if self.spec.mqtt_version != "auto":
                return Refusal.NO_MQTT_5
            log.info("broker %s does not speak MQTT 5; using 3.1.1", self.spec.label)
            self.version, self._fall_back = "3.1.1", True
            return Refusal.FALL_BACK
        if reason.value in FATAL_CONNACK:
            return Refusal.FATAL
        return Refusal.RETRY

    def renew(self) -> bool:
        """After the connection closed: True if it fell back to 3.1.1 and `client` is a new
        client to connect at once (the broker answered, in another version)."""
        if not self._fall_back:
            return False
        self._fall_back = False
        self.client = self._make_client()
        return True

    def connected(self) -> None:
        """The broker accepted us: the next outage backs off from the start."""
        self.backoff.reset()

    def retry_delay(self) -> float:
        """Seconds to wait before the next attempt (capped exponential, with jitter)."""
        return self.backoff.next_delay()
