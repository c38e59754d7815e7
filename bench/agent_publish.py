"""How fast the device agent publishes, against a bare paho-mqtt loop on the same broker.

The machine is shared and noisy, so an absolute msg/s means little on its own: every figure
here comes with a baseline measured in the same run, against the same Mosquitto, in
alternating rounds, and the headline is the ratio agent/baseline.

    .venv/bin/python bench/agent_publish.py [--messages N] [--rounds R]

Everything runs on 127.0.0.1 in a temporary folder (CA, certificates, broker, outboxes) that
is deleted at the end, also on Ctrl-C. Exit 0 once measured (goals met or not), 1 when the
bench could not be set up or a run failed, 130 when interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import multiprocessing
import os
import ssl
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, TypeVar

import harness
from harness import BenchError

with harness.venv_imports(__file__):
    import paho.mqtt.client as mqtt
    from agent_child import AGENT_ID, PeakRss, agent_argv, exit_description, find_agent_exe
    from broker import HOST, setting_up, start_broker, start_subscriber
    from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion

    from cloud.identity.local_ca import Identity
    from device.agent import Agent
    from device.config import AgentConfig, load_config
    from device.errors import AgentError
    from device.transport import Callbacks, Transport, make_transport

BASELINE_ID = "bench-baseline"
#: The agent's readings are ~85-byte JSON; the baseline sends one such reading padded to 100
#: bytes (trailing spaces are valid JSON), so the baseline is never flattered by a smaller one.
_READING = b'{"v":1,"sensor_id":"bench-baseline","ts":1764345600123,"seq":0,"temperature":21.37}'
PAYLOAD = _READING.ljust(100)
#: Same window on both sides, the agent's default, so only the work per message differs.
INFLIGHT = 100
QOS = 1
GOAL_RATIO = 0.5
GOAL_RSS_MIB = 40.0
#: Untimed first runs: the first TLS session, SQLite file and broker allocations of a run
#: would otherwise all land on whichever side happens to go first.
WARMUP_MESSAGES = 2000
SYNCHRONOUS_NAMES = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}


class AgentCrashed(BenchError):
    """The agent died of a signal (it has aborted with heap corruption here), rather than
    failing with a message; such a run is counted and made again."""


#: Times one agent run is made again after a crash before the bench gives up.
CRASH_RETRIES = 2
T = TypeVar("T")


@dataclass
class Round:
    baseline_rate: float  # msg/s, bare paho
    agent_rate: float  # msg/s, Agent.run() alone (in a worker process)
    cli_wall: float  # s, `device-agent` from spawn to exit
    cli_rss_mib: float  # peak RSS of that child (its VmHWM)
    reconnects: int  # connections the timed agent had to make again mid-run

    @property
    def ratio(self) -> float:
        return self.agent_rate / self.baseline_rate


@dataclass(frozen=True)
class Setup:
    root: Path
    port: int
    baseline: Identity
    agent: Identity
    agent_exe: Path


def deadline_for(n: int) -> float:
    """Seconds a run may take before we call it stuck: generous, the machine is shared."""
    return 60.0 + n / 200.0


# -- setup ---------------------------------------------------------------------------------


def set_up(stack: contextlib.ExitStack) -> Setup:
    root = harness.temp_folder(stack, "bench-agent-publish-")
    (root / "outbox").mkdir()
    with setting_up():
        broker = start_broker(root, stack)
        baseline, agent = broker.identity(BASELINE_ID), broker.identity(AGENT_ID)
        start_subscriber(broker.port, broker.identity("ingest"), stack)
    return Setup(root, broker.port, baseline, agent, find_agent_exe())


# -- the baseline: bare paho ---------------------------------------------------------------


def baseline_client(identity: Identity, on_publish: Callable[..., None]) -> mqtt.Client:
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=BASELINE_ID, protocol=MQTTProtocolVersion.MQTTv5
    )
    client.tls_set(
        ca_certs=str(identity.ca),
        certfile=str(identity.cert),
        keyfile=str(identity.key),
        tls_version=ssl.PROTOCOL_TLS_CLIENT,
    )
    client.max_inflight_messages_set(INFLIGHT)
    client.on_publish = on_publish
    return client


def run_baseline(setup: Setup, n: int) -> float:
    """Connect, publish n QoS 1 messages, wait for every PUBACK, disconnect; return msg/s.

    Connect and disconnect are inside the timing because Agent.run() includes them too.
    """
    connected = threading.Event()
    all_acked = threading.Event()
    # The same window as the agent's (--inflight): publishing all n at once would make paho
    # queue the rest and walk that queue on every PUBACK, a slower baseline than fair.
    window = threading.BoundedSemaphore(INFLIGHT)
    acks = 0
    refused: list[str] = []

    def on_connect(client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            refused.append(f"CONNACK {reason}")
        connected.set()

    def on_publish(client: mqtt.Client, userdata: Any, mid: int, reason: Any, props: Any) -> None:
        nonlocal acks  # only the network thread writes it
        if reason.is_failure:
            refused.append(f"PUBACK {reason}")
        acks += 1
        window.release()
        if acks >= n or refused:
            all_acked.set()

    client = baseline_client(setup.baseline, on_publish)
    client.on_connect = on_connect
    topic = f"sensors/{BASELINE_ID}/data"
    deadline = deadline_for(n)
    start = time.perf_counter()
    try:
        client.connect(HOST, setup.port)
        client.loop_start()
        if not connected.wait(deadline) or refused:
            raise BenchError(f"baseline: no CONNACK from the broker ({refused or 'timeout'})")
        for _ in range(n):
            if not window.acquire(timeout=deadline):
                raise BenchError(f"baseline: no PUBACK for {deadline:.0f}s ({acks} of {n})")
            info = client.publish(topic, PAYLOAD, qos=QOS)
            if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                raise BenchError(f"baseline: publish failed: {mqtt.error_string(info.rc)}")
        if not all_acked.wait(deadline) or refused:
            raise BenchError(f"baseline: {acks} of {n} acknowledged ({refused or 'timeout'})")
        client.disconnect()
        elapsed = time.perf_counter() - start
    except OSError as exc:
        raise BenchError(f"baseline: cannot reach the broker on port {setup.port}: {exc}") from exc
    finally:
        client.loop_stop()
    return n / elapsed


# -- the agent's run() alone, timed in a worker process: the rate without start-up --------


def agent_config(setup: Setup, n: int, outbox: Path) -> AgentConfig:
    flags = {
        "broker": f"mqtts://{HOST}:{setup.port}",
        "cert": setup.agent.cert,
        "key": setup.agent.key,
        "ca": setup.agent.ca,
        "count": n,
        "interval": 0.0,
        "qos": QOS,
        "inflight": INFLIGHT,
        "outbox": outbox,
        "clock_wait": 0.0,  # this machine runs no NTP (see agent_child.agent_argv)
    }
    # environ={}: a DEVICE_AGENT_* variable in the caller's shell must not change the bench.
    return load_config(AGENT_ID, flags, environ={})


def outbox_settings(agent: Agent) -> str:
    """What the outbox really runs with, read back from its connection (not assumed)."""
    db = agent.outbox._db
    journal = db.execute("PRAGMA journal_mode").fetchone()[0]
    sync = int(db.execute("PRAGMA synchronous").fetchone()[0])
    return f"journal_mode={journal}, synchronous={SYNCHRONOUS_NAMES.get(sync, sync)}"


def counting_transport(connects: list[str]) -> Callable[[AgentConfig, Callbacks], Transport]:
    """The real transport, noting each successful connect: more than one in a run means the
    connection dropped and the agent waited out a backoff, which the rate alone hides."""

    def factory(config: AgentConfig, callbacks: Callbacks) -> Transport:
        def on_connection(up: bool, why: str) -> None:
            if up:
                connects.append(why)
            callbacks.on_connection(up, why)

        return make_transport(config, dataclasses.replace(callbacks, on_connection=on_connection))

    return factory


@dataclass(frozen=True)
class AgentRun:
    rate: float  # msg/s over run()
    outbox_settings: str
    reconnects: int


def time_agent_run(setup: Setup, n: int, label: str) -> AgentRun:
    """Agent(config).run() with a fresh outbox, in this process; only run() is timed."""
    outbox = setup.root / "outbox" / f"{AGENT_ID}-{label}.sqlite"
    connects: list[str] = []
    factory = counting_transport(connects)
    try:
        agent = Agent(agent_config(setup, n, outbox), transport_factory=factory)
    except AgentError as exc:
        raise BenchError(f"agent: cannot start: {exc}") from exc
    settings = outbox_settings(agent)
    start = time.perf_counter()
    try:
        summary = agent.run()
    except AgentError as exc:
        raise BenchError(f"agent: run failed: {exc}") from exc
    elapsed = time.perf_counter() - start
    if summary.acknowledged != n or summary.buffered:
        raise BenchError(f"agent: incomplete run: {summary.line()}")
    return AgentRun(n / elapsed, settings, max(0, len(connects) - 1))


def _agent_worker(setup: Setup, n: int, label: str, results: Connection) -> None:
    # A fresh interpreter: its logging is unconfigured. Connection warnings are counted (the
    # reconnects column) and one comes at every clean stop, so errors only.
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    try:
        results.send(time_agent_run(setup, n, label))
    except BenchError as exc:
        results.send(exc)
    except KeyboardInterrupt:
        pass  # the bench is stopping; it reports that itself


def run_agent_worker(setup: Setup, n: int, label: str) -> AgentRun:
    """time_agent_run() in a spawned worker: the same timing as in the bench process, but an
    agent that crashes (it has aborted with heap corruption here) takes down only the
    worker, and the bench still stops the broker and reports what happened."""
    context = multiprocessing.get_context("spawn")  # no fork of a process with threads
    receive, send = context.Pipe(duplex=False)
    worker = context.Process(
        target=_agent_worker, args=(setup, n, label, send), name=f"agent-{label}"
    )
    worker.start()
    send.close()  # ours closed: recv() then fails at once if the worker dies
    try:
        if not receive.poll(deadline_for(n) + 30):  # + spawn and imports
            raise BenchError(f"agent worker did not finish {n} messages in time")
        result = receive.recv()
        worker.join(10)  # it exits right after sending
    except EOFError:
        worker.join(10)
        why = exit_description(worker.exitcode)
        if worker.exitcode is not None and worker.exitcode < 0:
            raise AgentCrashed(f"Agent.run() in a worker {why}") from None
        raise BenchError(f"agent worker died ({why})") from None
    finally:
        # Only a stuck or interrupted worker is still alive here.
        if worker.is_alive():
            worker.kill()
        worker.join()
        receive.close()
    if isinstance(result, BenchError):
        raise result
    if not isinstance(result, AgentRun):
        raise BenchError(f"agent worker sent {result!r}")
    return result


# -- the agent, as shipped: the real CLI in a child process --------------------------------


def run_agent_cli(setup: Setup, n: int, label: str) -> tuple[float, float]:
    """`device-agent ... --count n` from spawn to exit; returns (wall s, peak RSS MiB)."""
    outbox = setup.root / "outbox" / f"{AGENT_ID}-{label}.sqlite"
    log_path = setup.root / f"cli-{label}.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEVICE_AGENT_")}
    timeout = deadline_for(n)
    with log_path.open("wb") as log:
        start = time.perf_counter()
        # Own session: a Ctrl-C at the terminal reaches only the bench, which kills the child
        # itself instead of waiting out the agent's 10 s flush.
        proc = subprocess.Popen(
            agent_argv(setup.agent_exe, setup.port, setup.agent, outbox, n),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
    # Popen returns once exec succeeded, so every sample is of the agent, not of our fork.
    try:
        with PeakRss(proc.pid) as rss:
            proc.wait(timeout)
            wall = time.perf_counter() - start
    except subprocess.TimeoutExpired:
        raise BenchError(f"device-agent did not finish {n} messages in {timeout:g}s") from None
    finally:
        if proc.returncode is None:
            proc.kill()
            proc.wait()
    if proc.returncode != 0:
        if proc.returncode < 0:
            raise AgentCrashed(f"device-agent {exit_description(proc.returncode)}")
        tail = log_path.read_text(errors="replace").strip().splitlines()[-5:]
        raise BenchError(f"device-agent exited {proc.returncode}: " + " | ".join(tail))
    if rss.peak_bytes == 0:
        raise BenchError("device-agent: no memory sample taken (exited within 20 ms?)")
    return wall, rss.peak_bytes / 2**20


# -- rounds and the report -----------------------------------------------------------------


def again_if_crashed(run: Callable[[str], T], label: str, crashes: list[str]) -> T:
    """Make an agent run again after a crash, noting the crash: the figures stay available
    while the crash is reported, not hidden."""
    for attempt in range(CRASH_RETRIES + 1):
        try:
            return run(f"{label}-{attempt}")
        except AgentCrashed as exc:
            crashes.append(str(exc))
            print(f"agent_publish: note: {exc}; running it again", file=sys.stderr, flush=True)
    raise BenchError(f"the agent crashed {CRASH_RETRIES + 1} times in a row: {crashes[-1]}")


def run_round(setup: Setup, n: int, index: int, crashes: list[str]) -> tuple[Round, str]:
    """One baseline and one agent run back to back; the order alternates between rounds so
    a drift in machine load does not always favour the same side."""

    def agent_run(label: str) -> AgentRun:
        return run_agent_worker(setup, n, label)

    def cli_run(label: str) -> tuple[float, float]:
        return run_agent_cli(setup, n, label)

    if index % 2 == 0:
        baseline = run_baseline(setup, n)
        agent = again_if_crashed(agent_run, f"r{index}", crashes)
    else:
        agent = again_if_crashed(agent_run, f"r{index}", crashes)
        baseline = run_baseline(setup, n)
    wall, rss = again_if_crashed(cli_run, f"cli-r{index}", crashes)
    return Round(baseline, agent.rate, wall, rss, agent.reconnects), agent.outbox_settings


def warm_up(setup: Setup, n: int, crashes: list[str]) -> None:
    run_baseline(setup, n)
    again_if_crashed(lambda label: run_agent_worker(setup, n, label), "warmup", crashes)


def print_rounds(rounds: list[Round]) -> None:
    print(f"{'round':>5}  {'baseline msg/s':>14}  {'agent msg/s':>11}  {'ratio':>6}  "
          f"{'reconnects':>10}  {'CLI wall s':>10}  {'CLI peak RSS MiB':>16}")  # fmt: skip
    for i, r in enumerate(rounds, 1):
        print(f"{i:>5}  {r.baseline_rate:>14,.0f}  {r.agent_rate:>11,.0f}  {r.ratio:>6.2f}  "
              f"{r.reconnects:>10}  {r.cli_wall:>10.2f}  {r.cli_rss_mib:>16.1f}")  # fmt: skip


def print_summary(rounds: list[Round], n: int, settings: str, crashes: list[str]) -> None:
    med = statistics.median
    # The ratio is paired per round (same minute of machine load), then the median taken.
    ratio = med(r.ratio for r in rounds)
    rss = med(r.cli_rss_mib for r in rounds)
    wall = med(r.cli_wall for r in rounds)
    agent = med(r.agent_rate for r in rounds)
    baseline = med(r.baseline_rate for r in rounds)
    rows = [
        ("baseline msg/s (bare paho, QoS 1, inflight 100)", f"{baseline:,.0f}"),
        ("agent msg/s (Agent.run() alone, durable outbox)", f"{agent:,.0f}"),
        (f"ratio agent/baseline (goal >= {GOAL_RATIO})", f"{ratio:.2f}"),
        ("agent CLI wall s (spawn to exit)", f"{wall:.2f}"),
        ("agent CLI msg/s (incl. start-up)", f"{n / wall:,.0f}"),
        (f"agent peak RSS MiB (CLI, goal <= {GOAL_RSS_MIB:g})", f"{rss:.1f}"),
        ("outbox fsync setting", settings),
        ("agent mid-run reconnects (all rounds)", str(sum(r.reconnects for r in rounds))),
        ("agent runs that crashed, made again", str(len(crashes))),
    ]  # fmt: skip
    width = max(len(name) for name, _ in rows)
    print(f"\nmedians of {len(rounds)} rounds")
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    harness.print_goal(f"ratio>={GOAL_RATIO}", None, ratio >= GOAL_RATIO)
    harness.print_goal(f"rss<={GOAL_RSS_MIB:g}MiB", None, rss <= GOAL_RSS_MIB)


def measure(n: int, rounds: int) -> None:
    with contextlib.ExitStack() as stack:
        setup = set_up(stack)
        print(f"agent_publish: {n} messages x {rounds} rounds, QoS {QOS}, inflight {INFLIGHT}, "
              f"mosquitto on {HOST}:{setup.port} (mutual TLS)", flush=True)  # fmt: skip
        crashes: list[str] = []
        warm_up(setup, min(n, WARMUP_MESSAGES), crashes)
        results: list[Round] = []
        settings = ""
        for i in range(rounds):
            result, settings = run_round(setup, n, i, crashes)
            results.append(result)
        print_rounds(results)
        print_summary(results, n, settings, crashes)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--messages", type=int, default=20_000, help="messages per run [20000]")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of each side [3]")
    parser.add_argument("--quick", action="store_true", help="5000 messages, 2 rounds")
    args = parser.parse_args(argv)
    if args.quick:
        args.messages, args.rounds = 5000, 2
    if args.messages < 1 or args.rounds < 1:
        parser.error("--messages and --rounds must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    measure(args.messages, args.rounds)
    return 0


if __name__ == "__main__":
    sys.exit(harness.run(main, __file__, "interrupted; broker stopped, temporary folder removed"))
