"""Fixtures for the end-to-end fault tests: real processes (Mosquitto, device agents, cloud
ingest, moto's server), real faults, and assertions on what lands in the table.

The fleet of the fault scenarios (FleetRun, the `fleet_run` fixture): FLEET devices x
READINGS readings each through a broker and ingest, so the table must end with every
(SensorId, Seq) in 0..READINGS-1 exactly once and FLEET * READINGS items. Longer than our
usual module because each part builds on the one before: child processes, agents, ingest,
the fleet through them.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest

from cloud.aws import Endpoint
from cloud.cli.ingest import ingest as ingest_command
from cloud.ingest.settings import IngestSettings, IngestStats
from cloud.local.mosquitto import Mosquitto
from cloud.table import item_count
from tests.conftest import Pki
from tests.ingest_run import Running as SharedRunning
from tests.ingest_run import ingest_runner
from tests.mqtt import CHILDREN, REPO, agent_command, wait_until
from tests.outbox import outbox_state
from tests.table import assert_every_reading_once, missing_seqs, scan_items, seq_ranges, settle

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
        wait_until(
            lambda: "subscribed to" in child.log() or not proc.alive(),
            30,
            "the ingest process's subscription",
        )
        assert proc.alive(), child.log()
        return child

    return start


# -- a fleet through ingest ------------------------------------------------------------------


@dataclass
class FleetRun:
    """The fault scenarios' set-up: a broker of the test's own, ingest writing to the test's
    table (on a thread, or in a process of its own to SIGKILL), and the FLEET devices
    publishing `count` readings each; and their checks, whose failures say where the
    readings are (ingest's counters, each outbox, the seqs missing from the table)."""

    broker: Mosquitto
    ids: list[str]
    agents: Agents
    settings: IngestSettings
    ddb: Any
    start_thread: Callable[..., Running]
    start_process: Callable[..., IngestChild]
    count: int = READINGS
    ingest: Running | None = None
    child: IngestChild | None = None

    @property
    def port(self) -> int:
        return self.broker.config.port

    @property
    def total(self) -> int:
        return len(self.ids) * self.count

    def run_ingest(self) -> Running:
        """Ingest on a thread, as `cloud ingest` runs it; subscribed when this returns."""
        self.ingest = self.start_thread(self.settings)
        return self.ingest

    def ingest_process(self, **options: Any) -> IngestChild:
        """Ingest in a process of its own (`ingest_child`'s options); subscribed too."""
        self.child = self.start_process(self.settings, **options)
        return self.child

    def _flags(self, count: int, interval: str, receipts: bool, args: tuple[str, ...]) -> list[str]:
        self.count = count
        return [
            "--count",
            str(count),
            "--interval",
            interval,
            *(["--receipts"] if receipts else []),
            *args,
        ]

    def simulate(
        self, *args: str, count: int = READINGS, interval: str = "0.01", receipts: bool = True
    ) -> Proc:
        """The fleet as one `device-agent simulate` process; with receipts unless told,
        as the local stack runs it."""
        return self.agents.simulate(
            self.ids, self.port, *self._flags(count, interval, receipts, args)
        )

    def each(
        self,
        *args: str,
        port: int | None = None,
        count: int = READINGS,
        interval: str = "0.01",
        receipts: bool = True,
    ) -> dict[str, Proc]:
        """The fleet as one `device-agent` process per device (to `port`: a proxy's)."""
        flags = self._flags(count, interval, receipts, args)
        return {i: self.agents.one(i, port or self.port, *flags) for i in self.ids}

    def wait_fleet(self, proc: Proc, timeout: float = 120) -> None:
        """`proc` (the fleet, or one device) exits 0 within `timeout`; if not, the failure
        also says where the readings are."""
        try:
            code = proc.wait(timeout)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.whereabouts()}") from None
        assert code == 0, f"exit {code}; stderr ends:\n{proc.err()[-3000:]}\n{self.whereabouts()}"

    def whereabouts(self) -> str:
        """Ingest's stats line and, per device, its outbox and the seqs the table lacks:
        whether the readings not yet confirmed are in the table or still on their way."""
        lines = [self.ingest_line()]
        try:
            items = scan_items(self.ddb, self.settings.table)
        except Exception as exc:  # the report must not hide the failure it explains
            return "\n".join([*lines, f"table unreadable: {exc!r}"])
        missing = missing_seqs(items, self.ids, self.count)
        lines.append(f"table: {len(items)} items of {self.total}")
        for i in self.ids:
            next_seq, waiting = outbox_state(self.agents.outbox(i))
            gaps = missing[i]
            lines.append(
                f"{i}: outbox next seq {next_seq}, {waiting} not confirmed; table lacks "
                + (f"{len(gaps)} seq(s): {seq_ranges(gaps)}" if gaps else "none")
            )
        return "\n".join(lines)

    def ingest_line(self) -> str:
        if self.ingest is not None:
            alive = "" if self.ingest.thread.is_alive() else f" (stopped: {self.ingest.outcome!r})"
            return self.ingest.stats.line() + alive
        if self.child is not None:
            log = self.child.log().splitlines()
            reports = [ln for ln in log if " ingest: " in ln and " received " in ln]
            alive = "" if self.child.proc.alive() else " (process ended)"
            return (reports[-1] if reports else "no report line in its log") + alive
        return "not started"

    def summary(self, proc: Proc) -> str:
        """The fleet's summary line (`<N> devices: published ...`)."""
        return summary_line(proc.out(), f"{len(self.ids)} devices")

    def assert_every_reading_once(self) -> None:
        assert_every_reading_once(self.ddb, self.settings.table, self.ids, self.count)

    def finish(self) -> IngestStats:
        """Ingest settles on every reading and stops; the table holds each exactly once."""
        assert self.ingest is not None, "no ingest on a thread to finish"
        self.ingest.settle(self.total)
        stats = self.ingest.finish()
        self.assert_every_reading_once()
        return stats


@pytest.fixture
def fleet_run(
    start_broker: Callable[..., Mosquitto],
    fleet_ids: list[str],
    agents: Agents,
    make_ingest_settings: Callable[..., IngestSettings],
    run_ingest: Callable[..., Running],
    ingest_child: Callable[..., IngestChild],
    aws: Endpoint,
) -> Callable[..., FleetRun]:
    """A FleetRun on `broker` (default: a new one with the shipped config), with ingest on a
    thread already subscribed unless `ingest=False`; the test starts the fleet."""

    def make(broker: Mosquitto | None = None, *, ingest: bool = True) -> FleetRun:
        broker = broker or start_broker()
        settings = make_ingest_settings(broker.config.port)
        ddb = aws.client("dynamodb")
        run = FleetRun(broker, fleet_ids, agents, settings, ddb, run_ingest, ingest_child)
        if ingest:
            run.run_ingest()
        return run

    return make
