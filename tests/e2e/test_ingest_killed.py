"""Cloud ingest killed with SIGKILL in the middle of a batch (half of it written, none of it
acknowledged) and started again: no reading lost, none doubled; the table count is exact."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from cloud.table import item_count
from tests.e2e.conftest import FleetRun
from tests.mqtt import wait_until
from tests.table import settle_items

STALL_AFTER_BATCHES = 20  # ~500 of the 2,000 readings written before the crash


@pytest.mark.slow
def test_ingest_killed_mid_batch_and_restarted_loses_and_doubles_nothing(
    fleet_run: Callable[..., FleetRun], tmp_path: Path
) -> None:
    run = fleet_run(ingest=False)
    marker = tmp_path / "stalled"
    first = run.ingest_process(stall_after_batches=STALL_AFTER_BATCHES, stall_marker=marker)
    fleet = run.simulate()

    wait_until(marker.exists, 60, "ingest to be in the middle of a batch", every=0.05)
    first.proc.kill9()
    at_kill = item_count(run.ddb, run.settings.table)
    assert 0 < at_kill < run.total, "the kill must land mid-stream"
    assert "written" in marker.read_text()

    second = run.ingest_process()  # same client id: the broker kept the unacked messages
    run.wait_fleet(fleet)
    assert f"acknowledged {run.total}, buffered 0" in run.summary(fleet)
    settle_items(run.ddb, run.settings.table, run.total)
    assert second.proc.terminate() == 0, second.log()[-3000:]
    assert second.proc.out().startswith("ingest: received ")
    run.assert_every_reading_once()
