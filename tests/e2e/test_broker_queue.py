"""A burst larger than the broker's default per-client queue, for an ingest that is not
running (its session persisted).

Devices without receipts forget a reading at the broker's PUBACK: with the shipped queue
size all of the burst is delivered once ingest starts; with a deliberately small queue the
broker drops readings, and the loss is counted three ways (gaps in `seq` in the table, the
broker's $SYS counter, its log). Devices with receipts (as the local stack runs them) lose
nothing even to the small queue: what has no receipt is sent again."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from cloud.local.mosquitto import MAX_QUEUED_MESSAGES, Mosquitto
from tests.conftest import Pki
from tests.e2e.conftest import FLEET, FleetRun
from tests.mqtt import Subscriber, wait_until
from tests.table import missing_seqs, scan_items

BURST_PER_DEVICE = 1000  # 5 devices: 5,000 readings, 5x Mosquitto's default queue of 1000
SMALL_QUEUE = 100
DROPPED_TOPIC = "$SYS/broker/publish/messages/dropped"


def burst(run: FleetRun) -> None:
    """Devices that forget a reading at PUBACK: they finish while ingest is away."""
    fleet = run.simulate(count=BURST_PER_DEVICE, interval="0", receipts=False)
    run.wait_fleet(fleet)
    line = run.summary(fleet)
    assert f"acknowledged {run.total}, buffered 0" in line, "the broker took (PUBACKed) all of it"


def persist_session(run: FleetRun) -> None:
    """Ingest subscribes once, then stops: the broker queues for its session from now on."""
    run.run_ingest().finish()


@pytest.mark.slow
def test_shipped_queue_size_delivers_a_5000_reading_burst_to_a_stalled_ingest(
    start_broker: Callable[..., Mosquitto], fleet_run: Callable[..., FleetRun]
) -> None:
    broker = start_broker()
    assert f"max_queued_messages {MAX_QUEUED_MESSAGES}\n" in broker.config.render()
    assert MAX_QUEUED_MESSAGES >= FLEET * BURST_PER_DEVICE
    run = fleet_run(broker, ingest=False)
    persist_session(run)
    burst(run)

    run.run_ingest()  # same client id: its session holds the whole burst
    run.finish()  # every reading exactly once
    assert "messages are being dropped" not in broker.config.log_path.read_text()


def test_a_small_queue_drops_readings_and_the_loss_is_counted(
    acl_broker: Callable[..., Mosquitto], pki: Pki, fleet_run: Callable[..., FleetRun]
) -> None:
    # The later max_queued_messages line overrides the shipped one; $SYS every second, and
    # readable by this test's watcher only.
    name, ident = pki.reader()
    broker = acl_broker(
        f"user {name}\ntopic read $SYS/#",
        extra=(f"max_queued_messages {SMALL_QUEUE}", "sys_interval 1"),
    )
    conf = broker.config.render()
    assert conf.index(f"max_queued_messages {MAX_QUEUED_MESSAGES}") < conf.index(
        f"max_queued_messages {SMALL_QUEUE}\n"
    )
    run = fleet_run(broker, ingest=False)
    persist_session(run)
    sys_watch = Subscriber(run.port, ident, (DROPPED_TOPIC,), client_id=name)
    sys_watch.start()
    try:
        burst(run)
        running = run.run_ingest()
        sent = run.total
        running.settle(sent)
        running.finish()

        items = scan_items(run.ddb, run.settings.table)
        gaps = missing_seqs(items, run.ids, BURST_PER_DEVICE)
        lost = sent - len(items)
        # The loss is real, and the table shows it as gaps in seq, reading for reading.
        assert 0 < lost <= sent - SMALL_QUEUE, f"{len(items)} of {sent} arrived"
        assert sum(len(g) for g in gaps.values()) == lost
        # The broker counts it: its $SYS counter reaches the same number ...
        sys_watch.wait_for(lambda ms: any(m.payload == str(lost).encode() for m in ms), timeout=15)
        # ... and its log names the client it dropped them for.
        log = broker.config.log_path.read_text()
        assert f"Outgoing messages are being dropped for client {run.settings.client_id}" in log
    finally:
        sys_watch.stop()


def test_devices_with_receipts_resend_what_a_small_queue_dropped(
    acl_broker: Callable[..., Mosquitto], fleet_run: Callable[..., FleetRun]
) -> None:
    broker = acl_broker("", extra=(f"max_queued_messages {SMALL_QUEUE}",))
    run = fleet_run(broker, ingest=False)
    persist_session(run)
    fleet = run.simulate("--receipt-timeout", "2", count=BURST_PER_DEVICE, interval="0")
    log: Path = broker.config.log_path
    client_id = run.settings.client_id
    wait_until(
        lambda: f"messages are being dropped for client {client_id}" in log.read_text(),
        60,
        "the broker dropping readings queued for the stalled ingest",
        every=0.05,
    )
    run.run_ingest()
    run.wait_fleet(fleet)
    line = run.summary(fleet)
    assert f"acknowledged {run.total}, buffered 0, dropped 0" in line, line
    assert "no receipt from cloud ingest yet: sending them again" in fleet.err()
    run.finish()
