"""`cloud local up | down | status | reset` as a user runs them, from a project folder of its
own: real processes (supervisor, dynalite, Mosquitto, ingest) on free ports."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from cloud.aws import Endpoint
from cloud.local.moto import MotoServer
from cloud.local.ports import free_port
from cloud.local.stack import down
from cloud.table import create_table
from tests.mqtt import wait_until

REPO = Path(__file__).resolve().parents[2]


def cloud(
    folder: Path, *args: str, env: dict[str, str] | None = None, stdin: str | None = None
) -> tuple[int, str, str]:
    return run(folder, "cloud", *args, env=env, stdin=stdin)


def run(
    folder: Path, *args: str, env: dict[str, str] | None = None, stdin: str | None = None
) -> tuple[int, str, str]:
    proc = subprocess.run(
        [sys.executable, "-m", *args],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=180,
        input=stdin,
        # Device outboxes in the project too: seqs of an earlier run must not carry over.
        env={
            **os.environ,
            "PYTHONPATH": str(REPO),
            "XDG_STATE_HOME": str(folder / "state"),
            **(env or {}),
        },
    )
    return proc.returncode, proc.stdout, proc.stderr


def ok(folder: Path, *args: str) -> str:
    code, out, err = cloud(folder, *args)
    assert code == 0, f"cloud {' '.join(args)}: {err}"
    return out


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is gone for our purposes (its parent has not reaped it yet).
    return "State:\tZ" not in Path(f"/proc/{pid}/status").read_text()


def parts(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "var/local/supervisor.json").read_text())["parts"]


def supervisor_pid(folder: Path) -> int:
    return int(json.loads((folder / "var/local/stack.json").read_text())["supervisor_pid"])


def up(folder: Path, *extra: str) -> str:
    return ok(
        folder,
        "local",
        "up",
        "--mqtt-port",
        str(free_port()),
        "--table-port",
        str(free_port()),
        *extra,
    )


def readings(folder: Path, sensor: str) -> list[dict[str, Any]]:
    code, out, err = cloud(folder, "readings", "--id", sensor, "--format", "json")
    assert code == 0, err
    return [json.loads(line) for line in out.splitlines()]


def deliver(folder: Path, sensor: str, count: int) -> None:
    code, out, err = run(folder, "device", "--id", sensor, "--count", str(count), "--interval", "0")
    assert code == 0, err
    assert f"published {count}, acknowledged {count}" in out


def together(*calls: Callable[[], Any]) -> list[Any]:
    """Commands that neither wait for nor change what the others look at, run side by side;
    their results in the order given. Each is a process that spends most of its second
    starting Python and importing boto3."""
    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        return [f.result() for f in [pool.submit(call) for call in calls]]


@pytest.fixture
def project(tmp_path: Path):
    yield tmp_path
    # What `cloud local down` does, without a process of its own to start and import first.
    down(tmp_path)


def test_up_status_down_and_again(project: Path):
    out = up(project)
    assert "var/local" in out  # where the data and logs are
    running = parts(project)
    assert set(running) == {"table", "mosquitto", "ingest"}
    assert all(p["state"] == "running" and alive(p["pid"]) for p in running.values())
    state = json.loads((project / "var/local/stack.json").read_text())
    assert f"mqtts://127.0.0.1:{state['mqtt_port']}" in out

    out, again = together(
        lambda: ok(project, "local", "status"), lambda: ok(project, "local", "up")
    )
    for name in ("table", "mosquitto", "ingest"):
        line = next(ln for ln in out.splitlines() if ln.startswith(name + " "))
        assert "running" in line and str(running[name]["pid"]) in line
    assert "items    SensorData: 0 item(s)" in out
    assert "data     table: var/local/table (" in out

    assert "already runs" in again
    assert parts(project)["mosquitto"]["pid"] == running["mosquitto"]["pid"]

    # An id that is a path, or ends in a newline, is refused before any file is made of it.
    certs = sorted((project / "certs").iterdir())
    bad_ids = ("../../escape", "sensor-1\n")
    refused = together(
        *(lambda b=b: run(project, "device", "--id", b, "--count", "1") for b in bad_ids)
    )
    for code, stdout, err in refused:
        assert code == 1 and stdout == "", err
        assert err.startswith("Error: --id: ") and len(err.splitlines()) == 1, err
    assert sorted((project / "certs").iterdir()) == certs
    assert not (project.parent / "escape").exists()

    out = ok(project, "local", "down")
    assert "stopped ingest, mosquitto, table" in out
    assert "data kept in var/local" in out and "cloud local reset" in out
    assert not any(alive(p["pid"]) for p in running.values())
    assert not alive(state["supervisor_pid"])

    out = ok(project, "local", "down")
    assert "nothing to stop" in out
    out = ok(project, "local", "status")
    assert "not running" in out and "STOPPED" in out


def test_readings_and_exports_survive_down_and_up(project: Path):
    """The issue's first finding: moto's server forgot every reading on `down`."""
    up(project)
    deliver(project, "keep-1", 20)
    before = readings(project, "keep-1")
    assert len(before) == 20
    ok(project, "export", "--format", "parquet", "--settle", "0")
    ok(project, "export", "--format", "datapipeline", "--settle", "0")
    ports = json.loads((project / "var/local/stack.json").read_text())

    ok(project, "local", "down")
    out = ok(project, "local", "up")  # no flags: the same ports and data as last time
    state = json.loads((project / "var/local/stack.json").read_text())
    assert (state["mqtt_port"], state["table_port"]) == (ports["mqtt_port"], ports["table_port"])
    assert "table    http://127.0.0.1:" in out

    after, summary, tutorial, status = together(
        lambda: readings(project, "keep-1"),
        lambda: ok(project, "query", "--report", "summary", "--format", "csv"),
        lambda: ok(project, "query", "SELECT count(*) AS n FROM sensor_data", "--format", "csv"),
        lambda: ok(project, "status"),
    )
    assert after == before
    assert summary.splitlines()[1].startswith("keep-1,20,")
    assert tutorial.splitlines() == ["n", "20"]
    assert "SensorData: 20 item(s)" in status


def test_a_power_cut_loses_nothing_that_was_written(project: Path):
    """Every process of the stack SIGKILLed at once, then `cloud local up`."""
    up(project)
    deliver(project, "cut-1", 50)
    ok(project, "export", "--format", "parquet", "--settle", "0")
    pids = [supervisor_pid(project)] + [p["pid"] for p in parts(project).values()]
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not any(alive(p) for p in pids), timeout=10, what="the power cut")

    out = ok(project, "local", "up")
    assert "broker" in out
    got, summary = together(
        lambda: readings(project, "cut-1"),
        lambda: ok(project, "query", "--report", "summary", "--format", "csv"),
    )
    assert sorted(r["seq"] for r in got) == list(range(50))
    assert summary.splitlines()[1].startswith("cut-1,50,")
    # And it goes on taking readings.
    deliver(project, "cut-2", 5)
    assert len(readings(project, "cut-2")) == 5


def test_each_part_killed_comes_back_by_itself(project: Path):
    up(project)
    for name in ("table", "mosquitto", "ingest"):
        before = parts(project)[name]
        os.kill(before["pid"], signal.SIGKILL)

        def back(name: str = name, old: int = before["pid"]) -> bool:
            now = parts(project)[name]
            return now["state"] == "running" and now["pid"] not in (None, old)

        wait_until(back, timeout=15, what=f"{name} to be restarted")
        assert parts(project)[name]["restarts"] == before["restarts"] + 1
    log = (project / "var/local/logs/supervisor.log").read_text()
    assert log.count("killed by SIGKILL") == 3 and log.count("restart 1 in") == 3

    def delivers() -> list[dict[str, Any]]:
        deliver(project, "back-1", 10)
        return readings(project, "back-1")

    # The status, and meanwhile the restarted stack still delivers, end to end.
    out, back = together(lambda: ok(project, "local", "status"), delivers)
    for name in ("table", "mosquitto", "ingest"):
        line = next(ln for ln in out.splitlines() if ln.startswith(name + " "))
        assert "running" in line and "killed by SIGKILL" in line
    assert len(back) == 10


def test_up_on_a_partly_running_stack_starts_what_is_missing(project: Path):
    up(project)
    # Kill the broker repeatedly: each quick death doubles its restart delay (0.5, 1, 2, 4 s).
    for _ in range(4):
        old = parts(project)["mosquitto"]["pid"]
        os.kill(old, signal.SIGKILL)
        wait_until(
            lambda old=old: parts(project)["mosquitto"]["pid"] not in (old,),
            timeout=15,
            what="the broker's exit to be seen",
        )
        if parts(project)["mosquitto"]["pid"] is None:
            wait_until(
                lambda: parts(project)["mosquitto"]["state"] == "running",
                timeout=15,
                what="the broker to be back",
            )
    old = parts(project)["mosquitto"]["pid"]
    os.kill(old, signal.SIGKILL)
    wait_until(
        lambda: parts(project)["mosquitto"]["state"] == "restarting",
        timeout=10,
        what="the broker to wait out its delay",
    )
    out = ok(project, "local", "up")
    assert "started again: mosquitto" in out
    assert parts(project)["mosquitto"]["state"] == "running"


def test_a_dead_supervisor_takes_its_parts_down_and_up_brings_all_back(project: Path):
    up(project)
    deliver(project, "sv-1", 5)
    old = parts(project)
    os.kill(supervisor_pid(project), signal.SIGKILL)
    # Its parts get SIGTERM from the kernel (PR_SET_PDEATHSIG) and stop cleanly.
    wait_until(
        lambda: not any(alive(p["pid"]) for p in old.values()), timeout=30, what="parts to stop"
    )
    code, _, err = cloud(project, "readings", "--id", "sv-1")
    assert code == 1 and "cloud local up" in err and "Traceback" not in err
    ok(project, "local", "up")
    assert len(readings(project, "sv-1")) == 5


def test_data_dir_is_remembered(project: Path, tmp_path_factory: pytest.TempPathFactory):
    data = tmp_path_factory.mktemp("elsewhere")
    up(project, "--data-dir", str(data))
    deliver(project, "dd-1", 3)
    ok(project, "export", "--settle", "0")
    assert any((data / "table").iterdir())
    assert (data / "exports" / "sensor_data").is_dir()
    assert not (project / "var/local/table").exists()
    ok(project, "local", "down")
    ok(project, "local", "up")
    got, status, (code, _, err) = together(
        lambda: readings(project, "dd-1"),
        lambda: ok(project, "local", "status"),
        lambda: cloud(project, "local", "up", "--data-dir", str(project / "other")),
    )
    assert len(got) == 3
    assert str(data / "table") in status
    assert code == 1 and "down` first" in err


def test_reset_asks_and_then_deletes_the_data_but_not_the_certificates(project: Path):
    up(project)
    deliver(project, "rs-1", 4)
    code, out, err = cloud(project, "local", "reset", stdin="n\n")
    assert code == 1 and "Aborted" in err
    assert len(readings(project, "rs-1")) == 4  # still running, still there

    out = ok(project, "local", "reset", "--yes")
    assert "stopped ingest, mosquitto, table" in out and "deleted var/local/table" in out
    assert (project / "certs/rs-1/key.pem").exists()
    ok(project, "local", "up")
    assert readings(project, "rs-1") == []
    deliver(project, "rs-1", 2)  # the same identity, a fresh table
    assert len(readings(project, "rs-1")) == 2


def test_a_folder_that_ran_the_in_memory_stack_is_upgraded_with_its_data(
    project: Path, tmp_path_factory: pytest.TempPathFactory
):
    """The first stack kept its table and bucket in a moto server; if it still runs, `up`
    copies them over before stopping it."""
    moto = MotoServer(free_port(), tmp_path_factory.mktemp("old-moto") / "moto.log")
    moto.start()
    try:
        old = Endpoint.local(moto.port)
        ddb = old.client("dynamodb")
        create_table(ddb, "SensorData")
        for n in range(30):
            ddb.put_item(
                TableName="SensorData",
                Item={
                    "SensorId": {"S": "old-1"},
                    "CurrentTime": {"N": str(1_700_000_000_000 + n)},
                    "Temperature": {"N": "20.5"},
                    "Seq": {"N": str(n)},
                },
            )
        s3 = old.client("s3")
        s3.create_bucket(Bucket="sensor-exports")
        s3.put_object(Bucket="sensor-exports", Key="sensor_data/run-1.json", Body=b"{}\n")
        assert moto.process is not None
        legacy = {
            "root": str(project),
            "mqtt_port": free_port(),
            "moto_port": moto.port,
            "table": "SensorData",
            "bucket": "sensor-exports",
            "pids": {"moto": moto.process.pid},
            "logs": {},
            "plaintext_port": None,
        }
        (project / "var/local").mkdir(parents=True)
        (project / "var/local/stack.json").write_text(json.dumps(legacy))

        out = up(project)
        assert "copied 30 reading(s)" in out and "1 export file(s)" in out
        wait_until(lambda: moto.process.poll() is not None, timeout=15, what="moto to stop")
    finally:
        moto.stop()
    assert sorted(r["seq"] for r in readings(project, "old-1")) == list(range(30))
    assert (project / "var/local/exports/sensor_data/run-1.json").read_bytes() == b"{}\n"
    ok(project, "local", "down")
    out = ok(project, "local", "up")
    assert "upgraded" not in out  # once


def test_an_old_stack_whose_moto_is_gone_says_what_was_lost(project: Path):
    legacy = {"root": str(project), "mqtt_port": 1, "moto_port": 2, "pids": {"moto": 999999999}}
    (project / "var/local").mkdir(parents=True)
    (project / "var/local/stack.json").write_text(json.dumps(legacy))
    out = up(project)
    assert "were lost when it stopped" in out
    assert "SensorData: 0 item(s)" in ok(project, "status")


def test_a_busy_port_asked_for_is_refused_and_a_busy_default_is_avoided(project: Path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code, _, err = cloud(project, "local", "up", "--mqtt-port", str(port))
        assert code == 1
        assert f"port {port} on 127.0.0.1 is in use" in err
        assert not (project / "var/local/stack.json").exists()

        code, _, err = cloud(project, "local", "up", "--no-ingest", "--table-port", str(port))
        assert code == 1 and "in use" in err


@pytest.mark.parametrize(
    ("variable", "names"),
    [("MOSQUITTO_BIN", "MOSQUITTO_BIN"), ("NODE_BIN", "Node.js")],
)
def test_a_missing_program_is_explained_and_nothing_is_left_running(
    project: Path, variable: str, names: str
):
    code, _, err = cloud(project, "local", "up", env={variable: str(project / "nope")})
    assert code == 1
    assert names in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (project / "var/local/supervisor.json").exists()


def test_plaintext_listener_only_when_asked(project: Path):
    up(project, "--no-ingest")
    conf = (project / "var/local/mosquitto/mosquitto.conf").read_text()
    listeners = [line for line in conf.splitlines() if line.startswith("listener")]
    assert len(listeners) == 1
    assert "require_certificate true" in conf
    assert set(parts(project)) == {"table", "mosquitto"}


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
