"""A device agent killed with SIGKILL mid-run and started again with the same outbox: its
readings continue where they stopped, with no gap and no duplicate in `seq` in the table."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.e2e.conftest import READINGS, FleetRun, summary_line
from tests.mqtt import wait_until
from tests.outbox import outbox_state


@pytest.mark.slow
def test_agent_killed_and_restarted_leaves_no_gap_and_no_duplicate(
    fleet_run: Callable[..., FleetRun],
) -> None:
    run = fleet_run()
    procs = run.each()
    victim = run.ids[0]
    outbox = run.agents.outbox(victim)

    third = f"{victim} a third of the way"
    wait_until(lambda: outbox_state(outbox)[0] >= READINGS // 3, 30, third, every=0.05)
    procs[victim].kill9()
    taken = outbox_state(outbox)[0]
    assert 0 < taken < READINGS, "the kill must land mid-run"

    # The same command, for the readings it still owes: the outbox keeps seq and backlog.
    owed = ("--count", str(READINGS - taken), "--interval", "0.01", "--receipts")
    again = run.agents.one(victim, run.port, *owed)
    run.wait_fleet(again, 60)
    assert "buffered 0, dropped 0" in summary_line(again.out(), victim)
    for sensor, proc in procs.items():
        if sensor != victim:
            run.wait_fleet(proc, 60)
            assert f"acknowledged {READINGS}, buffered 0" in summary_line(proc.out(), sensor)

    run.finish()
