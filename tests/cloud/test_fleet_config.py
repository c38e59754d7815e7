"""`cloud config set | show`: desired configs as retained messages, merged and versioned,
beside what the device reported; bad settings refused before anything is published."""

from __future__ import annotations

import json
import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from cloud.aws import Endpoint
from cloud.fleet.iot_store import IotDataStore
from cloud.local.mosquitto import Mosquitto
from device.payload import Reported, encode_reported, parse_health, parse_reported
from tests.cloud.fleet import Cloud, local_target, retain, retained
from tests.conftest import BrokerFactory, Pki
from tests.mqtt import Subscriber, device_args, finish, start_agent


@pytest.fixture
def cloud(
    shared_broker: Mosquitto,
    aws: Endpoint,
    table: str,
    pki: Pki,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Cloud:
    return local_target(shared_broker, aws, table, pki, tmp_path, monkeypatch)


def desired_of(broker: Mosquitto, pki: Pki, device_id: str) -> list[dict[str, object]]:
    return [json.loads(p) for p in retained(broker, pki, f"sensors/{device_id}/config/desired")]


def show(cloud: Cloud, *args: str) -> list[dict[str, object]]:
    result = cloud("config", "show", *args, "--format", "json")
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_set_then_show_round_trip(
    cloud: Cloud, shared_broker: Mosquitto, pki: Pki, device_id: str
) -> None:
    result = cloud("config", "set", "--id", device_id, "interval=10", "sensor=bme280")
    assert result.exit_code == 0, result.output
    assert (
        result.stdout
        == f'{device_id}: desired version 1 {{"interval": 10.0, "sensor": "bme280"}}\n'
    )
    assert desired_of(shared_broker, pki, device_id) == [
        {"v": 1, "version": 1, "settings": {"interval": 10.0, "sensor": "bme280"}}
    ]
    (row,) = show(cloud, "--id", device_id)
    assert row["desired_version"] == 1 and row["reported_version"] is None
    assert row["state"] == "pending"

    # The device applies it, but its own --interval flag keeps the interval it was given.
    reported = Reported(device_id, 1, "applied", {"sensor": "bme280"}, overridden=("interval",))
    retain(shared_broker, pki, device_id, "config/reported", encode_reported(reported))
    (row,) = show(cloud, "--id", device_id)
    assert row == {
        "sensor_id": device_id,
        "desired_version": 1,
        "reported_version": 1,
        "state": "in sync",
        "desired": {"interval": 10.0, "sensor": "bme280"},
        "applied": {"sensor": "bme280"},
        "overridden": ["interval"],
        "error": None,
    }
    table = cloud("config", "show", "--id", device_id)
    assert table.exit_code == 0
    header, _, line = table.stdout.splitlines()
    assert header.split()[:4] == ["sensor_id", "desired_version", "reported_version", "state"]
    assert line.split()[:5] == [device_id, "1", "1", "in", "sync"]


def test_each_set_merges_and_bumps_the_version(
    cloud: Cloud, shared_broker: Mosquitto, pki: Pki, device_id: str
) -> None:
    assert cloud("config", "set", "--id", device_id, "interval=10", "qos=1").exit_code == 0
    result = cloud("config", "set", "--id", device_id, "qos=0", "i2c_address=0x77")
    assert result.exit_code == 0, result.output
    assert desired_of(shared_broker, pki, device_id) == [
        {"v": 1, "version": 2, "settings": {"interval": 10.0, "qos": 0, "i2c_address": 0x77}}
    ]
    refused = Reported(
        device_id, 2, "refused", {"interval": 10.0, "qos": 1}, "i2c_address: no BME280 at 0x77"
    )
    retain(shared_broker, pki, device_id, "config/reported", encode_reported(refused))
    (row,) = show(cloud, "--id", device_id)
    assert (row["desired_version"], row["reported_version"], row["state"]) == (2, 2, "refused")
    assert row["error"] == "i2c_address: no BME280 at 0x77"
    assert cloud("config", "set", "--id", device_id, "interval=2.5").exit_code == 0
    (row,) = show(cloud, "--id", device_id)
    assert (row["desired_version"], row["state"]) == (3, "pending")
    assert row["desired"] == {"interval": 2.5, "qos": 0, "i2c_address": 0x77}
    # The device's own rules refuse a value before it is published.
    result = cloud("config", "set", "--id", device_id, "qos=2")
    assert result.exit_code == 2 and "'2' is not one of 0, 1" in result.stderr


def test_all_sets_every_device_the_broker_knows(
    start_broker: BrokerFactory,
    aws: Endpoint,
    table: str,
    pki: Pki,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    device_id: str,
) -> None:
    broker = start_broker()  # a broker of its own: the shared one holds other tests' devices
    cloud = local_target(broker, aws, table, pki, tmp_path, monkeypatch)
    assert "no device is known" in cloud("config", "set", "--all", "qos=0").output
    online, offline, healthy = (f"{device_id}-{n}" for n in ("on", "off", "h"))
    retain(broker, pki, online, "status", b"online")
    retain(broker, pki, offline, "status", b"offline")
    retain(broker, pki, healthy, "health", {"v": 1, "sensor_id": healthy, "ts": 1})
    result = cloud("config", "set", "--all", "qos=0")
    assert result.exit_code == 0, result.output
    assert len(result.stdout.splitlines()) == 3
    for sensor in (online, offline, healthy):
        assert desired_of(broker, pki, sensor) == [{"v": 1, "version": 1, "settings": {"qos": 0}}]
    rows = show(cloud, "--all")
    assert [r["sensor_id"] for r in rows] == sorted((online, offline, healthy))
    assert {r["state"] for r in rows} == {"pending"}


@pytest.mark.parametrize(
    ("word", "text"),
    [
        ("interval", "'interval' is not KEY=VALUE"),
        ("interval=", "interval has no value"),
        ("colour=red", "unknown setting colour"),
        ("interval=soon", "'soon' is not a valid float for interval"),
        ("interval=nan", "'nan' is not a valid float for interval"),
        ("sensor=thermocouple", "'thermocouple' is not one of simulated, cpu"),
    ],
)
def test_a_bad_setting_is_refused_and_nothing_is_published(
    cloud: Cloud, shared_broker: Mosquitto, pki: Pki, device_id: str, word: str, text: str
) -> None:
    result = cloud("config", "set", "--id", device_id, "qos=1", word)
    assert result.exit_code == 2, result.output
    errors = [x for x in result.stderr.splitlines() if x.startswith("Error:")]
    assert len(errors) == 1 and text in errors[0], result.stderr
    assert desired_of(shared_broker, pki, device_id) == []


def test_ids_or_all_is_a_usage_error(cloud: Cloud) -> None:
    for args in ((), ("--all", "--id", "x")):
        result = cloud("config", "set", *args, "qos=1")
        assert result.exit_code == 2 and "give --id ID (one or more) or --all" in result.stderr
    result = cloud("config", "set", "--id", "a/b", "qos=1")
    assert result.exit_code == 2 and "Invalid value for --id: bad sensor_id" in result.stderr


def test_publish_on_aws_through_moto(aws: Endpoint, device_id: str) -> None:
    """moto's iot-data takes a retained publish; it has no GetRetainedMessage or
    ListRetainedMessages (a 500), so reading them back is tested on Mosquitto only."""
    store = IotDataStore(aws)
    try:
        store.publish(f"sensors/{device_id}/config/desired", b'{"v":1,"version":1,"settings":{}}')
    finally:
        store.close()


def test_the_real_agent_applies_what_config_set_publishes(
    cloud: Cloud,
    shared_broker: Mosquitto,
    subscribe: Callable[..., Subscriber],
    tls_args: Callable[[str], list[str]],
    device_id: str,
    tmp_path: Path,
) -> None:
    """The whole loop with the agent itself: `config set`, the agent applies it (its
    --sensor flag wins and is reported overridden), `config show` and `devices` say so."""
    port = shared_broker.config.port
    watcher = subscribe(port, topics=(f"sensors/{device_id}/#",))
    reported_topic = f"sensors/{device_id}/config/reported"
    agent = start_agent(
        *device_args(port, device_id, tls_args(device_id), tmp_path / "outbox.sqlite"),
        *("--interval", "0.5"),
        *("--sensor", "simulated"),
    )
    watcher.wait_readings(device_id, 1)
    result = cloud("config", "set", "--id", device_id, "health_interval=2", "sensor=cpu")
    assert result.exit_code == 0, result.output
    watcher.wait_for(
        lambda ms: any(
            m.topic == reported_topic and parse_reported(m.payload).version == 1 for m in ms
        )
    )
    (row,) = show(cloud, "--id", device_id)
    assert (row["desired_version"], row["reported_version"], row["state"]) == (1, 1, "in sync")
    assert row["applied"] == {"health_interval": 2.0}
    assert row["overridden"] == ["sensor"]
    # Its next health message carries the version it applied.
    health_topic = f"sensors/{device_id}/health"
    watcher.wait_for(
        lambda ms: any(
            m.topic == health_topic and parse_health(m.payload).config_version == 1 for m in ms
        )
    )
    result = cloud("devices", "--format", "json")
    rows = {r["sensor_id"]: r for r in map(json.loads, result.stdout.splitlines())}
    mine = rows[device_id]
    assert (mine["status"], mine["config_version"], mine["config"]) == ("online", 1, "in sync")
    assert mine["outbox_depth"] is not None and mine["clock_synced"] is not None
    agent.send_signal(signal.SIGTERM)
    code, _, err = finish(agent)
    assert code == 0, err
