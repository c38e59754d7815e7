"""The broker killed with SIGKILL (no chance to save anything) while a fleet publishes.

Mosquitto acknowledges a reading before it is on disk or with ingest: a reading acknowledged
in the instant before the crash dies with the broker (DESIGN.md, "Reliability rules"). The
devices run with receipts, as the local stack runs them, so a PUBACK does not end their
care: each reading stays in the outbox until ingest confirms it is in the table, and what
the crash took is sent again after the reconnect. Every reading arrives exactly once.

And after the crash the broker comes back with no sessions at all (none was saved): until
ingest subscribes again it answers each reading with PUBACK "No matching subscribers" and
drops it. The devices must keep those; that window is not bounded by an instant.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.e2e.conftest import FleetRun
from tests.mqtt import Subscriber, wait_until
from tests.outbox import outbox_state

KILLS = 3


@pytest.mark.slow
def test_fleet_survives_three_broker_kills_with_every_reading_exactly_once(
    fleet_run: Callable[..., FleetRun],
) -> None:
    run = fleet_run()
    assert run.ingest is not None
    fleet = run.simulate()

    for k in range(1, KILLS + 1):
        run.ingest.wait(lambda s, k=k: s.received >= k * run.total // (KILLS + 2))
        assert fleet.alive(), "each kill must land while the fleet still publishes"
        run.broker.kill()  # SIGKILL: what was only in the broker's memory is gone
        run.broker.start()
        # Before the next one: two kills inside one of ingest's backoff waits would
        # leave it one connection for both.
        run.ingest.wait(lambda s, k=k: s.connections >= k + 1)

    run.wait_fleet(fleet)
    line = run.summary(fleet)
    assert f"acknowledged {run.total}, buffered 0, dropped 0" in line, line
    stats = run.finish()
    assert stats.connections == KILLS + 1


def test_readings_the_broker_acknowledged_and_then_lost_in_a_crash_are_sent_again(
    fleet_run: Callable[..., FleetRun], subscribe: Callable[..., Subscriber]
) -> None:
    """The crash at its worst: every reading PUBACKed and queued for an ingest that is away,
    none on disk. Devices that forgot readings at PUBACK would have lost all of them."""
    run = fleet_run(ingest=False)
    run.run_ingest().finish()  # the broker now queues readings for ingest's session
    witness = subscribe(run.port)  # sees what the broker took, as it takes it

    fleet = run.simulate(count=40, interval="0")
    for i in run.ids:
        witness.wait_readings(i, run.count)  # all taken and acknowledged by the broker
    assert fleet.alive(), "no receipt yet: the devices still hold every reading"
    run.broker.kill()  # ingest's queue was in memory only
    run.broker.start()
    run.run_ingest()
    run.wait_fleet(fleet, 60)
    line = run.summary(fleet)
    assert f"acknowledged {run.total}, buffered 0, dropped 0" in line, line
    run.finish()


def test_readings_sent_before_ingest_is_back_after_a_crash_are_kept_not_dropped(
    fleet_run: Callable[..., FleetRun],
) -> None:
    run = fleet_run(ingest=False)
    run.run_ingest().finish()  # ingest subscribed once; its session is in memory only
    run.broker.kill()
    run.broker.start()  # ... so it is gone: nobody subscribes to sensors/+/data now

    # Without receipts: the agent's own handling of "No matching subscribers" is on test.
    fleet = run.simulate(count=40, interval="0", receipts=False)
    log = run.broker.config.log_path
    wait_until(
        lambda: (
            all(f"as {i} " in log.read_text() for i in run.ids)
            and all(outbox_state(run.agents.outbox(i))[0] >= run.count for i in run.ids)
        ),
        30,
        "every device connected and all its readings taken",
        every=0.05,
    )
    run.run_ingest()  # back, and subscribed again
    run.wait_fleet(fleet, 60)
    run.finish()
