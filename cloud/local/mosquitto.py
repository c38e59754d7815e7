"""A Mosquitto broker configured the way the project needs it, run as a child process.

Mutual TLS with the local CA, each client named by its certificate (never its client id),
an ACL that lets a device publish only its own readings and status, persistence, and queues
sized for the ingest path. The tests and `cloud local up` use the same config.
"""

from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from cloud.errors import LocalStackError
from cloud.local.ports import wait_listening
from device.payload import MAX_PAYLOAD_BYTES

#: Identities that may read every device's topics and send devices their receipts: the
#: ingest bridge, and further ingest instances sharing the load (`cloud ingest --client-id`).
#: Each needs an identity of its own, since the broker names a client by its certificate.
READERS = ("ingest", *(f"ingest-{n}" for n in range(2, 10)))
#: The identity `cloud config` and `cloud devices` connect as: a reader of its own, since
#: the broker takes a client's id from its certificate (use_username_as_clientid), and a
#: command connecting as `ingest` would take over the running ingest's session.
FLEET_IDENTITY = "fleet"
#: Identities that only watch the fleet (`cloud dashboard`, `cloud alerts watch`): they may
#: read every device's topics and write nothing. One each, for the same reason as above.
WATCHERS = ("dashboard", "alerts")
#: Every identity the broker's ACL makes a reader.
BROKER_READERS = (*READERS, FLEET_IDENTITY)
#: Messages a persistent-session client may have queued while offline or slow. The default
#: (1000) silently dropped most of a 2,000-message burst for a slow subscriber here.
MAX_QUEUED_MESSAGES = 1_000_000
MAX_INFLIGHT_MESSAGES = 1000
#: The largest MQTT packet the broker takes: a reading at the payload contract's limit, its
#: topic (sensors/ and an id of up to 128 characters) and MQTT 5's properties. A bigger one
#: ends the sender's connection, before it costs the broker's memory or anyone's disk.
MAX_PACKET_BYTES = MAX_PAYLOAD_BYTES + 1024
#: Open files the broker may hold (one per connection, plus its own): room for a fleet of
#: thousands when the system allows it.
MAX_OPEN_FILES = 65536


#: What a client of the plaintext listener may do: read readings and statuses, for a
#: dashboard or a legacy subscriber on this machine. It has no identity, so it may publish
#: nothing (it could otherwise pose as any device).
PLAINTEXT_ACL = "topic read sensors/+/data\ntopic read sensors/+/status\n"


def acl_text(
    readers: tuple[str, ...] = BROKER_READERS, watchers: tuple[str, ...] = WATCHERS
) -> str:
    lines = [
        "# Devices: publish only their own readings, status, reported config and health;",
        "# read their own topics (receipts, desired config). The name is the certificate's,",
        "# never the client id.",
        "pattern write sensors/%u/data",
        "pattern write sensors/%u/status",
        "pattern write sensors/%u/config/reported",
        "pattern write sensors/%u/health",
        "pattern read sensors/%u/#",
        "",
    ]
    for name in readers:
        lines += [
            f"user {name}",
            "topic read sensors/#",
            "topic write sensors/+/receipt",
            "topic write sensors/+/config/desired",
            "",
        ]
    for name in watchers:
        lines += [f"user {name}", "topic read sensors/#", ""]
    return "\n".join(lines)


@dataclass(frozen=True)
class MosquittoConfig:
    folder: Path  # config, ACL, persistence and log go here
    port: int
    ca: Path
    cert: Path
    key: Path
    host: str = "127.0.0.1"
    readers: tuple[str, ...] = BROKER_READERS
    plaintext_port: int | None = None  # loopback, anonymous, read-only: only when asked for
    crl: Path | None = None
    extra: tuple[str, ...] = field(default=())

    @property
    def conf_path(self) -> Path:
        return self.folder / "mosquitto.conf"

    @property
    def log_path(self) -> Path:
        return self.folder / "mosquitto.log"

    def render(self) -> str:
        lines = [
            "# Written by sensor-pipeline; regenerated on each start.",
            # Each listener has its own authentication and ACL: the TLS one names clients by
            # certificate, the optional plaintext one is anonymous and read-only.
            "per_listener_settings true",
            "persistence true",
            f"persistence_location {self.folder}/",
            "autosave_interval 30",
            f"max_queued_messages {MAX_QUEUED_MESSAGES}",
            "max_queued_bytes 0",
            f"max_inflight_messages {MAX_INFLIGHT_MESSAGES}",
            f"max_packet_size {MAX_PACKET_BYTES}",
            # Readings are small packets: send each at once rather than wait for more.
            "set_tcp_nodelay true",
            f"log_dest file {self.log_path}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
            "log_timestamp_format %Y-%m-%dT%H:%M:%S",
            "",
            f"listener {self.port} {self.host}",
            "allow_anonymous false",
            f"acl_file {self.folder / 'acl'}",
            f"cafile {self.ca}",
            f"certfile {self.cert}",
            f"keyfile {self.key}",
            "require_certificate true",
            "use_identity_as_username true",
            # The client id is the certificate's name too, whatever the client asks for: a
            # device cannot take over ingest's session (and the readings queued in it).
            "use_username_as_clientid true",
        ]
        if self.crl is not None:
            lines.append(f"crlfile {self.crl}")
        if self.plaintext_port is not None:
            lines += [
                "",
                f"listener {self.plaintext_port} 127.0.0.1",
                "allow_anonymous true",
                f"acl_file {self.folder / 'acl-plaintext'}",
            ]
        if os.geteuid() == 0:
            # As root Mosquitto drops to the `mosquitto` user, which cannot read our 0700
            # folders; stay root (it warns in its log) rather than loosen the key's mode.
            lines.append("user root")
        lines.extend(self.extra)
        return "\n".join(lines) + "\n"

    def write(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        (self.folder / "acl").write_text(acl_text(self.readers))
        (self.folder / "acl-plaintext").write_text(PLAINTEXT_ACL)
        self.conf_path.write_text(self.render())


def mosquitto_binary() -> str:
    """The broker binary: $MOSQUITTO_BIN, else `mosquitto` on PATH or in the sbin folders."""
    chosen = os.environ.get("MOSQUITTO_BIN")
    if chosen:
        if not os.access(chosen, os.X_OK):
            raise LocalStackError(f"MOSQUITTO_BIN: {chosen} is not an executable file")
        return chosen
    search = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin"])
    found = shutil.which("mosquitto", path=search)
    if found is None:
        raise LocalStackError(
            "mosquitto is not installed: run `sudo apt-get install mosquitto` (Debian, Ubuntu, "
            "Raspberry Pi OS) or `brew install mosquitto`"
        )
    return found


def _allow_open_files() -> None:
    """Raise this process's soft limit on open files to its hard one (at most
    MAX_OPEN_FILES): a shell's or systemd's default of 1024 would cap the broker at about a
    thousand connections, and clients past it see refusals that look like TLS errors."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = MAX_OPEN_FILES if hard == resource.RLIM_INFINITY else min(hard, MAX_OPEN_FILES)
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


class Mosquitto:
    """One broker process: start it, wait until it listens, stop or kill it."""

    def __init__(self, config: MosquittoConfig) -> None:
        self.config = config
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 15.0) -> None:
        binary = mosquitto_binary()
        self.config.write()
        _allow_open_files()  # inherited by the broker: a connection is a descriptor
        with self.config.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [binary, "-c", str(self.config.conf_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        wait_listening(
            self.config.port, self.process, "mosquitto", str(self.config.log_path), timeout
        )

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM: Mosquitto saves its persistence file, then exits."""
        self._signal(signal.SIGTERM, timeout)

    def kill(self) -> None:
        """SIGKILL: no chance to save anything, as in a power cut of the broker."""
        self._signal(signal.SIGKILL, 10.0)

    def _signal(self, sig: signal.Signals, timeout: float) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(sig)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
