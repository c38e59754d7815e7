"""The tutorial's scenario, end to end, as a user runs it: `cloud local up`, 10 simulated
sensors x 1000 readings, then the table, the exports and the tutorial's own SQL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from cloud.aws import Endpoint
from cloud.local.identities import device_identity
from cloud.local.ports import free_port
from cloud.local.state import running_state
from cloud.table import item_count
from tests.mqtt import Subscriber, wait_until

REPO = Path(__file__).resolve().parents[2]
DEVICES, READINGS = 10, 1000
TUTORIAL_SQL = (
    "SELECT sensorid.s AS sensor, count(*) AS n, avg(temperature.n) AS avg_temp "
    "FROM sensor_data GROUP BY sensorid.s"
)


def run(folder: Path, *args: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", *args],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert proc.returncode == 0, f"{args}: {proc.stderr}"
    return proc.stdout


def scan(endpoint: Endpoint, table: str) -> list[dict]:
    ddb, items, kwargs = endpoint.client("dynamodb"), [], {"TableName": table}
    while True:
        page = ddb.scan(**kwargs)
        items += page["Items"]
        if "LastEvaluatedKey" not in page:
            return items
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def per_sensor(rows: list[tuple[str, float]]) -> dict[str, tuple[int, float]]:
    groups: dict[str, list[float]] = defaultdict(list)
    for sensor, temp in rows:
        groups[sensor].append(temp)
    return {s: (len(v), sum(v) / len(v)) for s, v in groups.items()}


def query(folder: Path, sql: str, data: str) -> dict[str, tuple[int, float]]:
    out = run(folder, "cloud", "query", sql, "--data", data, "--format", "json")
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    return {r["sensor"]: (r["n"], r["avg_temp"]) for r in rows}


@pytest.fixture
def project(tmp_path: Path):
    run(
        tmp_path,
        "cloud",
        "local",
        "up",
        "--mqtt-port",
        str(free_port()),
        "--table-port",
        str(free_port()),
    )
    yield tmp_path
    run(tmp_path, "cloud", "local", "down")


@pytest.mark.slow
def test_ten_sensors_times_a_thousand_readings_from_device_to_sql(project: Path):
    state = running_state(project)
    assert state is not None
    # A reader identity of its own: the stack's ingest holds "ingest" (a client is its
    # certificate's name, so sharing it would take over ingest's session).
    sub = Subscriber(state.mqtt_port, device_identity(project, "ingest-2"), client_id="ingest-2")
    sub.start()
    try:
        out = run(
            project,
            "device",
            "simulate",
            "--devices",
            str(DEVICES),
            "--count",
            str(READINGS),
            "--interval",
            "0",
            "--outbox-dir",
            str(project / "outbox"),
            "-q",
        )
        assert (
            f"{DEVICES} devices: published {DEVICES * READINGS}, acknowledged {DEVICES * READINGS}"
            in out
        )
        # With the local stack the devices wait for ingest's receipts: once they are done,
        # every reading is in the table already.
        assert len(scan(state.endpoint, state.table)) == DEVICES * READINGS
        sub.wait_for(lambda ms: len(ms) >= DEVICES * READINGS, timeout=120)
    finally:
        sub.stop()
    sent = {}
    for message in sub.messages:
        body = message.json()
        sent[(body["sensor_id"], body["ts"])] = body

    # The table: exactly one item per reading, each equal to what its device sent.
    items = scan(state.endpoint, state.table)
    assert len(items) == DEVICES * READINGS == len(sent)
    for item in items:
        body = sent[(item["SensorId"]["S"], int(item["CurrentTime"]["N"]))]
        assert float(item["Temperature"]["N"]) == body["temperature"]
        assert int(item["Seq"]["N"]) == body["seq"]
    expected = per_sensor([(i["SensorId"]["S"], float(i["Temperature"]["N"])) for i in items])
    assert len(expected) == DEVICES

    # Data Pipeline's layout in a folder: 10,000 lines, and the tutorial's SQL unchanged.
    exports = project / "exports"
    run(
        project,
        "cloud",
        "export",
        "--to",
        str(exports),
        "--format",
        "datapipeline",
        "--settle",
        "0",
    )
    lines = [
        line
        for f in sorted((exports / "sensor_data").iterdir())
        for line in f.read_text().splitlines()
    ]
    assert len(lines) == DEVICES * READINGS
    assert set(json.loads(lines[0])["SensorId"]) == {"s"}
    got = query(project, TUTORIAL_SQL, str(exports))
    assert got.keys() == expected.keys()
    for sensor, (n, avg) in expected.items():
        assert got[sensor][0] == n
        assert got[sensor][1] == pytest.approx(avg, abs=1e-4)  # struct<n:float> is 32-bit

    # Parquet in the stack's own exports folder (the default of both commands), through
    # the flat `readings` table: the same answers.
    run(project, "cloud", "export", "--format", "parquet", "--settle", "0")
    got = query(
        project,
        "SELECT sensor_id AS sensor, count(*) AS n, avg(temperature) AS avg_temp "
        "FROM readings GROUP BY 1",
        str(state.exports_dir),
    )
    assert got.keys() == expected.keys()
    for sensor, (n, avg) in expected.items():
        assert got[sensor][0] == n
        assert got[sensor][1] == pytest.approx(avg, rel=1e-12)


def part_pid(project: Path, name: str) -> int | None:
    parts = json.loads((project / "var/local/supervisor.json").read_text())["parts"]
    return parts[name]["pid"] if parts[name]["state"] == "running" else None


@pytest.mark.slow
def test_each_part_killed_in_turn_mid_stream_still_writes_each_reading_once(project: Path):
    """The table engine, the broker and ingest each SIGKILLed while a fleet publishes; the
    test restarts nothing: the stack's supervisor does, and the devices resend."""
    state = running_state(project)
    assert state is not None
    ddb = state.endpoint.client("dynamodb")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    fleet = subprocess.Popen(
        [sys.executable, "-m", "device", "simulate", "--devices", str(DEVICES),
         "--count", str(READINGS), "--interval", "0.005",
         "--outbox-dir", str(project / "outbox"), "-q"],
        cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip

    def count() -> int:
        try:
            return item_count(ddb, state.table)
        except Exception:  # the table engine is being restarted
            return -1

    try:
        for n, name in enumerate(("table", "mosquitto", "ingest"), start=1):
            # Kill each part once writes are under way, with no chance to flush or ack.
            wait_until(lambda n=n: count() >= n * 2000, timeout=120, what=f"{n * 2000} items")
            old = part_pid(project, name)
            assert old is not None
            os.kill(old, signal.SIGKILL)
            wait_until(
                lambda name=name, old=old: part_pid(project, name) not in (None, old),
                timeout=30,
                what=f"{name} to be restarted by the supervisor",
            )
        out, err = fleet.communicate(timeout=300)
        assert fleet.returncode == 0, err
        # Published counts the resends too.
        assert f"acknowledged {DEVICES * READINGS}, buffered 0, dropped 0" in out
    finally:
        if fleet.poll() is None:
            fleet.kill()
            fleet.communicate()
    items = scan(state.endpoint, state.table)
    keys = {(i["SensorId"]["S"], int(i["Seq"]["N"])) for i in items}
    assert len(items) == len(keys) == DEVICES * READINGS
    assert keys == {(f"sensor-{d}", s) for d in range(1, DEVICES + 1) for s in range(READINGS)}
    status = run(project, "cloud", "local", "status")
    for name in ("table", "mosquitto", "ingest"):
        line = next(ln for ln in status.splitlines() if ln.startswith(name + " "))
        assert "killed by SIGKILL" in line
