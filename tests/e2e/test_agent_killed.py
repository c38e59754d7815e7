"""A device agent killed with SIGKILL mid-run and started again with the same outbox: its
readings continue where they stopped, with no gap and no duplicate in `seq` in the table."""

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


@pytest.mark.slow
def test_agent_killed_and_restarted_leaves_no_gap_and_no_duplicate(
    start_broker: Callable[..., Mosquitto],
    fleet_ids: list[str],
    agents: Agents,
    make_ingest_settings: Callable[..., IngestSettings],
    run_ingest: Callable[..., Running],
    table: str,
    aws: Endpoint,
) -> None:
    port = start_broker().config.port
    running = run_ingest(make_ingest_settings(port))
    args = ("--count", str(READINGS), "--interval", "0.01", "--receipts")
    procs = {i: agents.one(i, port, *args) for i in fleet_ids}
    victim = fleet_ids[0]
    outbox = agents.outbox(victim)

    wait_for(lambda: outbox_state(outbox)[0] >= READINGS // 3, 30, f"{victim} a third of the way")
    procs[victim].kill9()
    taken = outbox_state(outbox)[0]
    assert 0 < taken < READINGS, "the kill must land mid-run"

    # The same command, for the readings it still owes: the outbox keeps seq and backlog.
    again = agents.one(victim, port, "--count", str(READINGS - taken), *args[2:])
    assert again.wait(60) == 0, again.err()[-3000:]
    assert "buffered 0, dropped 0" in summary_line(again.out(), victim)
    for sensor, proc in procs.items():
        if sensor != victim:
            assert proc.wait(60) == 0, proc.err()[-3000:]
            assert f"acknowledged {READINGS}, buffered 0" in summary_line(proc.out(), sensor)

    running.settle(FLEET * READINGS)
    running.finish()
    assert_every_reading_once(aws.client("dynamodb"), table, fleet_ids)
