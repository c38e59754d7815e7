"""`cloud local up | down | reset`: start, stop and wipe a small real deployment on loopback.

Three parts (`cloud.local.parts`), kept running by `cloud.local.supervisor`, which `up` starts
in the background and `down` stops; what they keep on disk is in `cloud.local.state`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from cloud.errors import LocalStackError
from cloud.identity.local_ca import certs_dir, private_folder
from cloud.local import table_engine
from cloud.local.identities import BROKER_IDENTITY, INGEST_IDENTITY, device_identity, local_ca
from cloud.local.mosquitto import mosquitto_binary
from cloud.local.ports import free_port, port_is_free
from cloud.local.state import (
    PARTS,
    StackState,
    alive,
    running_state,
    state_dir,
    supervisor_status_path,
)
from cloud.local.supervisor import PartStatus, SupervisorStatus

PREFERRED_MQTT_PORT = 8883
PREFERRED_TABLE_PORT = 4567  # dynalite's own default


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
