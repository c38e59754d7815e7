"""Receipts: with --receipts a reading leaves the outbox when ingest confirms it is in the
table, not at the broker's PUBACK, and one that gets no receipt is sent again.

A test subscriber with the ingest identity plays ingest's part, so each test decides which
receipts are sent. tests/cloud/test_ingest.py covers ingest sending them, and
tests/e2e/test_broker_killed.py the broker crash they are for.
"""

from __future__ import annotations

import signal
import sqlite3
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from cloud.local.mosquitto import Mosquitto
from device.payload import encode_receipt
from tests.mqtt import Received, Subscriber, device_args, finish, start_agent, wait_until


def outbox_seqs(path: Path) -> list[int]:
    """The seqs an agent's outbox still holds, read as a user would with sqlite3."""
    if not path.exists():
        return []
    with sqlite3.connect(path) as db:
        try:
            return [int(seq) for (seq,) in db.execute("SELECT seq FROM outbox ORDER BY seq")]
        except sqlite3.OperationalError:
            return []  # the agent has not made its tables yet


def agent_args(port: int, device_id: str, tls: list[str], outbox: Path) -> list[str]:
    return [*device_args(port, device_id, tls, outbox), "--interval", "0", "--receipts"]


@pytest.mark.parametrize("transport", ["paho", "awsiot"])
def test_a_reading_leaves_the_outbox_only_with_its_own_receipt(
    transport: str,
    shared_broker: Mosquitto,
    subscribe: Callable[..., Subscriber],
    tls_args: Callable[[str], list[str]],
    device_id: str,
    tmp_path: Path,
) -> None:
    port = shared_broker.config.port
    ingest = subscribe(port)
    outbox = tmp_path / "outbox.sqlite"
    agent = start_agent(
        *agent_args(port, device_id, tls_args(device_id), outbox),
        "--transport",
        transport,
        "--count",
        "3",
    )
    ts = {r["seq"]: r["ts"] for r in ingest.wait_readings(device_id, 3)}  # PUBACKed, all
    topic = f"sensors/{device_id}/receipt"
    # A receipt for another reading numbered 0 (one of an outbox since replaced) is not one
    # for ours: the ts must match too.
    ingest.publish(topic, encode_receipt([(0, ts[0] - 1)]))
    ingest.publish(topic, encode_receipt([(1, ts[1])]))
    wait_until(lambda: outbox_seqs(outbox) == [0, 2], what="only seq 1 confirmed")
    assert agent.poll() is None, "--count waits for every receipt"

    ingest.publish(topic, encode_receipt([(0, ts[0]), (2, ts[2])]))
    code, out, err = finish(agent)
    assert code == 0, err
    assert f"{device_id}: published 3, acknowledged 3, buffered 0, dropped 0" in out
    assert " ERROR " not in err, "a clean run logs no error"
    assert outbox_seqs(outbox) == []


def test_a_reading_without_a_receipt_is_sent_again_and_kept_when_the_agent_stops(
    shared_broker: Mosquitto,
    subscribe: Callable[..., Subscriber],
    tls_args: Callable[[str], list[str]],
    device_id: str,
    tmp_path: Path,
) -> None:
    port = shared_broker.config.port
    witness = subscribe(port)
    outbox = tmp_path / "outbox.sqlite"
    agent = start_agent(
        *agent_args(port, device_id, tls_args(device_id), outbox),
        "--count",
        "2",
        "--receipt-timeout",
        "1",
        "--flush-timeout",
        "0",
    )

    def copies(messages: list[Received]) -> Counter[int]:
        return Counter(m.json()["seq"] for m in messages if m.topic == f"sensors/{device_id}/data")

    witness.wait_for(lambda ms: min(copies(ms)[0], copies(ms)[1]) >= 2)  # sent again
    agent.send_signal(signal.SIGTERM)
    code, out, err = finish(agent)
    assert code == 1, err
    assert "acknowledged 0, buffered 2, dropped 0" in out
    assert "no receipt from cloud ingest yet: sending them again" in err
    assert "stopped with 2 reading(s) not yet acknowledged" in err
    assert outbox_seqs(outbox) == [0, 1], "kept for the next run"


def test_a_receipt_with_another_ts_leaves_the_reading_waiting_and_it_is_sent_again(
    shared_broker: Mosquitto,
    subscribe: Callable[..., Subscriber],
    tls_args: Callable[[str], list[str]],
    device_id: str,
    tmp_path: Path,
) -> None:
    """A receipt naming our seq with another reading's ts confirms nothing: the reading still
    waits for its own, and is sent again when none comes, so a --count run ends."""
    port = shared_broker.config.port
    ingest = subscribe(port)
    outbox = tmp_path / "outbox.sqlite"
    agent = start_agent(
        *agent_args(port, device_id, tls_args(device_id), outbox),
        "--count",
        "1",
        "--receipt-timeout",
        "1",
    )
    (first,) = ingest.wait_readings(device_id, 1)
    topic = f"sensors/{device_id}/receipt"
    ingest.publish(topic, encode_receipt([(0, first["ts"] - 1)]))
    ingest.wait_for(lambda ms: len([m for m in ms if m.topic == f"sensors/{device_id}/data"]) >= 2)
    ingest.publish(topic, encode_receipt([(0, first["ts"])]))
    code, out, err = finish(agent)
    assert code == 0, err
    assert f"{device_id}: published 2, acknowledged 1, buffered 0" in out
    assert outbox_seqs(outbox) == []
