"""Fixtures for the end-to-end fault tests: real processes (Mosquitto, device agents, cloud
ingest, moto's server), real faults, and assertions on what lands in the table.

The fleet of the fault scenarios: FLEET devices x READINGS readings each, so the table must
end with every (SensorId, Seq) in 0..READINGS-1 exactly once and FLEET * READINGS items.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest

from cloud.aws import Endpoint
from cloud.cli.ingest import ingest as ingest_command
from cloud.ingest.service import IngestSettings
from cloud.local.mosquitto import READERS, Mosquitto, MosquittoConfig
from cloud.local.ports import free_port
from cloud.table import item_count
from tests.conftest import TEST_READERS, Pki
from tests.ingest_run import Running as SharedRunning
from tests.ingest_run import ingest_runner
from tests.mqtt import CHILDREN, REPO, agent_command

FLEET = 5
READINGS = 400


def _cli_share_group() -> str | None:
    """The subscription `cloud ingest` makes by default (as `cloud local up` runs it)."""
    group = ingest_command.make_context("ingest", []).params["share_group"]
    return None if group is None else str(group)


CLI_SHARE_GROUP = _cli_share_group()

_names = itertools.count()


# -- child processes whose output goes to files (a pipe nobody reads would stall them) --------


@dataclass
class Proc:
    """A child process of a test; stdout and stderr are files, read at any time."""

    popen: subprocess.Popen[str]
    out_path: Path
    err_path: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def out(self) -> str:
        return self.out_path.read_text(errors="replace")

    def err(self) -> str:
        return self.err_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.popen.poll() is None

    def wait(self, timeout: float = 60) -> int:
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"pid {self.pid} still running after {timeout:g}s; stderr ends:\n"
                + self.err()[-3000:]
            ) from None

    def kill9(self) -> None:
        """SIGKILL, as a power cut would: no handler runs, nothing is flushed."""
        self.popen.send_signal(signal.SIGKILL)
        self.popen.wait(10)

    def terminate(self, timeout: float = 30) -> int:
        self.popen.send_signal(signal.SIGTERM)
        return self.wait(timeout)

    def rss(self) -> int:
        return int(psutil.Process(self.pid).memory_info().rss)


def spawn(
    argv: list[str],
    folder: Path,
    name: str,
    env: dict[str, str] | None = None,
    cwd: Path = REPO,
) -> Proc:
    folder.mkdir(parents=True, exist_ok=True)
    out_path, err_path = folder / f"{name}.out", folder / f"{name}.err"
    with out_path.open("w") as out, err_path.open("w") as err:
        popen = subprocess.Popen(
            argv,
            cwd=cwd,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            text=True,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
        )
    CHILDREN.append(popen)  # reaped after the test even when it fails
    return Proc(popen, out_path, err_path)


# -- identities and agents ----------------------------------------------------------------


@pytest.fixture
def fleet_ids(device_id: str, pki: Pki) -> list[str]:
    """FLEET device ids of this test's own (`<prefix>1` .. `<prefix>5`, as `simulate` names
    them), each with a certificate in `pki.root / "devices"`."""
    ids = [f"{device_id}-{n}" for n in range(1, FLEET + 1)]
    for i in ids:
        pki.device(i)
    return ids


@dataclass
class Agents:
    """Starts `device-agent` processes of this test, its output in the test's folder."""

    pki: Pki
    folder: Path
    env: dict[str, str] = field(default_factory=dict)

    def one(self, sensor_id: str, port: int, *args: str, outbox: Path | None = None) -> Proc:
        ident = self.pki.device(sensor_id)
        argv = agent_command(
            "--id",
            sensor_id,
            "--broker",
            f"mqtts://127.0.0.1:{port}",
            "--cert",
            str(ident.cert),
            "--key",
            str(ident.key),
            "--ca",
            str(ident.ca),
            "--outbox",
            str(outbox or self.outbox(sensor_id)),
            *args,
        )
        return spawn(argv, self.folder, f"agent-{sensor_id}-{next(_names)}", self.env)

    def simulate(self, ids: list[str], port: int, *args: str) -> Proc:
        """`device-agent simulate` for ids `<prefix>1 .. <prefix>N`, one process."""
        prefix = ids[0][:-1]
        assert ids == [f"{prefix}{n}" for n in range(1, len(ids) + 1)], ids
        for i in ids:
            self.pki.device(i)  # simulate finds them in --certs-dir
        argv = agent_command(
            "simulate",
            "--devices",
            str(len(ids)),
            "--prefix",
            prefix,
            "--broker",
            f"mqtts://127.0.0.1:{port}",
            "--certs-dir",
            str(self.pki.root / "devices"),
            "--outbox-dir",
            str(self.folder / "outbox"),
            *args,
        )
        return spawn(argv, self.folder, f"simulate-{next(_names)}", self.env)

    def outbox(self, sensor_id: str) -> Path:
        # The name `simulate --outbox-dir` gives each device's outbox.
        return self.folder / "outbox" / f"{sensor_id}.outbox.sqlite"


@pytest.fixture
def agents(pki: Pki, tmp_path: Path) -> Agents:
    """Agents given --broker explicitly: without receipts unless a test passes --receipts
    (as the local stack's defaults do), since only a fleet running through ingest gets any."""
    return Agents(pki, tmp_path / "agents")


def summary_line(output: str, sensor_or_total: str) -> str:
    lines = [ln for ln in output.splitlines() if ln.startswith(f"{sensor_or_total}: published ")]
    assert lines, f"no summary line for {sensor_or_total!r} in:\n{output}"
    return lines[-1]


def outbox_state(outbox: Path) -> tuple[int, int]:
    """(next seq, readings waiting) of an agent's outbox, read as a user would with sqlite3.

    A read-write connection, as the agent opens it: after a SIGKILL only such a connection
    replays the WAL (a read-only one may see the state one commit behind)."""
    if not outbox.exists():
        return 0, 0
    with contextlib.closing(sqlite3.connect(outbox, timeout=5)) as db:
        try:
            row = db.execute("SELECT value FROM state WHERE key = 'next_seq'").fetchone()
            waiting = db.execute("SELECT count(*) FROM outbox").fetchone()[0]
        except sqlite3.OperationalError:
            return 0, 0
    return (0 if row is None else int(row[0])), int(waiting)


# -- brokers ------------------------------------------------------------------------------


@dataclass(frozen=True)
class AclExtraConfig(MosquittoConfig):
    """MosquittoConfig whose ACL file gets extra lines (e.g. a reader of `$SYS/#`)."""

    acl_extra: str = ""

    def write(self) -> None:
        super().write()
        with (self.folder / "acl").open("a") as acl:
            acl.write("\n" + self.acl_extra + "\n")


@pytest.fixture
def acl_broker(
    pki: Pki, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., Mosquitto]]:
    """Brokers whose ACL file gets extra lines; killed when the test ends."""
    started: list[Mosquitto] = []

    def start(acl_extra: str, **kwargs: Any) -> Mosquitto:
        config = AclExtraConfig(
            folder=tmp_path_factory.mktemp("mosquitto-acl"),
            port=free_port(),
            ca=pki.ca.cert_path,
            cert=pki.server.cert,
            key=pki.server.key,
            acl_extra=acl_extra,
            **{"readers": (*READERS, *TEST_READERS), **kwargs},
        )
        broker = Mosquitto(config)
        started.append(broker)
        broker.start()
        return broker

    yield start
    for broker in started:
        broker.kill()


# -- ingest ---------------------------------------------------------------------------------


@pytest.fixture
def make_ingest_settings(
    pki: Pki, aws: Endpoint, table: str, tmp_path: Path, device_id: str
) -> Callable[..., IngestSettings]:
    """IngestSettings for a broker port: this test's table, a client id of its own, the
    shipped share group (`ingest`), as `cloud ingest` runs on the local stack."""

    def make(port: int, **changes: Any) -> IngestSettings:
        name, ident = pki.reader()
        values: dict[str, Any] = {
            "host": "127.0.0.1",
            "port": port,
            "tls": ident,
            "endpoint": aws,
            "table": table,
            "dead_letter": tmp_path / "dead-letter.jsonl",
            "client_id": name,
            "share_group": CLI_SHARE_GROUP,
            "report_every": 1.0,
        }
        values.update(changes)
        return IngestSettings(**values)

    return make


class Running(SharedRunning):
    """An Ingest on a thread of the test process, that can also wait for the table."""

    def settle(
        self, received: int, items: int | None = None, quiet: float = 3.0, timeout: float = 90
    ) -> None:
        """Until ingest received `received` messages and the table holds `items` (default:
        as many), or either count stopped growing for `quiet` seconds: a loss then shows
        in the table's content, not as a timeout. Redeliveries count as received, so the
        table is what decides."""
        settle(lambda: self.stats.received, received, quiet, timeout, "messages for ingest")
        ddb = self.ingest.settings.endpoint.client("dynamodb")
        table = self.ingest.settings.table
        want = received if items is None else items
        settle(lambda: item_count(ddb, table), want, quiet, timeout, f"{want} items", every=0.5)


@pytest.fixture
def run_ingest() -> Iterator[Callable[..., Running]]:
    """Start ingest in-process (as `cloud ingest` runs it) and wait for its subscription.
    The shipped reconnect backoff: after a broker restart, ingest and the devices race to
    reconnect exactly as they would in the field."""
    yield from ingest_runner(Running, wait_timeout=60)


@dataclass
class IngestChild:
    proc: Proc
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture
def ingest_child(tmp_path: Path) -> Callable[..., IngestChild]:
    """Ingest in a process of its own (tests/e2e/ingest_child.py); waits for its subscription."""
    names = itertools.count(1)

    def start(
        settings: IngestSettings,
        *,
        env: dict[str, str] | None = None,
        stall_after_batches: int | None = None,
        stall_marker: Path | None = None,
    ) -> IngestChild:
        assert settings.tls is not None and settings.endpoint.url is not None
        cfg = {
            "port": settings.port,
            "tls": [str(settings.tls.cert), str(settings.tls.key), str(settings.tls.ca)],
            "endpoint": settings.endpoint.url,
            "table": settings.table,
            "dead_letter": str(settings.dead_letter),
            "client_id": settings.client_id,
            "share_group": settings.share_group,
            "stall_after_batches": stall_after_batches,
            "stall_marker": str(stall_marker) if stall_marker else None,
        }
        argv = [sys.executable, "-m", "tests.e2e.ingest_child", json.dumps(cfg)]
        proc = spawn(argv, tmp_path / "ingest", f"ingest-{next(names)}", env)
        child = IngestChild(proc, proc.err_path)
        wait_for(
            lambda: "subscribed to" in child.log() or not proc.alive(),
            30,
            "the ingest process's subscription",
        )
        assert proc.alive(), child.log()
        return child

    return start


# -- the table ------------------------------------------------------------------------------


def wait_for(predicate: Callable[[], bool], timeout: float, what: str, every: float = 0.05) -> None:
    """Poll a condition no event announces, at a pace that suits its cost."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out after {timeout:g}s waiting for {what}"
        time.sleep(every)


def settle(
    count: Callable[[], int],
    target: int,
    quiet: float,
    timeout: float,
    what: str,
    every: float = 0.1,
) -> int:
    """Poll `count` until it reaches `target` or stops changing for `quiet` seconds."""
    deadline = time.monotonic() + timeout
    last, since = count(), time.monotonic()
    while last < target:
        now = time.monotonic()
        if now - since >= quiet:
            return last
        assert now < deadline, f"timed out after {timeout:g}s waiting for {what} ({last})"
        time.sleep(every)
        value = count()
        if value != last:
            last, since = value, time.monotonic()
    return last


def scan_items(ddb: Any, table: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    kwargs: dict[str, Any] = {"TableName": table}
    while True:
        page = ddb.scan(**kwargs)
        items.extend(page["Items"])
        if "LastEvaluatedKey" not in page:
            return items
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def settle_items(ddb: Any, table: str, n: int, quiet: float = 4.0, timeout: float = 90) -> int:
    """Until the table holds n items, or its count stopped growing for `quiet` seconds
    (COUNT scans run at ~3k items/s on moto, so they are paced)."""
    return settle(lambda: item_count(ddb, table), n, quiet, timeout, f"{n} items", every=0.5)


def missing_seqs(items: list[dict[str, Any]], ids: list[str], count: int) -> dict[str, list[int]]:
    """Per sensor, the seqs in 0..count-1 with no item in the table."""
    seen = {(i["SensorId"]["S"], int(i["Seq"]["N"])) for i in items}
    return {s: [q for q in range(count) if (s, q) not in seen] for s in ids}


def seq_problems(items: list[dict[str, Any]], ids: list[str], count: int) -> list[str]:
    """What is wrong with the table against "every (sensor, seq) in 0..count-1 exactly once"."""
    seen = Counter((i["SensorId"]["S"], int(i["Seq"]["N"])) for i in items)
    problems: list[str] = []
    for sensor, missing in missing_seqs(items, ids, count).items():
        if missing:
            problems.append(f"{sensor}: {len(missing)} missing seq(s), first {missing[:10]}")
    doubled = {k: n for k, n in seen.items() if n > 1}
    if doubled:
        problems.append(f"seq(s) in more than one item: {sorted(doubled.items())[:10]}")
    strangers = {k for k in seen if k[0] not in ids or not 0 <= k[1] < count}
    if strangers:
        problems.append(f"items nobody sent: {sorted(strangers)[:10]}")
    if len(items) != len(ids) * count:
        problems.append(f"{len(items)} items, expected {len(ids) * count}")
    return problems


def assert_every_reading_once(ddb: Any, table: str, ids: list[str], count: int = READINGS) -> None:
    problems = seq_problems(scan_items(ddb, table), ids, count)
    assert not problems, "table is not exactly one item per reading:\n" + "\n".join(problems)
