"""`cloud local up | down | status`: Mosquitto, moto's server and `cloud ingest`, on loopback.

The stack belongs to the project folder it was started from: its state (ports, process ids,
log paths) is in `var/local/stack.json` there, certificates in `certs/`. Commands run from
that folder find it by themselves; `device-agent --id sensor-3` needs no other flag.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cloud.aws import TABLE_NAME, Endpoint
from cloud.errors import LocalStackError
from cloud.local.mosquitto import Mosquitto, MosquittoConfig, mosquitto_binary
from cloud.local.moto import MotoServer
from cloud.local.ports import free_port, port_is_free, wait_for_file
from cloud.local_ca import Identity, LocalCA, certs_dir
from cloud.revocation import ensure_crl
from cloud.table import create_table

PREFERRED_MQTT_PORT = 8883
PREFERRED_MOTO_PORT = 5000
EXPORTS_BUCKET = "sensor-exports"
INGEST_IDENTITY = "ingest"
BROKER_IDENTITY = "local-broker"


def state_dir(root: Path) -> Path:
    return root / "var" / "local"


@dataclass
class StackState:
    root: str
    mqtt_port: int
    moto_port: int
    table: str = TABLE_NAME
    bucket: str = EXPORTS_BUCKET
    pids: dict[str, int] = field(default_factory=dict)
    logs: dict[str, str] = field(default_factory=dict)
    plaintext_port: int | None = None

    @property
    def broker_url(self) -> str:
        return f"mqtts://127.0.0.1:{self.mqtt_port}"

    @property
    def endpoint(self) -> Endpoint:
        return Endpoint.local(self.moto_port)

    @property
    def path(self) -> Path:
        return state_dir(Path(self.root)) / "stack.json"

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2))
        tmp.replace(self.path)

    @classmethod
    def load(cls, root: Path) -> StackState | None:
        path = state_dir(root) / "stack.json"
        try:
            return cls(**json.loads(path.read_text()))
        except FileNotFoundError:
            return None
        except (ValueError, TypeError) as exc:
            raise LocalStackError(
                f"{path} is damaged ({exc}); delete it and run `cloud local down`"
            ) from None


def _alive(pid: int, needle: str) -> bool:
    """Is `pid` running and still ours (its command line names `needle`)? PIDs get reused."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return False
    return needle in cmdline


_NEEDLES = {"mosquitto": "mosquitto", "moto": "moto.server", "ingest": "cloud ingest"}


def process_status(state: StackState) -> dict[str, bool]:
    return {name: _alive(pid, _NEEDLES.get(name, name)) for name, pid in state.pids.items()}


def running_state(root: Path) -> StackState | None:
    """The stack started from `root`, if its broker still runs."""
    state = StackState.load(root)
    if state is None or not process_status(state).get("mosquitto"):
        return None
    return state


def local_ca(root: Path) -> LocalCA:
    return LocalCA.create(certs_dir(root) / "local-ca")


def device_identity(root: Path, device_id: str, force: bool = False) -> Identity:
    """The device's files under certs/<id>/, issued by the local CA when missing."""
    folder = certs_dir(root) / device_id
    identity = Identity(folder / "cert.pem", folder / "key.pem", folder / "ca.pem")
    if identity.key.exists() and identity.cert.exists() and not force:
        return identity
    return local_ca(root).issue(device_id, folder, force=force)


def device_defaults(device_id: str, root: Path | None = None) -> dict[str, Any] | None:
    """What `device-agent` needs to reach the local stack, or None if none runs here."""
    root = Path.cwd() if root is None else root
    state = running_state(root)
    if state is None:
        return None
    ident = device_identity(root, device_id)
    # Receipts: the local stack's ingest confirms each write (Mosquitto's PUBACK alone does
    # not survive a broker crash).
    return {
        "broker": state.broker_url,
        "cert": ident.cert,
        "key": ident.key,
        "ca": ident.ca,
        "receipts": True,
    }


def _pick_port(preferred: int | None, fallback: int) -> int:
    if preferred is not None:
        if not port_is_free(preferred):
            raise LocalStackError(
                f"port {preferred} on 127.0.0.1 is in use; choose another or omit it"
            )
        return preferred
    return fallback if port_is_free(fallback) else free_port()


def up(
    root: Path,
    mqtt_port: int | None = None,
    moto_port: int | None = None,
    plaintext_port: int | None = None,
    with_ingest: bool = True,
) -> StackState:
    root = root.resolve()
    existing = StackState.load(root)
    if existing is not None:
        alive = [name for name, ok in process_status(existing).items() if ok]
        if alive:
            raise LocalStackError(
                f"a local stack already runs from {root} ({', '.join(alive)}; broker "
                f"{existing.broker_url}); `cloud local down` stops it"
            )
    mosquitto_binary()  # fail before anything starts if the broker is missing
    sdir = state_dir(root)
    logs = sdir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    ca = local_ca(root)
    ca.issue(
        BROKER_IDENTITY,
        certs_dir(root) / BROKER_IDENTITY,
        server_names=("127.0.0.1", "localhost"),
        force=True,
    )
    device_identity(root, INGEST_IDENTITY)
    if plaintext_port is not None and not port_is_free(plaintext_port):
        raise LocalStackError(f"port {plaintext_port} on 127.0.0.1 is in use; choose another")
    state = StackState(
        root=str(root),
        mqtt_port=_pick_port(mqtt_port, PREFERRED_MQTT_PORT),
        moto_port=0,
        plaintext_port=plaintext_port,
    )
    state.moto_port = _pick_port(moto_port, PREFERRED_MOTO_PORT)
    if state.moto_port == state.mqtt_port:
        state.moto_port = free_port()

    broker = _broker(root, state)
    moto = MotoServer(state.moto_port, logs / "moto.log")
    state.logs = {"mosquitto": str(broker.config.log_path), "moto": str(moto.log_path)}
    started: list[int] = []
    try:
        broker.start()
        assert broker.pid is not None
        state.pids["mosquitto"] = broker.pid
        started.append(broker.pid)
        moto.start()
        assert moto.process is not None
        state.pids["moto"] = moto.process.pid
        started.append(moto.process.pid)
        create_table(state.endpoint.client("dynamodb"), state.table)
        state.endpoint.client("s3").create_bucket(Bucket=state.bucket)
        if with_ingest:
            log_path = logs / "ingest.log"
            state.logs["ingest"] = str(log_path)
            state.save()  # ingest reads the stack's state to find broker and endpoint
            ready = sdir / "ingest.ready"
            ready.unlink(missing_ok=True)
            with log_path.open("ab") as log:
                proc = subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "cloud",
                        "ingest",
                        "--target",
                        "local",
                        "--ready-file",
                        str(ready),
                    ],
                    cwd=root,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                )
            state.pids["ingest"] = proc.pid
            started.append(proc.pid)
            # Readings published before ingest subscribes would still be queued for its
            # session, but a first-ever session does not exist yet: wait until it does.
            wait_for_file(ready, proc, "cloud ingest", str(log_path))
        state.save()
    except BaseException:
        for pid in reversed(started):
            _terminate(pid)
        state.path.unlink(missing_ok=True)
        raise
    return state


def _broker(root: Path, state: StackState) -> Mosquitto:
    """The stack's broker, always with the local CA's revocation list applied."""
    server = certs_dir(root) / BROKER_IDENTITY
    return Mosquitto(
        MosquittoConfig(
            folder=state_dir(root) / "mosquitto",
            port=state.mqtt_port,
            ca=local_ca(root).cert_path,
            cert=server / "cert.pem",
            key=server / "key.pem",
            plaintext_port=state.plaintext_port,
            crl=ensure_crl(root),
        )
    )


def restart_broker(root: Path) -> int:
    """Restart the stack's Mosquitto (to apply a new CRL); returns its new pid.

    SIGHUP would re-read the CRL but leave a revoked device's open connection alone, so it
    is a restart: the other devices reconnect and replay their outboxes, ingest resumes
    its persistent session.
    """
    root = root.resolve()
    state = running_state(root)
    if state is None:
        raise LocalStackError(f"no local broker runs from {root}; `cloud local up` starts one")
    _terminate(state.pids["mosquitto"])
    broker = _broker(root, state)
    broker.start()
    assert broker.pid is not None
    state.pids["mosquitto"] = broker.pid
    state.save()
    return broker.pid


def _terminate(pid: int, timeout: float = 10.0) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            # Our own children must be reaped, or they linger as zombies.
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return
        except ChildProcessError:
            if not Path(f"/proc/{pid}").exists():
                return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def down(root: Path) -> list[str]:
    """Stop what `up` started from `root` (ingest first, so it acks what it wrote)."""
    root = root.resolve()
    state = StackState.load(root)
    if state is None:
        return []
    stopped: list[str] = []
    alive = process_status(state)
    for name in ("ingest", "mosquitto", "moto"):
        if name in state.pids and alive.get(name):
            _terminate(state.pids[name])
            stopped.append(name)
    state.path.unlink(missing_ok=True)
    return stopped
