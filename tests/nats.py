"""A NATS server with its MQTT listener: a real broker that speaks MQTT 3.1.1 only.

NATS refuses an MQTT 5 CONNECT with "unsupported protocol version", as RabbitMQ before 3.13
and older Mosquitto do. Its MQTT sessions and QoS 1 messages live in JetStream, in a folder
of the test's, so a restart on the same folder keeps them (as Mosquitto's persistence does).
"""

from __future__ import annotations

import shutil
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

from cloud.identity.local_ca import Identity
from cloud.local.ports import free_port, wait_listening

BINARY = shutil.which("nats-server") or "/usr/sbin/nats-server"


@dataclass
class Nats:
    folder: Path
    server: Identity  # its TLS certificate, from the tests' CA
    mqtt_port: int = 0
    process: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        self.mqtt_port = self.mqtt_port or free_port()

    @property
    def conf(self) -> Path:
        return self.folder / "nats.conf"

    def write(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        # No fixed client port: -1 picks a free one, so the machine's own NATS (4222) is
        # never touched. Mutual TLS on the MQTT listener, as devices use it.
        self.conf.write_text(
            f"""server_name: test-{self.mqtt_port}
listen: 127.0.0.1:-1
jetstream {{ store_dir: "{self.folder / "jetstream"}" }}
mqtt {{
  listen: 127.0.0.1:{self.mqtt_port}
  tls {{
    cert_file: "{self.server.cert}"
    key_file: "{self.server.key}"
    ca_file: "{self.server.ca}"
    verify: true
  }}
}}
"""
        )

    def start(self) -> Nats:
        self.write()
        log = self.folder / "nats.log"
        with log.open("ab") as out:
            self.process = subprocess.Popen(
                [BINARY, "-c", str(self.conf)],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        wait_listening(self.mqtt_port, self.process, "nats-server", str(log))
        return self

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)
