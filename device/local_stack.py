"""Finding the local stack (`cloud local up`) from the folder the agent is run in.

The agent never imports the cloud side: it reads the stack's documented state file,
`var/local/stack.json` in that folder (README, "The local stack"), and takes a device's
certificate from `certs/<id>/`. A device with no certificate yet gets one from the local CA
through the `cloud provision` command, when the cloud half is installed beside the agent.
On a Raspberry Pi there is no such file, and nothing here runs.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from device.errors import ConfigError
from device.payload import check_sensor_id

STATE_FILE = Path("var") / "local" / "stack.json"
STATE_VERSION = 2
_SUPERVISOR = b"cloud.local.supervisor"


@dataclass(frozen=True)
class LocalStack:
    root: Path
    mqtt_port: int

    @property
    def broker_url(self) -> str:
        return f"mqtts://127.0.0.1:{self.mqtt_port}"

    def identity(self, sensor_id: str) -> dict[str, Path]:
        folder = self.root / "certs" / check_sensor_id(sensor_id)
        return {"cert": folder / "cert.pem", "key": folder / "key.pem", "ca": folder / "ca.pem"}


def _supervisor_runs(pid: object) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        return _SUPERVISOR in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def find(folder: Path) -> LocalStack | None:
    """The stack running from `folder`, or None (no state file, or its supervisor is gone)."""
    try:
        raw = json.loads((folder / STATE_FILE).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(raw, dict) or raw.get("version") != STATE_VERSION:
        return None
    port = raw.get("mqtt_port")
    if not isinstance(port, int) or not _supervisor_runs(raw.get("supervisor_pid")):
        return None
    return LocalStack(folder.resolve(), port)


def provision(stack: LocalStack, sensor_ids: list[str]) -> None:
    """Certificates from the local CA for the ids that have none, in one `cloud provision`."""
    missing = [i for i in sensor_ids if not stack.identity(i)["key"].exists()]
    if not missing:
        return
    argv = [sys.executable, "-m", "cloud", "provision", "--target", "local"]
    for sensor_id in missing:
        argv += ["--id", sensor_id]
    try:
        proc = subprocess.run(
            argv, cwd=stack.root, capture_output=True, text=True, timeout=300, check=False
        )
    except OSError as exc:
        raise ConfigError(f"cannot run `cloud provision`: {exc}") from None
    if proc.returncode != 0:
        last = (proc.stderr.strip() or proc.stdout.strip() or "no output").splitlines()[-1]
        raise ConfigError(
            f"no certificate for {missing[0]} in {stack.root / 'certs'} and `cloud provision "
            f"--id {missing[0]}` failed: {last}"
        )


def device_defaults(
    sensor_ids: list[str], folder: Path | None = None
) -> dict[str, dict[str, Any]] | None:
    """Per device, what `device-agent` needs to reach the local stack; None if none runs."""
    stack = find(Path.cwd() if folder is None else folder)
    if stack is None:
        return None
    for sensor_id in sensor_ids:
        check_sensor_id(sensor_id)  # before any path is made from it
    provision(stack, sensor_ids)
    # Receipts: the local stack's ingest confirms each write (Mosquitto's PUBACK alone does
    # not survive a broker crash). No wait for a synchronised clock: the stack runs on a
    # workstation, where the agent and the table share the same clock anyway.
    return {
        i: {"broker": stack.broker_url, **stack.identity(i), "receipts": True, "clock_wait": 0}
        for i in sensor_ids
    }
