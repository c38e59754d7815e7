"""A large simulated fleet over several processes, and the descriptors a fleet needs.

One interpreter runs Python on one core at a time (the GIL), and a thousand devices at 1 Hz
need about a core of it (paho's packet handling, the outbox), besides what the broker,
ingest and the table need: past DEVICES_PER_PROCESS, `simulate` runs one process per CPU,
each a device.fleet.Fleet of its share.
"""

from __future__ import annotations

import multiprocessing
import os
import resource
import signal
from multiprocessing.connection import Connection

from device.agent import Summary
from device.config import AgentConfig
from device.errors import AgentError
from device.fleet import Fleet

#: Devices per process past which `simulate` runs several (see run_processes).
DEVICES_PER_PROCESS = 250
#: Descriptors a device holds: its socket and its SQLite outbox (database, -wal, -shm).
FILES_PER_DEVICE = 4
#: Descriptors beyond the devices': the interpreter, the poller, the pool, the log.
FILES_SPARE = 64


def raise_open_files_limit(devices: int) -> None:
    """Let this process hold every device's descriptors, or say what stops it."""
    want = devices * FILES_PER_DEVICE + FILES_SPARE
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= want:
        return
    if hard != resource.RLIM_INFINITY and hard < want:
        raise AgentError(
            f"{devices} devices need about {want} open files, and this shell allows at most "
            f"{hard} (ulimit -Hn): raise the limit (LimitNOFILE= in a systemd unit, "
            "/etc/security/limits.conf) or run fewer devices per process"
        )
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def run_processes(configs: list[AgentConfig], processes: int) -> dict[str, Summary | BaseException]:
    """Run the devices of `configs` in `processes` child processes, each a Fleet of its
    share; each one's tally, or what stopped it, by id.

    One interpreter runs Python on one core at a time (the GIL), and a thousand devices at
    1 Hz need about a core of it (paho's packet handling, the outbox), besides what the
    broker, ingest and the table need. SIGINT or SIGTERM here stops every child's devices,
    which flush first as they always do.
    """
    context = multiprocessing.get_context("spawn")  # no threads or sockets inherited
    shares = [configs[n::processes] for n in range(processes)]
    pipes = [context.Pipe(duplex=False) for _ in shares]
    children = [
        context.Process(target=_child, args=(share, send), name=f"fleet-{n}", daemon=True)
        for n, (share, (_, send)) in enumerate(zip(shares, pipes, strict=True))
    ]

    def forward(signum: int, frame: object) -> None:
        for child in children:
            if child.pid is not None and child.exitcode is None:
                os.kill(child.pid, signal.SIGTERM)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    results: dict[str, Summary | BaseException] = {}
    try:
        for child in children:
            child.start()
        for child, share, (receive, send) in zip(children, shares, pipes, strict=True):
            send.close()
            try:
                for sensor_id, outcome in receive.recv():
                    results[sensor_id] = (
                        outcome if isinstance(outcome, Summary) else AgentError(outcome)
                    )
            except EOFError:  # it died without a word: its devices keep their outboxes
                child.join()
                for config in share:
                    results.setdefault(
                        config.sensor_id,
                        AgentError(f"{child.name} exited with {child.exitcode}"),
                    )
            child.join()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return results


def _child(configs: list[AgentConfig], send: Connection) -> None:
    """A child of run_processes: its share of the fleet, the tallies back through `send`."""
    fleet = Fleet(len(configs))
    outcomes: list[tuple[str, Summary | str]] = []
    try:
        agents = fleet.agents_for(configs)
    except AgentError as exc:
        send.send([(c.sensor_id, str(exc)) for c in configs])
        return

    def stop(signum: int, frame: object) -> None:
        for agent in agents:
            agent.stop()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, stop)
    for sensor_id, result in fleet.run().items():
        outcomes.append((sensor_id, result if isinstance(result, Summary) else str(result)))
    send.send(outcomes)
