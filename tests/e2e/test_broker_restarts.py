"""The broker stopped gracefully (SIGTERM) and started again, five times, while a fleet of
devices publishes and ingest writes: every reading lands in the table exactly once."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.e2e.conftest import FleetRun

RESTARTS = 5


@pytest.mark.slow
def test_fleet_loses_nothing_across_five_graceful_broker_restarts(
    fleet_run: Callable[..., FleetRun],
) -> None:
    run = fleet_run()  # the shipped broker config: persistence on
    assert run.ingest is not None
    fleet = run.simulate()

    for k in range(1, RESTARTS + 1):
        # Spread over the run by progress, not by the clock.
        run.ingest.wait(lambda s, k=k: s.received >= k * run.total // (RESTARTS + 2))
        assert fleet.alive(), "each restart must land while the fleet still publishes"
        run.broker.stop()  # SIGTERM: Mosquitto saves sessions and queues, then exits
        run.broker.start()  # same port, same persistence file
        # Before the next one: two restarts inside one of ingest's backoff waits would
        # leave it one connection for both.
        run.ingest.wait(lambda s, k=k: s.connections >= k + 1)

    run.wait_fleet(fleet)
    line = run.summary(fleet)
    assert f"acknowledged {run.total}, buffered 0, dropped 0" in line, line
    stats = run.finish()
    assert stats.connections == RESTARTS + 1, "ingest reconnected after every restart"
