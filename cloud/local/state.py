"""The local stack's saved state: where it lives on disk and what is running from it.

The stack belongs to the project folder it was started from:

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

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from cloud.aws import TABLE_NAME, Endpoint
from cloud.errors import LocalStackError
from cloud.local.supervisor import SupervisorStatus

# Where the state file is and its version are a contract with the agent, which reads it
# without importing this package: its home is the agent's side.
from device.local_stack import STATE_FILE, STATE_VERSION

#: Start order; `down` stops them the other way round.
PARTS = ("table", "mosquitto", "ingest")
#: What each part's command line contains: a pid in the saved state is that part only then.
NEEDLES = {
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
    return NEEDLES.get(part, part) in cmdline and "State:\tZ" not in status


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
