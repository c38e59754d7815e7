"""`cloud devices`: each device's status, newest reading, health and config, from the
retained messages the devices keep and the table, the offline and stale ones first."""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cloud.aws import Endpoint
from cloud.fleet.devices import COLUMNS
from cloud.ingest.rule import to_item
from cloud.local.mosquitto import Mosquitto
from device.payload import Health, Reading, Reported, encode_health, encode_reported, parse_health
from tests.cloud.fleet import Cloud, local_target, retain
from tests.conftest import BrokerFactory, Pki
from tests.mqtt import MqttClient, Subscriber, device_args, start_agent, wait_until
from tests.outbox import outbox_rows
from tests.proxy import Proxy


@pytest.fixture
def broker(start_broker: BrokerFactory) -> Mosquitto:
    """A broker of this test's own: `cloud devices` lists every device the broker knows."""
    return start_broker()


@pytest.fixture
def cloud(
    broker: Mosquitto,
    aws: Endpoint,
    table: str,
    pki: Pki,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Cloud:
    return local_target(broker, aws, table, pki, tmp_path, monkeypatch)


def reading(aws: Endpoint, table: str, sensor_id: str, ts: int, temperature: float) -> None:
    item = to_item(f"sensors/{sensor_id}/data", Reading(sensor_id, ts, 0, temperature).to_payload())
    aws.client("dynamodb").put_item(TableName=table, Item=item)


def health(sensor_id: str, ts: int, **fields: Any) -> bytes:
    """A health message as the agent encodes it."""
    values: dict[str, Any] = {
        "sensor_id": sensor_id,
        "ts": ts,
        "agent_version": "0.1.0",
        "uptime_s": 12.5,
        "mqtt_version": "5",
        "outbox_depth": 0,
        "oldest_unsent_age_s": None,
        "dropped": 0,
        "read_errors": 0,
        "reconnects": 0,
        "clock_synced": True,
        "peak_rss_kib": 30000,
        "soc_temp_c": None,
        "config_version": None,
    }
    return encode_health(Health(**{**values, **fields}))


@pytest.fixture
def fleet(broker: Mosquitto, pki: Pki, aws: Endpoint, table: str, device_id: str) -> list[str]:
    """Three devices: `fresh` online with a reading a second old, its config in sync;
    `stale` online, its reading an hour old, its outbox backing up, a config pending;
    `gone` offline with a recent reading. Returned in the order `cloud devices` lists them."""
    now = int(time.time() * 1000)
    fresh, stale, gone = (f"{device_id}-{n}" for n in ("fresh", "stale", "gone"))
    reading(aws, table, fresh, now - 1_000, 21.5)
    reading(aws, table, stale, now - 3_600_000, 19.0)
    reading(aws, table, gone, now - 2_000, 20.0)
    retain(broker, pki, fresh, "status", b"online")
    retain(broker, pki, stale, "status", b"online")
    retain(broker, pki, gone, "status", b"offline")
    retain(broker, pki, fresh, "health", health(fresh, now, config_version=1))
    retain(
        broker,
        pki,
        stale,
        "health",
        health(stale, now - 5_000, outbox_depth=240, oldest_unsent_age_s=3600.0, reconnects=7),
    )
    reported = encode_reported(Reported(fresh, 1, "applied", {"interval": 5.0}))
    retain(broker, pki, fresh, "config/reported", reported)
    return [gone, stale, fresh]


def test_devices_lists_status_health_and_config(
    cloud: Cloud, fleet: list[str], broker: Mosquitto, pki: Pki
) -> None:
    gone, stale, fresh = fleet
    # A desired config for two of them, as `cloud config set` makes it.
    assert cloud("config", "set", "--id", fresh, "--id", stale, "interval=5").exit_code == 0
    result = cloud("devices", "--format", "json")
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["sensor_id"] for r in rows] == fleet
    by_id = {r["sensor_id"]: r for r in rows}
    assert list(rows[0]) == list(COLUMNS)
    assert [by_id[i]["status"] for i in fleet] == ["offline", "online", "online"]
    assert by_id[fresh]["temperature"] == 21.5 and by_id[fresh]["reading_age_s"] < 60
    assert 3590 < by_id[stale]["reading_age_s"] < 3700
    assert (by_id[stale]["outbox_depth"], by_id[stale]["oldest_unsent_age_s"]) == (240, 3600.0)
    assert by_id[stale]["reconnects"] == 7 and by_id[stale]["clock_synced"] is True
    assert (by_id[fresh]["config_version"], by_id[fresh]["desired_version"]) == (1, 1)
    assert by_id[fresh]["config"] == "in sync"
    assert (by_id[stale]["config_version"], by_id[stale]["config"]) == (None, "pending")
    assert (by_id[gone]["desired_version"], by_id[gone]["config"]) == (None, "no desired")
    # No health from `gone`: its last sign of life is its reading.
    assert by_id[gone]["outbox_depth"] is None
    assert by_id[gone]["last_seen"] == by_id[gone]["last_reading"]


def test_an_offline_device_sorts_first_even_with_the_newest_reading(
    cloud: Cloud, fleet: list[str], broker: Mosquitto, pki: Pki
) -> None:
    gone, stale, fresh = fleet
    result = cloud("devices", "--format", "csv")
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert [(r["sensor_id"], r["status"]) for r in rows] == [
        (gone, "offline"),
        (stale, "online"),
        (fresh, "online"),
    ]
    # It comes back: it sorts among the online ones by its reading's age.
    retain(broker, pki, gone, "status", b"online")
    rows = list(csv.DictReader(io.StringIO(cloud("devices", "--format", "csv").stdout)))
    assert [r["sensor_id"] for r in rows] == [stale, gone, fresh]


def test_devices_table(cloud: Cloud, fleet: list[str]) -> None:
    result = cloud("devices")
    assert result.exit_code == 0, result.output
    header, rule, *lines = result.stdout.splitlines()
    assert header.split() == list(COLUMNS)
    assert set(rule) == {"-", " "}
    assert [line.split()[:2] for line in lines] == [
        [fleet[0], "offline"],
        [fleet[1], "online"],
        [fleet[2], "online"],
    ]


def test_no_device_yet_prints_the_header_only(cloud: Cloud) -> None:
    result = cloud("devices", "--format", "csv")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [",".join(COLUMNS)]


def test_a_table_that_cannot_be_read_is_one_line_after_the_fleet(
    broker: Mosquitto,
    aws: Endpoint,
    pki: Pki,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    device_id: str,
) -> None:
    cloud = local_target(broker, aws, "NoSuchTable", pki, tmp_path, monkeypatch)
    retain(broker, pki, device_id, "status", b"online")
    result = cloud("devices", "--format", "csv")
    assert result.exit_code == 0, result.output
    (row,) = csv.DictReader(io.StringIO(result.stdout))
    assert (row["sensor_id"], row["status"], row["last_reading"]) == (device_id, "online", "")
    assert result.stderr.splitlines() == [
        "readings unknown: table NoSuchTable not found; is the stack up?"
    ]


def test_a_real_agent_cut_off_from_the_broker_then_killed(
    broker: Mosquitto,
    cloud: Cloud,
    subscribe: Callable[..., Subscriber],
    tls_args: Callable[[str], list[str]],
    device_id: str,
    tmp_path: Path,
) -> None:
    """The agent itself, through a proxy. Cut off from the broker it shows offline (its last
    will) while its readings pile up in its outbox; back, its first health message says how
    deep the outbox grew, and `cloud devices` shows it. Killed (SIGKILL: no `offline` of its
    own), the will shows it offline again, with when it was last seen."""
    health_topic, status = f"sensors/{device_id}/health", f"sensors/{device_id}/status"
    watcher = subscribe(broker.config.port, topics=(health_topic, status))
    outbox = tmp_path / "outbox.sqlite"

    def row() -> dict[str, Any]:
        result = cloud("devices", "--format", "json")
        assert result.exit_code == 0, result.output
        rows = {r["sensor_id"]: r for r in map(json.loads, result.stdout.splitlines())}
        return rows[device_id]

    def last(topic: str) -> list[bytes]:
        return [m.payload for m in watcher.messages if m.topic == topic][-1:]

    with Proxy(broker.config.port, lifetime=120) as proxy:
        # A long health interval: after the first, only a change (the reconnect) sends one.
        agent = start_agent(
            *device_args(proxy.port, device_id, tls_args(device_id), outbox),
            *("--interval", "0.1", "--health-interval", "600"),
        )
        watcher.wait_for(lambda ms: any(m.topic == health_topic for m in ms))
        before = row()
        assert before["status"] == "online", before

        proxy.cut()
        watcher.wait_for(lambda ms: last(status) == [b"offline"])
        wait_until(lambda: outbox_rows(outbox) >= 10, what="ten readings kept while cut off")
        away = row()
        assert away["status"] == "offline" and away["last_seen"] is not None, away

        proxy.restore()
        watcher.wait_for(
            lambda ms: any(
                m.topic == health_topic and parse_health(m.payload).reconnects == 1 for m in ms
            )
        )
        back = row()
        assert back["reconnects"] == 1 and back["outbox_depth"] >= 10, back
        assert back["outbox_depth"] > before["outbox_depth"], (before, back)

        agent.kill()
        agent.wait(timeout=30)
        watcher.wait_for(lambda ms: last(status) == [b"offline"])
        gone = row()
    assert gone["status"] == "offline", gone
    assert gone["last_seen"] is not None and gone["last_seen"] >= back["last_seen"], gone


def test_the_fleet_commands_never_take_over_ingests_session(
    broker: Mosquitto, cloud: Cloud, pki: Pki, device_id: str
) -> None:
    """The broker names a client by its certificate: were `cloud devices` and `cloud
    config set` to connect as `ingest`, the running ingest would be thrown off its session
    (and a clean start would drop what the broker queued for it)."""
    ingest = MqttClient.open(broker.config.port, pki.device("ingest"), "ingest")
    try:
        assert cloud("devices").exit_code == 0
        assert cloud("config", "set", "--id", device_id, "qos=1").exit_code == 0
        assert ingest.disconnected is None, ingest.disconnected
        assert ingest.client.is_connected()
    finally:
        ingest.close()
