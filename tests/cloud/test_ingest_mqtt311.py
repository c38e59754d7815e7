"""`cloud ingest` on a broker that speaks only MQTT 3.1.1 (NATS): it falls back by itself,
writes every reading once, and its receipts reach the devices."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from cloud.errors import ConfigError
from cloud.ingest.settings import IngestSettings
from tests.mqtt import finish, start_agent
from tests.table import scan_items


def test_ingest_falls_back_to_311_and_confirms_each_reading(
    nats, ingest_settings: IngestSettings, run_ingest, tls_args, device_id, aws, tmp_path: Path
):
    settings = replace(ingest_settings, port=nats.mqtt_port, share_group=None)
    running = run_ingest(settings)
    # --receipts: the agent exits 0 only once ingest confirmed every reading is in the table.
    proc = start_agent(
        "--id",
        device_id,
        "--broker",
        f"mqtts://127.0.0.1:{nats.mqtt_port}",
        *tls_args(device_id),
        "--outbox",
        str(tmp_path / "outbox.sqlite"),
        "--count",
        "40",
        "--interval",
        "0",
        "--receipts",
    )
    code, out, err = finish(proc, timeout=90)
    assert code == 0, err
    assert f"{device_id}: published 40, acknowledged 40, buffered 0" in out
    stats = running.finish()
    assert stats.written == 40 and stats.dead_lettered == 0
    items = scan_items(aws.client("dynamodb"), settings.table)
    assert sorted(int(i["Seq"]["N"]) for i in items) == list(range(40))
    assert {i["SensorId"]["S"] for i in items} == {device_id}


def test_a_share_group_needs_mqtt_5(ingest_settings: IngestSettings):
    with pytest.raises(ConfigError, match="share_group needs MQTT 5"):
        replace(ingest_settings, mqtt_version="3.1.1")
