"""The network between the agents and the broker cut for 30 seconds, then restored (through
tests/proxy.py): everything arrives, and the agents' memory stays bounded while they buffer
on disk."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from cloud.aws import Endpoint
from cloud.ingest.settings import IngestSettings
from cloud.local.mosquitto import Mosquitto
from tests.e2e.conftest import (
    FLEET,
    READINGS,
    Agents,
    Running,
    assert_every_reading_once,
    outbox_state,
    summary_line,
)
from tests.proxy import Proxy

CUT_SECONDS = 30.0
MiB = 1 << 20
RSS_CEILING = 60 * MiB
RSS_GROWTH = 3 * MiB


@pytest.mark.slow
def test_thirty_second_cut_loses_nothing_and_agents_memory_stays_bounded(
    start_broker: Callable[..., Mosquitto],
    fleet_ids: list[str],
    agents: Agents,
    make_ingest_settings: Callable[..., IngestSettings],
    run_ingest: Callable[..., Running],
    table: str,
    aws: Endpoint,
) -> None:
    port = start_broker().config.port
    running = run_ingest(make_ingest_settings(port))  # the cloud side is not behind the proxy
    total = FLEET * READINGS
    with Proxy(port, lifetime=180) as proxy:
        # 400 readings at 0.05 s take 20 s: most of them are taken while the link is down.
        procs = {
            i: agents.one(
                i, proxy.port, "--count", str(READINGS), "--interval", "0.05", "--receipts"
            )
            for i in fleet_ids
        }
        running.wait(lambda s: s.received >= total // 8)
        proxy.cut()
        cut_at = time.monotonic()
        received_at_cut = running.stats.received
        assert received_at_cut < total // 2, "the cut must land early in the run"

        start = {i: p.rss() for i, p in procs.items()}
        peak = dict(start)
        while time.monotonic() - cut_at < CUT_SECONDS:  # the fault itself lasts this long
            for i, p in procs.items():
                assert p.alive(), f"{i} gave up while the network was down:\n{p.err()[-2000:]}"
                peak[i] = max(peak[i], p.rss())
            time.sleep(1.0)
        end = {i: p.rss() for i, p in procs.items()}
        waiting = {i: outbox_state(agents.outbox(i))[1] for i in fleet_ids}
        stalled = running.stats.received
        proxy.restore()

        # While cut: nothing crossed, every agent said so and kept its readings on disk.
        assert stalled - received_at_cut <= FLEET * 100, "at most the in-flight windows"
        for p in procs.values():
            assert "readings are kept in" in p.err(), p.err()[-2000:]
        assert all(n >= 100 for n in waiting.values()), f"waiting in the outboxes: {waiting}"
        for i in fleet_ids:
            assert peak[i] < RSS_CEILING, f"{i}: peak RSS {peak[i] / MiB:.1f} MiB"
            growth = end[i] - start[i]
            assert growth < RSS_GROWTH, f"{i}: RSS grew {growth / MiB:.1f} MiB while cut"

        for i, p in procs.items():
            assert p.wait(90) == 0, p.err()[-3000:]
            assert f"acknowledged {READINGS}, buffered 0" in summary_line(p.out(), i)
    running.settle(total)
    running.finish()
    assert_every_reading_once(aws.client("dynamodb"), table, fleet_ids)
