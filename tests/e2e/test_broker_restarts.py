"""The broker stopped gracefully (SIGTERM) and started again, five times, while a fleet of
devices publishes and ingest writes: every reading lands in the table exactly once."""

from __future__ import annotations

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
    summary_line,
)

RESTARTS = 5


@pytest.mark.slow
def test_fleet_loses_nothing_across_five_graceful_broker_restarts(
    start_broker: Callable[..., Mosquitto],
    fleet_ids: list[str],
    agents: Agents,
    make_ingest_settings: Callable[..., IngestSettings],
    run_ingest: Callable[..., Running],
    table: str,
    aws: Endpoint,
) -> None:
    broker = start_broker()  # the shipped config: persistence on
    port = broker.config.port
    running = run_ingest(make_ingest_settings(port))
    total = FLEET * READINGS
    fleet = agents.simulate(
        fleet_ids, port, "--count", str(READINGS), "--interval", "0.01", "--receipts"
    )

    for k in range(1, RESTARTS + 1):
        # Spread over the run by progress, not by the clock.
        running.wait(lambda s, k=k: s.received >= k * total // (RESTARTS + 2))
        assert fleet.alive(), "each restart must land while the fleet still publishes"
        broker.stop()  # SIGTERM: Mosquitto saves sessions and queues, then exits
        broker.start()  # same port, same persistence file
        # Before the next one: two restarts inside one of ingest's backoff waits would
        # leave it one connection for both.
        running.wait(lambda s, k=k: s.connections >= k + 1)

    assert fleet.wait(120) == 0, fleet.err()[-3000:]
    line = summary_line(fleet.out(), f"{FLEET} devices")
    assert f"acknowledged {total}, buffered 0, dropped 0" in line, line
    running.settle(total)
    stats = running.finish()
    assert stats.connections == RESTARTS + 1, "ingest reconnected after every restart"
    assert_every_reading_once(aws.client("dynamodb"), table, fleet_ids)
