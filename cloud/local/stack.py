"""`cloud local up | down | status | reset`: a small real deployment on loopback.

Three parts, kept running by `cloud.local.supervisor`: the table engine (dynalite, DynamoDB's
API over LevelDB), Mosquitto (mutual TLS, ACL, persistence) and `cloud ingest`. The stack
belongs to the project folder it was started from:

- `var/local/stack.json`: its settings (ports, data folder, supervisor pid), kept by `down`
  so the next `up` comes back on the same ports with the same data. Devices find the stack
  through this file: `device-agent --id sensor-3` needs no other flag in this folder.
- `var/local/supervisor.json`: what each part is doing (written by the supervisor only).
- `var/local/logs/`: each part's log and the supervisor's.
- the data folder (`var/local/` unless `up --data-dir` moved it): `table/` (LevelDB),
  `exports/` (what `cloud export` writes by default), `mosquitto/` (the broker's queued
  messages and sessions), `dead-letter.jsonl`. `down` keeps it; `reset` deletes it.
- `certs/`: the local CA and every identity; kept even by `reset`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from cloud.aws import TABLE_NAME, Endpoint
from cloud.errors import LocalStackError
from cloud.identity.local_ca import Identity, LocalCA, certs_dir, private_folder
from cloud.identity.revocation import ensure_crl, reissue_device_local
from cloud.local import table_engine
from cloud.local.mosquitto import MosquittoConfig, mosquitto_binary
from cloud.local.ports import free_port, is_listening, port_is_free
from cloud.local.supervisor import PartSpec, PartStatus, SupervisorStatus

# Where the state file is and its version are a contract with the agent, which reads it
# without importing this package: its home is the agent's side.
from device.local_stack import STATE_FILE, STATE_VERSION

PREFERRED_MQTT_PORT = 8883
PREFERRED_TABLE_PORT = 4567  # dynalite's own default
INGEST_IDENTITY = "ingest"
BROKER_IDENTITY = "local-broker"
#: Start order; `down` stops them the other way round.
PARTS = ("table", "mosquitto", "ingest")
_NEEDLES = {
    "moto": "moto.server",  # the first stack's table, see cloud.local.upgrade
    "table": "serve.js",
    "mosquitto": "mosquitto",
    "ingest": "cloud ingest",
    "supervisor": "cloud.local.supervisor",
}


def state_dir(root: Path) -> Path:
    return root / STATE_FILE.parent


def supervisor_status_path(root: Path) -> Path:
    return state_dir(root) / "supervisor.json"


def alive(pid: int | None, part: str) -> bool:
    """Is `pid` running and still that part (its command line says so)? PIDs get reused."""
    if pid is None:
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return _NEEDLES.get(part, part) in cmdline and "State:\tZ" not in status


@dataclass
class StackState:
    """The stack's settings, in var/local/stack.json."""

    root: str
    mqtt_port: int
    table_port: int
    data_dir: str
    table: str = TABLE_NAME
    plaintext_port: int | None = None
    with_ingest: bool = True
    supervisor_pid: int | None = None
    version: int = STATE_VERSION

    @property
    def broker_url(self) -> str:
        return f"mqtts://127.0.0.1:{self.mqtt_port}"

    @property
    def endpoint(self) -> Endpoint:
        return Endpoint.local(self.table_port)

    @property
    def path(self) -> Path:
        return Path(self.root) / STATE_FILE

    @property
    def data(self) -> Path:
        return Path(self.data_dir)

    @property
    def table_dir(self) -> Path:
        return self.data / "table"

    @property
    def exports_dir(self) -> Path:
        """Where `cloud export` writes and `cloud query` reads by default."""
        return self.data / "exports"

    @property
    def broker_dir(self) -> Path:
        return self.data / "mosquitto"

    @property
    def dead_letter(self) -> Path:
        return self.data / "dead-letter.jsonl"

    @property
    def logs_dir(self) -> Path:
        return state_dir(Path(self.root)) / "logs"

    @property
    def parts(self) -> tuple[str, ...]:
        return PARTS if self.with_ingest else PARTS[:2]

    def supervisor(self) -> SupervisorStatus | None:
        """What the supervisor last wrote, if it still runs."""
        if not alive(self.supervisor_pid, "supervisor"):
            return None
        return SupervisorStatus.load(supervisor_status_path(Path(self.root)))

    @property
    def pids(self) -> dict[str, int]:
        """The running parts' process ids."""
        status = self.supervisor()
        if status is None:
            return {}
        return {n: p.pid for n, p in status.parts.items() if p.pid is not None}

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2))
        tmp.replace(self.path)

    @classmethod
    def load(cls, root: Path) -> StackState | None:
        """The settings, or None if there are none (or only an old version's: see upgrade)."""
        path = root / STATE_FILE
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except ValueError as exc:
            raise LocalStackError(
                f"{path} is damaged ({exc}); delete it and run `cloud local up`"
            ) from None
        if not isinstance(raw, dict) or raw.get("version") != STATE_VERSION:
            return None
        known = {f.name for f in fields(cls)}
        try:
            return cls(**{k: v for k, v in raw.items() if k in known})
        except TypeError as exc:
            raise LocalStackError(
                f"{path} is damaged ({exc}); delete it and run `cloud local up`"
            ) from None


def running_state(root: Path) -> StackState | None:
    """The stack started from `root`, if its supervisor still runs."""
    state = StackState.load(root)
    if state is None or not alive(state.supervisor_pid, "supervisor"):
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
    if force:
        # The one replaced stops working: a copy of it (a stolen Pi's) must not connect.
        return reissue_device_local(root, device_id)
    return local_ca(root).issue(device_id, folder)


# -- the parts -----------------------------------------------------------------------------


def broker_config(state: StackState) -> MosquittoConfig:
    """The stack's broker, always with the local CA's revocation list applied."""
    root = Path(state.root)
    server = certs_dir(root) / BROKER_IDENTITY
    return MosquittoConfig(
        folder=state.broker_dir,
        port=state.mqtt_port,
        ca=local_ca(root).cert_path,
        cert=server / "cert.pem",
        key=server / "key.pem",
        plaintext_port=state.plaintext_port,
        crl=ensure_crl(root),
    )


def part_specs(state: StackState) -> list[PartSpec]:
    """How the supervisor runs each part of `state`."""
    from cloud.table import create_table

    root = Path(state.root)
    logs = state.logs_dir
    broker = broker_config(state)
    ready_file = state_dir(root) / "ingest.ready"
    specs = [
        PartSpec(
            name="table",
            argv=lambda: table_engine.command(state.table_port, state.table_dir),
            log_path=logs / "table.log",
            ready=lambda: is_listening(state.table_port),
            needle=_NEEDLES["table"],
            prepare=lambda: state.table_dir.mkdir(parents=True, exist_ok=True),
            # Idempotent: also makes the table again in a data folder that lost it.
            on_ready=lambda: create_table(state.endpoint.client("dynamodb"), state.table),
        ),
        PartSpec(
            name="mosquitto",
            argv=lambda: [mosquitto_binary(), "-c", str(broker.conf_path)],
            log_path=broker.log_path,
            ready=lambda: is_listening(state.mqtt_port),
            needle=_NEEDLES["mosquitto"],
            prepare=broker.write,
        ),
        PartSpec(
            name="ingest",
            argv=lambda: [
                sys.executable,
                "-m",
                "cloud",
                "ingest",
                "--target",
                "local",
                "--ready-file",
                str(ready_file),
            ],
            log_path=logs / "ingest.log",
            # Readings published before ingest subscribes would still be queued for its
            # session, but a first-ever session does not exist yet: wait until it does.
            ready=ready_file.exists,
            needle=_NEEDLES["ingest"],
            after=("table", "mosquitto"),
            prepare=lambda: ready_file.unlink(missing_ok=True),
            cwd=root,
        ),
    ]
    return [s for s in specs if s.name in state.parts]


# -- up, down, reset -----------------------------------------------------------------------


@dataclass(frozen=True)
class UpResult:
    state: StackState
    notes: list[str]  # what `up` did beyond starting: upgraded, restarted a part, ...


def _pick_port(flag: int | None, saved: int | None, preferred: int, taken: set[int]) -> int:
    if flag is not None:
        if not port_is_free(flag):
            raise LocalStackError(f"port {flag} on 127.0.0.1 is in use; choose another or omit it")
        return flag
    for candidate in (saved, preferred):
        if candidate is not None and candidate not in taken and port_is_free(candidate):
            return candidate
    port = free_port()
    while port in taken:
        port = free_port()
    return port


def up(
    root: Path,
    mqtt_port: int | None = None,
    table_port: int | None = None,
    plaintext_port: int | None = None,
    with_ingest: bool = True,
    data_dir: Path | None = None,
    timeout: float = 60.0,
) -> UpResult:
    """Start the stack from `root`, or what is missing of it; wait until every part runs."""
    from cloud.local import upgrade

    root = root.resolve()
    notes: list[str] = []
    legacy = upgrade.LegacyStack.find(root)
    if legacy is not None:
        notes += legacy.stop_all_but_table()
    saved = StackState.load(root)
    if saved is not None and alive(saved.supervisor_pid, "supervisor"):
        if data_dir is not None and data_dir.resolve() != saved.data.resolve():
            raise LocalStackError(
                f"the stack in {root} runs with its data in {saved.data}; `cloud local down` "
                "first to move it"
            )
        return UpResult(saved, _start_missing(saved, timeout))
    if saved is not None:
        _stop_leftovers(saved)

    mosquitto_binary()  # fail before anything starts if a program is missing
    table_engine.node_binary()
    table_engine.ensure_installed()
    if plaintext_port is not None and not port_is_free(plaintext_port):
        raise LocalStackError(f"port {plaintext_port} on 127.0.0.1 is in use; choose another")
    chosen_mqtt = _pick_port(
        mqtt_port, saved.mqtt_port if saved else None, PREFERRED_MQTT_PORT, set()
    )
    chosen_table = _pick_port(
        table_port, saved.table_port if saved else None, PREFERRED_TABLE_PORT, {chosen_mqtt}
    )
    if saved is not None and chosen_mqtt != saved.mqtt_port:
        notes.append(
            f"broker port {saved.mqtt_port} is taken: the broker now listens on {chosen_mqtt} "
            "(devices started with --broker need the new port)"
        )
    data = (data_dir or (saved.data if saved else state_dir(root))).resolve()
    state = StackState(
        root=str(root),
        mqtt_port=chosen_mqtt,
        table_port=chosen_table,
        data_dir=str(data),
        plaintext_port=plaintext_port,
        with_ingest=with_ingest,
    )
    private_folder(data)
    state.logs_dir.mkdir(parents=True, exist_ok=True)
    ca = local_ca(root)
    ca.issue(
        BROKER_IDENTITY,
        certs_dir(root) / BROKER_IDENTITY,
        server_names=("127.0.0.1", "localhost"),
        force=True,
    )
    device_identity(root, INGEST_IDENTITY)
    supervisor_status_path(root).unlink(missing_ok=True)
    state.save()
    with (state.logs_dir / "supervisor.log").open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cloud.local.supervisor", str(root)],
            cwd=root,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # a Ctrl-C in this terminal is not meant for the stack
        )
    state.supervisor_pid = proc.pid
    state.save()
    try:
        _wait_running(state, timeout, proc)
    except BaseException:
        _stop_supervisor(state)
        raise
    if legacy is not None:
        notes += legacy.move_data_and_stop(state)
    return UpResult(state, notes)


def _start_missing(state: StackState, timeout: float) -> list[str]:
    status = state.supervisor()
    missing = (
        []
        if status is None
        else [n for n in state.parts if status.parts.get(n, PartStatus(n)).state != "running"]
    )
    if not missing:
        return [f"the local stack already runs from {state.root}"]
    assert state.supervisor_pid is not None
    os.kill(state.supervisor_pid, signal.SIGHUP)  # start them now, not after their delay
    _wait_running(state, timeout)
    return [f"started again: {', '.join(missing)}"]


def _wait_running(
    state: StackState, timeout: float, proc: subprocess.Popen[bytes] | None = None
) -> None:
    """Return once every part runs; fail with the reason if the supervisor or a part cannot."""
    deadline = time.monotonic() + timeout
    sup_log = state.logs_dir / "supervisor.log"
    before: dict[str, int] | None = None  # restarts when we began: a part failing while we
    while True:  # wait, three times over, will not come up by waiting longer
        if proc is not None and proc.poll() is not None:
            raise LocalStackError(f"the stack's supervisor exited; see {sup_log}")
        status = SupervisorStatus.load(supervisor_status_path(Path(state.root)))
        parts = status.parts if status is not None else {}
        if parts and all(parts[n].state == "running" for n in state.parts if n in parts):
            return
        if before is None and parts:
            before = {n: p.restarts for n, p in parts.items()}
        failing = [
            p
            for n, p in parts.items()
            if p.state != "running" and p.restarts - (before or {}).get(n, 0) >= 3
        ]
        if failing or time.monotonic() > deadline:
            stuck = failing or [p for p in parts.values() if p.state != "running"]
            first = (stuck or [PartStatus("stack")])[0]
            why = f": {first.last_exit}" if first.last_exit else ""
            where = first.log or str(sup_log)
            raise LocalStackError(f"{first.name} did not start{why}; see {where}")
        time.sleep(0.1)


def terminate(pid: int, timeout: float = 30.0) -> None:
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
            if not Path(f"/proc/{pid}").exists() or "State:\tZ" in _proc_status(pid):
                return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def _proc_status(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return ""


def _stop_supervisor(state: StackState) -> None:
    if alive(state.supervisor_pid, "supervisor"):
        assert state.supervisor_pid is not None
        # It stops the parts, each given 20 s, before it exits itself.
        terminate(state.supervisor_pid, timeout=70.0)
    _stop_leftovers(state)
    state.supervisor_pid = None
    state.save()


def _stop_leftovers(state: StackState) -> list[str]:
    """Parts still running though their supervisor is gone (it was SIGKILLed and they have
    not yet acted on their SIGTERM): stop them, ingest first."""
    status = SupervisorStatus.load(supervisor_status_path(Path(state.root)))
    stopped: list[str] = []
    for name in reversed(PARTS):
        part = status.parts.get(name) if status else None
        if part is not None and alive(part.pid, name):
            assert part.pid is not None
            terminate(part.pid)
            stopped.append(name)
    return stopped


def down(root: Path) -> list[str]:
    """Stop what `up` started from `root`; the data stays. Returns the parts stopped."""
    from cloud.local import upgrade

    root = root.resolve()
    stopped: list[str] = []
    legacy = upgrade.LegacyStack.find(root)
    if legacy is not None:
        stopped += legacy.stop()
    state = StackState.load(root)
    if state is None:
        return stopped
    status = state.supervisor()
    if status is not None:
        stopped += [n for n in reversed(PARTS) if n in status.parts and status.parts[n].pid]
    else:
        stopped += _stop_leftovers(state)
    _stop_supervisor(state)
    return stopped


def reset(root: Path) -> tuple[list[str], list[Path]]:
    """Stop the stack and delete its data (table, exports, broker queues, dead letters).
    Certificates stay. Returns the parts stopped and the paths deleted."""
    root = root.resolve()
    stopped = down(root)
    state = StackState.load(root)
    data = state.data if state is not None else state_dir(root)
    doomed = [data / "table", data / "exports", data / "mosquitto", data / "dead-letter.jsonl"]
    deleted: list[Path] = []
    for path in doomed:
        if path.is_dir():
            shutil.rmtree(path)
            deleted.append(path)
        elif path.exists():
            path.unlink()
            deleted.append(path)
    supervisor_status_path(root).unlink(missing_ok=True)
    return stopped, deleted


def restart_broker(root: Path, timeout: float = 30.0) -> int:
    """Restart the stack's Mosquitto (to apply a new CRL); returns its new pid.

    SIGHUP would re-read the CRL but leave a revoked device's open connection alone, so it
    is a restart: the other devices reconnect and replay their outboxes, ingest resumes
    its persistent session.
    """
    root = root.resolve()
    state = running_state(root)
    if state is None:
        raise LocalStackError(f"no local stack runs from {root}; `cloud local up` starts one")
    before = state.pids.get("mosquitto")
    assert state.supervisor_pid is not None
    os.kill(state.supervisor_pid, signal.SIGUSR1)
    deadline = time.monotonic() + timeout
    while True:
        status = state.supervisor()
        broker = status.parts.get("mosquitto") if status else None
        if broker and broker.state == "running" and broker.pid not in (None, before):
            assert broker.pid is not None
            return broker.pid
        if time.monotonic() > deadline:
            raise LocalStackError(
                f"the broker did not come back in {timeout:g}s; see {state.logs_dir}"
            )
        time.sleep(0.1)


# -- status --------------------------------------------------------------------------------


def folder_size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += (Path(dirpath) / name).stat().st_size
    return total


@dataclass(frozen=True)
class PartView:
    name: str
    running: bool
    state: str
    pid: int | None
    uptime: float | None
    restarts: int
    last_exit: str | None
    log: str


def part_views(state: StackState) -> list[PartView]:
    status = state.supervisor()
    now = time.time()
    views = []
    for name in state.parts:
        part = status.parts.get(name) if status else None
        if part is None:
            views.append(PartView(name, False, "stopped", None, None, 0, None, ""))
            continue
        running = part.state == "running" and alive(part.pid, name)
        uptime = now - part.started_at if part.started_at and part.pid else None
        views.append(
            PartView(
                name,
                running,
                part.state if status else "stopped",
                part.pid,
                uptime,
                part.restarts,
                part.last_exit,
                part.log,
            )
        )
    return views


def data_sizes(state: StackState) -> dict[str, tuple[Path, int]]:
    """Where each kind of data lives, and its size in bytes."""
    places = {
        "table": state.table_dir,
        "exports": state.exports_dir,
        "broker": state.broker_dir,
        "dead letters": state.dead_letter,
    }
    return {k: (p, folder_size(p) if p.exists() else 0) for k, p in places.items()}
