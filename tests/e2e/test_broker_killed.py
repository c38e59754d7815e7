"""The broker killed with SIGKILL (no chance to save anything) while a fleet publishes.

What the devices' outboxes can and cannot cover: they keep every reading until the broker
acknowledges it, so whatever the broker had not acknowledged is sent again, and the keyed
writes make repeats harmless. But Mosquitto acknowledges a reading before it is on disk or
with ingest: a reading acknowledged in the instant before the crash dies with the broker
(DESIGN.md, "Reliability rules"). That loss is bounded and shows as a gap in `seq`.

And after the crash the broker comes back with no sessions at all (none was saved): until
ingest subscribes again it answers each reading with PUBACK "No matching subscribers" and
drops it. The devices must keep those; that window is not bounded by an instant.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from cloud.aws import Endpoint
from cloud.ingest import IngestSettings
from cloud.local.mosquitto import Mosquitto
from tests.e2e.conftest import (
    FLEET,
    READINGS,
    Agents,
    Running,
    assert_every_reading_once,
    missing_seqs,
    outbox_state,
    scan_items,
    seq_problems,
    summary_line,
    wait_for,
)

KILLS = 3
#: Readings one device may lose to one crash: those acknowledged in its last instant.
LOST_PER_DEVICE_PER_CRASH = 3


@pytest.mark.slow
def test_fleet_survives_three_broker_kills_losing_only_what_the_broker_had_just_acked(
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
    fleet = agents.simulate(fleet_ids, port, "--count", str(READINGS), "--interval", "0.01")

    for k in range(1, KILLS + 1):
        running.wait(lambda s, k=k: s.received >= k * total // (KILLS + 2))
        assert fleet.alive(), "each kill must land while the fleet still publishes"
        broker.kill()  # SIGKILL: what was only in the broker's memory is gone
        broker.start()

    assert fleet.wait(120) == 0, fleet.err()[-3000:]
    line = summary_line(fleet.out(), f"{FLEET} devices")
    assert f"acknowledged {total}, buffered 0, dropped 0" in line, line
    running.settle(total)
    stats = running.finish()
    assert stats.connections == KILLS + 1

    items = scan_items(aws.client("dynamodb"), table)
    gaps = {s: m for s, m in missing_seqs(items, fleet_ids, READINGS).items() if m}
    lost = sum(len(m) for m in gaps.values())
    print(f"readings lost to {KILLS} broker crashes: {lost} of {total}")  # shown with -rP
    others = [p for p in seq_problems(items, fleet_ids, READINGS) if "missing" not in p]
    assert others in ([], [f"{len(items)} items, expected {total}"]), others  # none doubled
    assert len(items) == total - lost
    bound = KILLS * LOST_PER_DEVICE_PER_CRASH
    too_many = {s: f"{len(m)} lost, e.g. seq {m[:5]}" for s, m in gaps.items() if len(m) > bound}
    assert not too_many, f"more lost than a crash's last instant explains: {too_many}"


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
