"""Simulated devices sharing a thread (device.fleet): each its own identity, session and
outbox, every reading delivered, on sockets past the descriptor numbers select() can take."""

from __future__ import annotations

import contextlib
import os
import resource
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from device import fleet_processes
from device.agent import Agent
from device.config import AgentConfig, load_config
from device.errors import AgentError
from device.fleet import Fleet
from device.fleet_processes import raise_open_files_limit, run_processes


@contextlib.contextmanager
def high_descriptors() -> Iterator[None]:
    """Hold 1,100 descriptors, so every socket opened meanwhile is numbered past 1023
    (where paho's own select() loop, the test's subscriber too, would fail)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 2048:
        pytest.skip(f"the hard limit on open files ({hard}) is below 2048")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 2048), hard))
    held = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
    try:
        yield
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def configs_for(ids: list[str], port: int, pki, tmp_path: Path, **flags) -> list[AgentConfig]:
    configs = []
    for device_id in ids:
        ident = pki.device(device_id)
        flags_here = {
            "broker": f"mqtts://127.0.0.1:{port}",
            "cert": ident.cert,
            "key": ident.key,
            "ca": ident.ca,
            "outbox": tmp_path / f"{device_id}.sqlite",
            "clock_wait": 0,
            **flags,
        }
        configs.append(load_config(device_id, flags_here, environ={}))
    return configs


def fleet_of(ids: list[str], port: int, pki, tmp_path: Path, **flags) -> tuple[Fleet, list[Agent]]:
    fleet = Fleet(len(ids))
    return fleet, fleet.agents_for(configs_for(ids, port, pki, tmp_path, **flags))


def test_devices_on_one_thread_deliver_every_reading_past_descriptor_1023(
    shared_broker, subscribe, pki, device_id, tmp_path: Path
):
    sub = subscribe(shared_broker.config.port, ("sensors/+/data", "sensors/+/status"))
    ids = [f"{device_id}-{n}" for n in range(1, 9)]
    threads_before = threading.active_count()
    with high_descriptors():
        fleet, _ = fleet_of(ids, shared_broker.config.port, pki, tmp_path, count=20, interval=0)
        results = fleet.run()

    assert {r.sensor_id: r.acknowledged for r in results.values()} == dict.fromkeys(ids, 20)
    for i in ids:
        readings = sub.wait_readings(i, 20)
        assert sorted({r["seq"] for r in readings}) == list(range(20))
    # Each device ended with its own `offline` (the loop wrote it before its DISCONNECT).
    sub.wait_for(
        lambda ms: (
            {m.topic for m in ms if m.payload == b"offline"} >= {f"sensors/{i}/status" for i in ids}
        )
    )
    assert threading.active_count() <= threads_before  # the loop's threads are gone


def test_a_stopped_fleet_keeps_what_it_could_not_send(shared_broker, pki, device_id, tmp_path):
    # No subscriber and a broker that refuses nothing: readings wait for a receipt that
    # never comes; stop() ends every device at once and each keeps its readings.
    ids = [f"{device_id}-{n}" for n in range(1, 4)]
    fleet, agents = fleet_of(
        ids,
        shared_broker.config.port,
        pki,
        tmp_path,
        count=5,
        interval=0,
        receipts=True,
        flush_timeout=0.5,
    )
    timer = threading.Timer(1.0, lambda: [a.stop() for a in agents])
    timer.start()
    try:
        results = fleet.run()
    finally:
        timer.cancel()
    assert {r.sensor_id: r.buffered for r in results.values()} == dict.fromkeys(ids, 5)


def test_a_fleet_too_big_for_the_hard_limit_says_which_limit(monkeypatch):
    monkeypatch.setattr(fleet_processes.resource, "getrlimit", lambda _: (1024, 1024))
    with pytest.raises(AgentError, match=r"1000 devices need about 4064 open files.*1024"):
        raise_open_files_limit(1000)


def test_a_fleet_split_over_processes_delivers_every_reading(
    shared_broker, subscribe, pki, device_id, tmp_path: Path
):
    sub = subscribe(shared_broker.config.port)
    ids = [f"{device_id}-{n}" for n in range(1, 5)]
    configs = configs_for(ids, shared_broker.config.port, pki, tmp_path, count=10, interval=0)

    results = run_processes(configs, processes=2)

    assert {i: r.acknowledged for i, r in results.items()} == dict.fromkeys(ids, 10)
    for i in ids:
        assert sorted({r["seq"] for r in sub.wait_readings(i, 10)}) == list(range(10))
