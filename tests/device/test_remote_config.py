"""Remote configuration: a desired config retained on sensors/<id>/config/desired is put
in force by the running agent without a restart, reported on config/reported, kept for
the next run, refused as a whole when a value is wrong, and a command-line flag beats it.

A test subscriber with a reader identity plays the cloud's part (`cloud config set`).
"""

from __future__ import annotations

import itertools
import json
import signal
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cloud.local.mosquitto import Mosquitto
from device.payload import (
    Desired,
    Reported,
    config_desired_topic,
    config_reported_topic,
    encode_desired,
    parse_reported,
)
from tests.mqtt import Received, Subscriber, device_args, finish, start_agent
from tests.proxy import Proxy


def set_desired(cloud: Subscriber, device_id: str, version: int, settings: dict[str, Any]) -> None:
    """What `cloud config set` does: a retained QoS 1 desired config; waits for the PUBACK."""
    payload = encode_desired(Desired(version, settings))
    info = cloud.mqtt.client.publish(config_desired_topic(device_id), payload, qos=1, retain=True)
    info.wait_for_publish(10)
    assert info.is_published()


def wait_reported(cloud: Subscriber, device_id: str, version: int) -> Reported:
    topic = config_reported_topic(device_id)

    def found(ms: list[Received]) -> list[Reported]:
        return [
            r
            for r in (parse_reported(m.payload, device_id) for m in ms if m.topic == topic)
            if r.version == version
        ]

    return found(cloud.wait_for(lambda ms: bool(found(ms))))[-1]


def gaps_ms(readings: list[dict[str, Any]]) -> list[int]:
    ts = sorted({r["ts"] for r in readings})
    return [b - a for a, b in itertools.pairwise(ts)]


def watch(subscribe: Callable[..., Subscriber], port: int, device_id: str) -> Subscriber:
    return subscribe(port, topics=(f"sensors/{device_id}/#",))


@pytest.mark.parametrize("transport", ["paho", "awsiot"])
def test_a_running_agent_takes_a_new_interval_without_a_restart(
    transport: str,
    shared_broker: Mosquitto,
    subscribe: Callable[..., Subscriber],
    tls_args: Callable[[str], list[str]],
    device_id: str,
    tmp_path: Path,
) -> None:
    port = shared_broker.config.port
    cloud = watch(subscribe, port, device_id)
    # From the environment, which a remote config beats (a flag would not be beaten).
    agent = start_agent(
        *device_args(port, device_id, tls_args(device_id), tmp_path / "outbox.sqlite"),
        "--transport",
        transport,
        env={"DEVICE_AGENT_INTERVAL": "1.5"},
    )
    before = cloud.wait_readings(device_id, 2)
    set_desired(cloud, device_id, 1, {"interval": 0.05})
    reported = wait_reported(cloud, device_id, 1)
    assert reported.status == "applied" and dict(reported.applied) == {"interval": 0.05}
    assert reported.overridden == ()
    seen = len({r["seq"] for r in cloud.readings(device_id)})
    after = cloud.wait_readings(device_id, seen + 12)
    agent.send_signal(signal.SIGTERM)
    code, _, err = finish(agent)
    assert code == 0, err
    assert min(gaps_ms(before)) >= 1400, "1.5 s apart at first"
    new = sorted(after, key=lambda r: r["seq"])[-10:]
    assert statistics.median(gaps_ms(new)) < 500, "then about 50 ms apart, same process"
    assert "remote config v1 applied" in err


def test_a_device_that_was_offline_gets_the_desired_config_when_it_reconnects(
    shared_broker: Mosquitto,
    subscribe: Callable[..., Subscriber],
    tls_args: Callable[[str], list[str]],
    device_id: str,
    tmp_path: Path,
) -> None:
    cloud = watch(subscribe, shared_broker.config.port, device_id)
    status = f"sensors/{device_id}/status"
    with Proxy(shared_broker.config.port, lifetime=120) as proxy:
        agent = start_agent(
            *device_args(proxy.port, device_id, tls_args(device_id), tmp_path / "outbox.sqlite"),
            "--interval",
            "0.2",
        )
        cloud.wait_readings(device_id, 1)
        proxy.cut()
        cloud.wait_for(lambda ms: [m.payload for m in ms if m.topic == status][-1:] == [b"offline"])
        set_desired(cloud, device_id, 1, {"health_interval": 5, "qos": 0})  # kept by the broker
        proxy.restore()
        reported = wait_reported(cloud, device_id, 1)
        agent.send_signal(signal.SIGTERM)
        code, _, err = finish(agent)
    assert code == 0, err
    assert reported.status == "applied"
    assert dict(reported.applied) == {"health_interval": 5, "qos": 0}


def test_a_bad_value_is_refused_and_reported_and_the_old_config_stays(
    shared_broker: Mosquitto,
    subscribe: Callable[..., Subscriber],
    tls_args: Callable[[str], list[str]],
    device_id: str,
    tmp_path: Path,
) -> None:
    port = shared_broker.config.port
    cloud = watch(subscribe, port, device_id)
    agent = start_agent(
        *device_args(port, device_id, tls_args(device_id), tmp_path / "outbox.sqlite"),
        env={"DEVICE_AGENT_INTERVAL": "30"},
    )
    set_desired(cloud, device_id, 1, {"interval": 0.05})
    assert wait_reported(cloud, device_id, 1).status == "applied"

    # One bad value refuses the whole config: the good one beside it is not applied either.
    set_desired(cloud, device_id, 2, {"interval": -1, "qos": 0})
    refused = wait_reported(cloud, device_id, 2)
    set_desired(cloud, device_id, 3, {"interval": 10, "colour": "red"})
    unknown = wait_reported(cloud, device_id, 3)
    seen = len({r["seq"] for r in cloud.readings(device_id)})
    after = cloud.wait_readings(device_id, seen + 12)
    agent.send_signal(signal.SIGTERM)
    code, _, err = finish(agent)
    assert code == 0, err

    assert refused.status == "refused"
    assert refused.error is not None and "interval must be at least 0" in refused.error
    assert dict(refused.applied) == {"interval": 0.05}, "the config in force is the old one"
    assert unknown.status == "refused" and unknown.error is not None
    assert "unknown setting colour" in unknown.error
    new = sorted(after, key=lambda r: r["seq"])[-10:]
    assert statistics.median(gaps_ms(new)) < 500, "still v1's 50 ms, not 30 s nor 10 s"
    warnings = [line for line in err.splitlines() if " WARNING " in line and "refused" in line]
    assert len(warnings) == 2, warnings  # one line per refused config


def test_after_a_restart_the_agent_starts_with_the_last_applied_config(
    shared_broker: Mosquitto,
    subscribe: Callable[..., Subscriber],
    tls_args: Callable[[str], list[str]],
    device_id: str,
    tmp_path: Path,
) -> None:
    port = shared_broker.config.port
    cloud = watch(subscribe, port, device_id)
    args = device_args(port, device_id, tls_args(device_id), tmp_path / "outbox.sqlite")
    env = {"DEVICE_AGENT_INTERVAL": "30"}
    first = start_agent(*args, env=env)
    set_desired(cloud, device_id, 1, {"interval": 0.05, "health_interval": 7})
    assert wait_reported(cloud, device_id, 1).status == "applied"
    first.send_signal(signal.SIGTERM)
    code, _, err = finish(first)
    assert code == 0, err
    # The cloud clears the desired config: only what the device kept can set the interval.
    info = cloud.mqtt.client.publish(config_desired_topic(device_id), b"", qos=1, retain=True)
    info.wait_for_publish(10)

    seen = len({r["seq"] for r in cloud.readings(device_id)})
    second = start_agent(*args, env=env)
    after = cloud.wait_readings(device_id, seen + 12)
    second.send_signal(signal.SIGTERM)
    code, _, err = finish(second)
    assert code == 0, err
    assert "starting with remote config v1" in err
    new = sorted(after, key=lambda r: r["seq"])[-10:]
    assert statistics.median(gaps_ms(new)) < 500, "v1's interval from the start"
    health = [json.loads(m.payload) for m in cloud.messages if m.topic.endswith("/health")]
    assert health[-1]["config_version"] == 1


def test_a_flag_on_the_command_line_wins_and_reported_says_so(
    shared_broker: Mosquitto,
    subscribe: Callable[..., Subscriber],
    tls_args: Callable[[str], list[str]],
    device_id: str,
    tmp_path: Path,
) -> None:
    port = shared_broker.config.port
    cloud = watch(subscribe, port, device_id)
    agent = start_agent(
        *device_args(port, device_id, tls_args(device_id), tmp_path / "outbox.sqlite"),
        "--interval",
        "0.05",
    )
    set_desired(cloud, device_id, 1, {"interval": 30, "health_interval": 5})
    reported = wait_reported(cloud, device_id, 1)
    seen = len({r["seq"] for r in cloud.readings(device_id)})
    after = cloud.wait_readings(device_id, seen + 12)
    agent.send_signal(signal.SIGTERM)
    code, _, err = finish(agent)
    assert code == 0, err
    assert reported.status == "applied"
    assert dict(reported.applied) == {"health_interval": 5}
    assert reported.overridden == ("interval",)
    new = sorted(after, key=lambda r: r["seq"])[-10:]
    assert statistics.median(gaps_ms(new)) < 500, "--interval 0.05 still"
