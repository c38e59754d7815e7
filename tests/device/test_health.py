"""Health: the agent sends a retained message on sensors/<id>/health every health_interval
seconds with every field of the contract, and its outbox depth shows readings that cannot
be delivered piling up."""

from __future__ import annotations

import json
import signal
from collections.abc import Callable
from pathlib import Path

from cloud.local.mosquitto import Mosquitto
from device.payload import (
    HEALTH_FIELDS,
    Desired,
    config_desired_topic,
    encode_desired,
    health_topic,
    parse_health,
)
from tests.mqtt import Received, Subscriber, device_args, finish, start_agent

#: The contract's fields (docs: the issue 15 contract), written out so a rename shows.
CONTRACT_FIELDS = {
    "v", "sensor_id", "ts", "agent_version", "uptime_s", "mqtt_version", "outbox_depth",
    "oldest_unsent_age_s", "dropped", "read_errors", "reconnects", "clock_synced",
    "peak_rss_kib", "soc_temp_c", "config_version",
}  # fmt: skip


def test_health_messages_carry_every_field_and_show_the_outbox_growing(
    shared_broker: Mosquitto,
    subscribe: Callable[..., Subscriber],
    tls_args: Callable[[str], list[str]],
    device_id: str,
    tmp_path: Path,
) -> None:
    port = shared_broker.config.port
    topic = health_topic(device_id)
    watcher = subscribe(port, topics=(topic,))
    # With --receipts and no ingest to confirm them, readings are never delivered to the
    # table: they stay in the outbox, and health says so.
    agent = start_agent(
        *device_args(port, device_id, tls_args(device_id), tmp_path / "outbox.sqlite"),
        *("--receipts", "--interval", "0.1", "--health-interval", "1", "--flush-timeout", "0"),
    )

    def health(ms: list[Received]) -> list[dict[str, object]]:
        return [json.loads(m.payload) for m in ms if m.topic == topic]

    watcher.wait_for(lambda ms: len(health(ms)) >= 3 and health(ms)[-1]["outbox_depth"] >= 10)
    agent.send_signal(signal.SIGTERM)
    code, _, err = finish(agent)
    assert code == 0, err
    assert "stay in" in err, "the undelivered readings are kept for the next run"

    messages = [m for m in watcher.messages if m.topic == topic]
    bodies = [json.loads(m.payload) for m in messages]
    for m, body in zip(messages, bodies, strict=True):
        assert set(body) == CONTRACT_FIELDS == {"v", *HEALTH_FIELDS}
        parsed = parse_health(m.payload, device_id)
        assert parsed.sensor_id == device_id and parsed.mqtt_version == "5"
        assert parsed.peak_rss_kib > 0 and parsed.agent_version
        assert parsed.reconnects == 0 and parsed.dropped == 0
    depths = [b["outbox_depth"] for b in bodies]
    assert depths == sorted(depths) and depths[-1] > depths[0], depths
    assert bodies[-1]["oldest_unsent_age_s"] > 0
    assert bodies[-1]["uptime_s"] > bodies[0]["uptime_s"]
    assert bodies[-1]["config_version"] is None, "no remote config yet"


def test_a_new_remote_config_is_in_the_next_health_message_soon_not_a_minute_later(
    shared_broker: Mosquitto,
    subscribe: Callable[..., Subscriber],
    tls_args: Callable[[str], list[str]],
    device_id: str,
    tmp_path: Path,
) -> None:
    port = shared_broker.config.port
    topic = health_topic(device_id)
    cloud = subscribe(port, topics=(topic,))
    # health_interval is the default minute: the second message comes for the change.
    agent = start_agent(
        *device_args(port, device_id, tls_args(device_id), tmp_path / "outbox.sqlite"),
        *("--flush-timeout", "0"),
    )

    def versions(ms: list[Received]) -> list[object]:
        return [json.loads(m.payload)["config_version"] for m in ms if m.topic == topic]

    cloud.wait_for(lambda ms: versions(ms) == [None])  # the first, at connect
    desired = encode_desired(Desired(1, {"interval": 2}))
    cloud.mqtt.client.publish(config_desired_topic(device_id), desired, 1, True).wait_for_publish(5)
    cloud.wait_for(lambda ms: versions(ms)[-1:] == [1], timeout=20)
    agent.send_signal(signal.SIGTERM)
    code, _, err = finish(agent)
    assert code == 0, err
    assert versions(cloud.messages) == [None, 1], "one at connect, one for the change"
