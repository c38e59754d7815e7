"""Cloud ingest killed with SIGKILL in the middle of a batch (half of it written, none of it
acknowledged) and started again: no reading lost, none doubled; the table count is exact."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from cloud.aws import Endpoint
from cloud.ingest.settings import IngestSettings
from cloud.local.mosquitto import Mosquitto
from cloud.table import item_count
from tests.e2e.conftest import (
    FLEET,
    READINGS,
    Agents,
    IngestChild,
    assert_every_reading_once,
    settle_items,
    summary_line,
    wait_for,
)

STALL_AFTER_BATCHES = 20  # ~500 of the 2,000 readings written before the crash


@pytest.mark.slow
def test_ingest_killed_mid_batch_and_restarted_loses_and_doubles_nothing(
    start_broker: Callable[..., Mosquitto],
    fleet_ids: list[str],
    agents: Agents,
    make_ingest_settings: Callable[..., IngestSettings],
    ingest_child: Callable[..., IngestChild],
    table: str,
    aws: Endpoint,
    tmp_path: Path,
) -> None:
    port = start_broker().config.port
    settings = make_ingest_settings(port)
    marker = tmp_path / "stalled"
    first = ingest_child(settings, stall_after_batches=STALL_AFTER_BATCHES, stall_marker=marker)
    fleet = agents.simulate(
        fleet_ids, port, "--count", str(READINGS), "--interval", "0.01", "--receipts"
    )

    wait_for(marker.exists, 60, "ingest to be in the middle of a batch")
    first.proc.kill9()
    ddb = aws.client("dynamodb")
    at_kill = item_count(ddb, table)
    assert 0 < at_kill < FLEET * READINGS, "the kill must land mid-stream"
    assert "written" in marker.read_text()

    second = ingest_child(settings)  # same client id: the broker kept the unacked messages
    assert fleet.wait(120) == 0, fleet.err()[-3000:]
    total = FLEET * READINGS
    assert f"acknowledged {total}, buffered 0" in summary_line(fleet.out(), f"{FLEET} devices")
    settle_items(ddb, table, total)
    assert second.proc.terminate() == 0, second.log()[-3000:]
    assert second.proc.out().startswith("ingest: received ")
    assert_every_reading_once(ddb, table, fleet_ids)
