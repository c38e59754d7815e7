"""A bench's own Mosquitto: a temporary CA, mutual TLS and the project's ACL, on a free port
of 127.0.0.1 (never 1883), and a reader on sensors/+/data when the bench needs one.

agent_publish.py, agent_footprint.py, receipts.py and ingest.py start theirs with it; a bench
imports it inside its `harness.venv_imports` block, since it needs the project.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from harness import BenchError

from cloud.errors import PipelineError
from cloud.identity.local_ca import Identity, LocalCA
from cloud.local.mosquitto import Mosquitto, MosquittoConfig
from cloud.local.ports import free_port

HOST = "127.0.0.1"
#: Never the well-known port: a broker someone runs on this machine must not be touched.
FORBIDDEN_PORT = 1883


def pick_port() -> int:
    port = free_port(HOST)
    while port == FORBIDDEN_PORT:  # practically never: free_port gives an ephemeral port
        port = free_port(HOST)
    return port


@contextlib.contextmanager
def setting_up() -> Iterator[None]:
    """What fails while certificates are made and servers started is the set-up's fault."""
    try:
        yield
    except (PipelineError, OSError) as exc:
        raise BenchError(f"setup failed: {exc}") from exc


@dataclass(frozen=True)
class Broker:
    root: Path
    ca: LocalCA
    port: int

    def identity(self, name: str) -> Identity:
        """A client certificate; client id = certificate name, as the ACL (sensors/%u/data)
        expects."""
        return self.ca.issue(name, self.root / "devices" / name)


def start_broker(root: Path, stack: contextlib.ExitStack) -> Broker:
    """A CA and a server certificate under `root`, and Mosquitto with them; `stack` stops it."""
    ca = LocalCA.create(root / "ca")
    server = ca.issue("localhost", root / "server", server_names=(HOST, "localhost"))
    port = pick_port()
    config = MosquittoConfig(
        folder=root / "mosquitto", port=port, ca=ca.cert_path, cert=server.cert, key=server.key
    )
    broker = Mosquitto(config)
    # Registered before start(): a broker that started but never listened is stopped too.
    stack.callback(broker.stop)
    broker.start()
    return Broker(root, ca, port)


_READER = """
import sys, paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
host, port, ca, cert, key = sys.argv[1], int(sys.argv[2]), *sys.argv[3:6]
c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-reader",
                protocol=MQTTProtocolVersion.MQTTv5)
c.tls_set(ca, cert, key)
c.on_connect = lambda c, *_: c.subscribe("sensors/+/data", qos=0)
c.on_subscribe = lambda *_: print("ready", flush=True)
c.connect(host, port)
c.loop_forever()
"""


def start_subscriber(port: int, identity: Identity, stack: contextlib.ExitStack) -> None:
    """A reader on sensors/+/data, as ingest would be: Mosquitto drops (PUBACK "no matching
    subscribers") what nobody subscribes to, and the agent keeps such readings to resend.
    It runs in a process of its own, so its thread takes no GIL time from the baseline."""
    files = [str(identity.ca), str(identity.cert), str(identity.key)]
    reader = subprocess.Popen(
        [sys.executable, "-c", _READER, HOST, str(port), *files],
        stdout=subprocess.PIPE,
        text=True,
    )
    stack.callback(reader.wait)
    stack.callback(reader.kill)
    assert reader.stdout is not None
    if reader.stdout.readline().strip() != "ready":
        raise BenchError("the reader on sensors/+/data got no SUBACK")
