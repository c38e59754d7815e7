"""`cloud local up | down | status` as a user runs them, from a project folder of its own."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def cloud(folder: Path, *args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    proc = subprocess.run(
        [sys.executable, "-m", "cloud", *args],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
    )
    return proc.returncode, proc.stdout, proc.stderr


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is gone for our purposes (its parent has not reaped it yet).
    return "State:\tZ" not in Path(f"/proc/{pid}/status").read_text()


@pytest.fixture
def project(tmp_path: Path):
    yield tmp_path
    cloud(tmp_path, "local", "down")


def test_up_status_down_and_again(project: Path):
    code, out, err = cloud(project, "local", "up")
    assert code == 0, err
    state = json.loads((project / "var/local/stack.json").read_text())
    assert set(state["pids"]) == {"mosquitto", "moto", "ingest"}
    assert all(alive(pid) for pid in state["pids"].values())
    assert f"mqtts://127.0.0.1:{state['mqtt_port']}" in out
    assert "var/local" in out  # where the logs are

    code, out, err = cloud(project, "status")
    assert code == 0, err
    assert "target   local" in out and "table    SensorData: 0 item(s)" in out

    code, _, err = cloud(project, "local", "up")
    assert code == 1
    assert "already runs" in err and "cloud local down" in err and "Traceback" not in err

    code, out, err = cloud(project, "local", "down")
    assert code == 0, err
    assert "stopped ingest, mosquitto, moto" in out
    assert not any(alive(pid) for pid in state["pids"].values())

    code, out, _ = cloud(project, "local", "down")
    assert code == 0 and "nothing to stop" in out


def test_a_busy_port_asked_for_is_refused_and_a_busy_default_is_avoided(project: Path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code, _, err = cloud(project, "local", "up", "--mqtt-port", str(port))
        assert code == 1
        assert f"port {port} on 127.0.0.1 is in use" in err
        assert not (project / "var/local/stack.json").exists()

        code, _, err = cloud(project, "local", "up", "--no-ingest", "--moto-port", str(port))
        assert code == 1 and "in use" in err


def test_missing_mosquitto_is_explained_and_nothing_is_left_running(project: Path):
    code, _, err = cloud(project, "local", "up", env={"MOSQUITTO_BIN": str(project / "nope")})
    assert code == 1
    assert "MOSQUITTO_BIN" in err and "Traceback" not in err
    assert not (project / "var/local/stack.json").exists()


def test_plaintext_listener_only_when_asked(project: Path):
    code, _, err = cloud(project, "local", "up", "--no-ingest")
    assert code == 0, err
    conf = (project / "var/local/mosquitto/mosquitto.conf").read_text()
    listeners = [line for line in conf.splitlines() if line.startswith("listener")]
    assert len(listeners) == 1
    assert "require_certificate true" in conf


def test_provision_writes_private_files_and_refuses_to_overwrite(project: Path):
    code, out, err = cloud(project, "provision", "--id", "sensor-9", "--target", "local")
    assert code == 0, err
    key = project / "certs/sensor-9/key.pem"
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    assert oct(key.parent.stat().st_mode & 0o777) == "0o700"
    assert "device-agent --id sensor-9" in out
    assert out.rstrip().endswith(" --receipts"), "the local stack's ingest confirms readings"
    before = key.read_bytes()
    code, _, err = cloud(project, "provision", "--id", "sensor-9", "--target", "local")
    assert code == 1 and "--force" in err
    assert key.read_bytes() == before
    code, _, _ = cloud(project, "provision", "--id", "sensor-9", "--target", "local", "--force")
    assert code == 0 and key.read_bytes() != before
