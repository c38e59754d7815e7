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
    wait_for,
)
from tests.mqtt import Subscriber

KILLS = 3


@pytest.mark.slow
def test_fleet_survives_three_broker_kills_with_every_reading_exactly_once(
    start_broker: Callable[..., Mosquitto],
    fleet_ids: list[str],
    agents: Agents,
    make_ingest_settings: Callable[..., IngestSettings],
    run_ingest: Callable[..., Running],
    table: str,
    aws: Endpoint,
) -> None:
    broker = start_broker()
    port = broker.config.port
    running = run_ingest(make_ingest_settings(port))
    total = FLEET * READINGS
    fleet = agents.simulate(
        fleet_ids, port, "--count", str(READINGS), "--interval", "0.01", "--receipts"
    )

    for k in range(1, KILLS + 1):
        running.wait(lambda s, k=k: s.received >= k * total // (KILLS + 2))
        assert fleet.alive(), "each kill must land while the fleet still publishes"
        broker.kill()  # SIGKILL: what was only in the broker's memory is gone
        broker.start()
        # Before the next one: two kills inside one of ingest's backoff waits would
        # leave it one connection for both.
        running.wait(lambda s, k=k: s.connections >= k + 1)

    assert fleet.wait(120) == 0, fleet.err()[-3000:]
    line = summary_line(fleet.out(), f"{FLEET} devices")
    assert f"acknowledged {total}, buffered 0, dropped 0" in line, line
    running.settle(total)
    stats = running.finish()
    assert stats.connections == KILLS + 1
    assert_every_reading_once(aws.client("dynamodb"), table, fleet_ids)


def test_readings_the_broker_acknowledged_and_then_lost_in_a_crash_are_sent_again(
    start_broker: Callable[..., Mosquitto],
    fleet_ids: list[str],
    agents: Agents,
    make_ingest_settings: Callable[..., IngestSettings],
    run_ingest: Callable[..., Running],
    subscribe: Callable[..., Subscriber],
    table: str,
    aws: Endpoint,
) -> None:
    """The crash at its worst: every reading PUBACKed and queued for an ingest that is away,
    none on disk. Devices that forgot readings at PUBACK would have lost all of them."""
    broker = start_broker()
    port = broker.config.port
    settings = make_ingest_settings(port)
    run_ingest(settings).finish()  # the broker now queues readings for ingest's session
    witness = subscribe(port)  # sees what the broker took, as it takes it

    count = 40
    fleet = agents.simulate(fleet_ids, port, "--count", str(count), "--interval", "0", "--receipts")
    for i in fleet_ids:
        witness.wait_readings(i, count)  # all taken and acknowledged by the broker
    assert fleet.alive(), "no receipt yet: the devices still hold every reading"
    broker.kill()  # ingest's queue was in memory only
    broker.start()
    running = run_ingest(settings)
    assert fleet.wait(60) == 0, fleet.err()[-3000:]
    line = summary_line(fleet.out(), f"{FLEET} devices")
    assert f"acknowledged {FLEET * count}, buffered 0, dropped 0" in line, line
    running.settle(FLEET * count)
    running.finish()
    assert_every_reading_once(aws.client("dynamodb"), table, fleet_ids, count)


def test_readings_sent_before_ingest_is_back_after_a_crash_are_kept_not_dropped(
    start_broker: Callable[..., Mosquitto],
    fleet_ids: list[str],
    agents: Agents,
    make_ingest_settings: Callable[..., IngestSettings],
    run_ingest: Callable[..., Running],
    table: str,
    aws: Endpoint,
) -> None:
    broker = start_broker()
    port = broker.config.port
    settings = make_ingest_settings(port)
    run_ingest(settings).finish()  # ingest subscribed once; its session is in memory only
    broker.kill()
    broker.start()  # ... so it is gone: nobody subscribes to sensors/+/data now

    count = 40
    # Without receipts: the agent's own handling of "No matching subscribers" is on test.
    fleet = agents.simulate(fleet_ids, port, "--count", str(count), "--interval", "0")
    log = broker.config.log_path
    wait_for(
        lambda: (
            all(f"as {i} " in log.read_text() for i in fleet_ids)
            and all(outbox_state(agents.outbox(i))[0] >= count for i in fleet_ids)
        ),
        30,
        "every device connected and all its readings taken",
    )
    running = run_ingest(settings)  # back, and subscribed again
    assert fleet.wait(60) == 0, fleet.err()[-3000:]
    running.settle(FLEET * count)
    running.finish()
    assert_every_reading_once(aws.client("dynamodb"), table, fleet_ids, count)
