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

from cloud.aws import Endpoint
from cloud.ingest.settings import IngestSettings
from cloud.local.mosquitto import MAX_QUEUED_MESSAGES, Mosquitto
from tests.conftest import Pki
from tests.e2e.conftest import (
    FLEET,
    Agents,
    Running,
    assert_every_reading_once,
    missing_seqs,
    scan_items,
    seq_problems,
    summary_line,
    wait_for,
)
from tests.mqtt import Subscriber

BURST_PER_DEVICE = 1000  # 5 devices: 5,000 readings, 5x Mosquitto's default queue of 1000
SMALL_QUEUE = 100
DROPPED_TOPIC = "$SYS/broker/publish/messages/dropped"


def burst(agents: Agents, ids: list[str], port: int) -> None:
    """Devices that forget a reading at PUBACK: they finish while ingest is away."""
    fleet = agents.simulate(ids, port, "--count", str(BURST_PER_DEVICE), "--interval", "0")
    assert fleet.wait(120) == 0, fleet.err()[-3000:]
    total = len(ids) * BURST_PER_DEVICE
    line = summary_line(fleet.out(), f"{len(ids)} devices")
    assert f"acknowledged {total}, buffered 0" in line, "the broker took (PUBACKed) all of it"


def persist_session(run_ingest: Callable[..., Running], settings: IngestSettings) -> None:
    """Ingest subscribes once, then stops: the broker queues for its session from now on."""
    run_ingest(settings).finish()


@pytest.mark.slow
def test_shipped_queue_size_delivers_a_5000_reading_burst_to_a_stalled_ingest(
    start_broker: Callable[..., Mosquitto],
    fleet_ids: list[str],
    agents: Agents,
    make_ingest_settings: Callable[..., IngestSettings],
    run_ingest: Callable[..., Running],
    table: str,
    aws: Endpoint,
) -> None:
    broker = start_broker()
    assert f"max_queued_messages {MAX_QUEUED_MESSAGES}\n" in broker.config.render()
    assert MAX_QUEUED_MESSAGES >= FLEET * BURST_PER_DEVICE
    settings = make_ingest_settings(broker.config.port)
    persist_session(run_ingest, settings)
    burst(agents, fleet_ids, broker.config.port)

    running = run_ingest(settings)  # same client id: its session holds the whole burst
    running.settle(FLEET * BURST_PER_DEVICE)
    running.finish()
    items = scan_items(aws.client("dynamodb"), table)
    assert not seq_problems(items, fleet_ids, BURST_PER_DEVICE)
    assert "messages are being dropped" not in broker.config.log_path.read_text()


def test_a_small_queue_drops_readings_and_the_loss_is_counted(
    acl_broker: Callable[..., Mosquitto],
    pki: Pki,
    fleet_ids: list[str],
    agents: Agents,
    make_ingest_settings: Callable[..., IngestSettings],
    run_ingest: Callable[..., Running],
    table: str,
    aws: Endpoint,
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
    port = broker.config.port
    settings = make_ingest_settings(port)
    persist_session(run_ingest, settings)
    sys_watch = Subscriber(port, ident, (DROPPED_TOPIC,), client_id=name)
    sys_watch.start()
    try:
        burst(agents, fleet_ids, port)
        running = run_ingest(settings)
        sent = FLEET * BURST_PER_DEVICE
        running.settle(sent)
        running.finish()

        items = scan_items(aws.client("dynamodb"), table)
        gaps = missing_seqs(items, fleet_ids, BURST_PER_DEVICE)
        lost = sent - len(items)
        # The loss is real, and the table shows it as gaps in seq, reading for reading.
        assert 0 < lost <= sent - SMALL_QUEUE, f"{len(items)} of {sent} arrived"
        assert sum(len(g) for g in gaps.values()) == lost
        # The broker counts it: its $SYS counter reaches the same number ...
        sys_watch.wait_for(lambda ms: any(m.payload == str(lost).encode() for m in ms), timeout=15)
        # ... and its log names the client it dropped them for.
        log = broker.config.log_path.read_text()
        assert f"Outgoing messages are being dropped for client {settings.client_id}" in log
    finally:
        sys_watch.stop()


def test_devices_with_receipts_resend_what_a_small_queue_dropped(
    acl_broker: Callable[..., Mosquitto],
    fleet_ids: list[str],
    agents: Agents,
    make_ingest_settings: Callable[..., IngestSettings],
    run_ingest: Callable[..., Running],
    table: str,
    aws: Endpoint,
) -> None:
    broker = acl_broker("", extra=(f"max_queued_messages {SMALL_QUEUE}",))
    port = broker.config.port
    settings = make_ingest_settings(port)
    persist_session(run_ingest, settings)
    fleet = agents.simulate(
        fleet_ids,
        port,
        "--count",
        str(BURST_PER_DEVICE),
        "--interval",
        "0",
        "--receipts",
        "--receipt-timeout",
        "2",
    )
    log: Path = broker.config.log_path
    wait_for(
        lambda: f"messages are being dropped for client {settings.client_id}" in log.read_text(),
        60,
        "the broker dropping readings queued for the stalled ingest",
    )
    running = run_ingest(settings)
    assert fleet.wait(120) == 0, fleet.err()[-3000:]
    total = FLEET * BURST_PER_DEVICE
    line = summary_line(fleet.out(), f"{FLEET} devices")
    assert f"acknowledged {total}, buffered 0, dropped 0" in line, line
    assert "no receipt from cloud ingest yet: sending them again" in fleet.err()
    running.settle(total)
    running.finish()
    assert_every_reading_once(aws.client("dynamodb"), table, fleet_ids, BURST_PER_DEVICE)
