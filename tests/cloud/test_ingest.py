"""The ingest bridge: MQTT -> SensorData, against a real Mosquitto and moto's server.

Each message is written (or dead-lettered) before it is acknowledged, so nothing is lost to
bad payloads, a throttled table, a missing table or a SIGKILL; duplicates collapse into one
item because the table is keyed.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from cloud.aws import Endpoint
from cloud.errors import ConfigError, TableError
from cloud.ingest.deadletter import (
    PAYLOAD_PREFIX_BYTES,
    DeadLetter,
    DeadLetterFile,
    read_dead_letters,
)
from cloud.ingest.settings import IngestSettings
from cloud.local.mosquitto import Mosquitto
from cloud.table import create_table, item_count
from device.backoff import Backoff
from device.payload import MAX_PAYLOAD_BYTES, Reading, parse_receipt
from tests.cloud.conftest import DevicePublisher, Running, poll
from tests.conftest import Pki
from tests.mqtt import CHILDREN, REPO, Subscriber, finish, kill9, start_agent
from tests.table import scan_items

RunIngest = Callable[..., Running]
Publisher = Callable[[str], DevicePublisher]


def reading(sensor_id: str, seq: int, temperature: float = 21.5) -> bytes:
    ts = 1_764_345_600_000 + seq
    return Reading(sensor_id, ts=ts, seq=seq, temperature=temperature).to_payload()


def by_key(items: list[dict[str, Any]]) -> dict[tuple[str, int], dict[str, Any]]:
    return {(i["SensorId"]["S"], int(i["CurrentTime"]["N"])): i for i in items}


def test_three_agents_readings_land_once_each_as_sent(
    ingest_settings: IngestSettings,
    run_ingest: RunIngest,
    subscribe: Callable[..., Subscriber],
    tls_args: Callable[[str], list[str]],
    device_id: str,
    aws: Endpoint,
    tmp_path: Path,
) -> None:
    ids = [f"{device_id}-{n}" for n in range(3)]
    # A plain subscriber beside ingest records exactly what each device sent.
    witness = subscribe(ingest_settings.port, topics=tuple(f"sensors/{i}/data" for i in ids))
    running = run_ingest(ingest_settings)
    agents = [
        start_agent(
            "--id",
            i,
            "--broker",
            f"mqtts://127.0.0.1:{ingest_settings.port}",
            *tls_args(i),
            "--interval",
            "0",
            "--count",
            "200",
            "--outbox",
            str(tmp_path / f"{i}.sqlite"),
        )
        for i in ids
    ]
    for agent in agents:
        code, out, err = finish(agent)
        assert code == 0, err
        assert "acknowledged 200, buffered 0" in out
    running.wait(lambda s: s.written >= 600)
    stats = running.finish()

    sent = {(r["sensor_id"], r["ts"]): r for i in ids for r in witness.wait_readings(i, 200)}
    items = by_key(scan_items(aws.client("dynamodb"), ingest_settings.table))
    assert len(items) == 600
    assert items.keys() == sent.keys()
    for key, item in items.items():
        body = sent[key]
        assert int(item["CurrentTime"]["N"]) == body["ts"]
        assert float(item["Temperature"]["N"]) == body["temperature"]
        assert int(item["Seq"]["N"]) == body["seq"]
        for metric in ("humidity", "pressure"):
            column = metric.capitalize()
            assert (float(item[column]["N"]) if column in item else None) == body.get(metric)
    for sensor in ids:
        seqs = sorted(int(i["Seq"]["N"]) for i in items.values() if i["SensorId"]["S"] == sensor)
        assert seqs == list(range(200))
    assert stats.dead_lettered == 0
    assert stats.line().startswith("ingest: received ")


@pytest.mark.parametrize("share_group", ["shared", None], ids=["shared", "plain"])
def test_a_reading_published_twice_is_one_item(
    ingest_settings: IngestSettings,
    run_ingest: RunIngest,
    device_publisher: Publisher,
    device_id: str,
    aws: Endpoint,
    share_group: str | None,
) -> None:
    # A long batch window puts both copies in one BatchWriteItem, which refuses duplicate keys.
    settings = replace(ingest_settings, batch_seconds=0.5)
    if share_group is None:
        settings = replace(settings, share_group=None)
    running = run_ingest(settings)
    pub = device_publisher(device_id)
    payload = reading(device_id, 7)
    pub.publish(payload, payload)
    running.wait(lambda s: s.batches >= 1 and s.received >= 2)
    assert running.stats.duplicates == 1
    (first,) = scan_items(aws.client("dynamodb"), settings.table)
    # A copy in a later batch (a device's resend) is not written again: the item keeps the
    # ReceivedAt of its first arrival, which incremental exports go by.
    pub.publish(payload)
    running.wait(lambda s: s.received >= 3)
    stats = running.finish()

    items = scan_items(aws.client("dynamodb"), settings.table)
    assert items == [first]
    assert items[0]["SensorId"] == {"S": device_id}
    assert int(items[0]["Seq"]["N"]) == 7
    assert (stats.received, stats.written, stats.duplicates) == (3, 1, 2)


def test_each_invalid_kind_is_dead_lettered_verbatim_and_valid_ones_still_land(
    ingest_settings: IngestSettings,
    run_ingest: RunIngest,
    device_publisher: Publisher,
    device_id: str,
    aws: Endpoint,
) -> None:
    def body(**changes: Any) -> bytes:
        fields: dict[str, Any] = {
            "v": 1,
            "sensor_id": device_id,
            "ts": 1_764_345_600_000,
            "seq": 0,
            "temperature": 20.0,
        }
        fields.update(changes)
        return json.dumps({k: v for k, v in fields.items() if v is not None}).encode()

    sample = body().decode()
    invalid = [
        ("not JSON", b"temperature=21.5"),
        ("unsupported version", body(v=2)),
        ("missing temperature", body(temperature=None)),
        ("non-numeric temperature", body(temperature="warm")),
        ("non-finite value", sample.replace("20.0", "NaN").encode()),
        ("non-finite value", sample.replace("20.0", "Infinity").encode()),
        ("oversize payload", body() + b" " * MAX_PAYLOAD_BYTES),
        ("sensor_id differs from topic", body(sensor_id="someone-else")),
        # A device counting in microseconds or seconds: a year no export could hold.
        ("ts out of range", body(ts=1_764_345_600_000_000)),
        ("ts out of range", body(ts=1_764_345_600)),
    ]
    running = run_ingest(ingest_settings)
    pub = device_publisher(device_id)
    pub.publish(*(payload for _, payload in invalid))
    pub.publish(reading(device_id, 1))
    running.wait(lambda s: s.written >= 1 and s.dead_lettered >= len(invalid))
    stats = running.finish()

    letters = list(read_dead_letters(ingest_settings.dead_letter))
    # Kept verbatim up to the dead letter's prefix (only the oversize one is longer).
    assert [(d.reason, d.payload) for d in letters] == [
        (reason, payload[:PAYLOAD_PREFIX_BYTES]) for reason, payload in invalid
    ]
    assert [d.size for d in letters] == [len(payload) for _, payload in invalid]
    assert {d.topic for d in letters} == {f"sensors/{device_id}/data"}
    assert all(d.detail.startswith(d.reason) and d.time.endswith("+00:00") for d in letters)
    items = scan_items(aws.client("dynamodb"), ingest_settings.table)
    assert [(i["SensorId"]["S"], i["Seq"]["N"]) for i in items] == [(device_id, "1")]
    assert (stats.dead_lettered, stats.written) == (len(invalid), 1)


@dataclass
class RecordingBackoff(Backoff):
    delays: list[float] = field(default_factory=list)

    def next_delay(self) -> float:
        delay = super().next_delay()
        self.delays.append(delay)
        return delay


class FaultyDynamo:
    """A real client whose first BatchWriteItem calls fail as DynamoDB can and moto never does:
    "throttle" raises ProvisionedThroughputExceededException, "partial" writes half the batch
    and hands the rest back as UnprocessedItems."""

    def __init__(self, real: Any, plan: list[str]) -> None:
        self.real = real
        self.plan = list(plan)
        self.calls = 0

    def batch_write_item(self, **kwargs: Any) -> dict[str, Any]:
        self.calls += 1
        if not self.plan:
            return dict(self.real.batch_write_item(**kwargs))
        fault = self.plan.pop(0)
        if fault == "throttle":
            error = {"Code": "ProvisionedThroughputExceededException", "Message": "slow down"}
            raise ClientError({"Error": error}, "BatchWriteItem")
        ((table, requests),) = kwargs["RequestItems"].items()
        done, left = requests[: len(requests) // 2], requests[len(requests) // 2 :]
        if done:
            self.real.batch_write_item(RequestItems={table: done})
        return {"UnprocessedItems": {table: left}}


def test_throttling_and_unprocessed_items_are_retried_with_capped_backoff(
    ingest_settings: IngestSettings,
    run_ingest: RunIngest,
    device_publisher: Publisher,
    device_id: str,
    aws: Endpoint,
) -> None:
    plan = ["throttle", "partial", "partial", "throttle", "partial", "partial", "throttle"]
    ddb = FaultyDynamo(aws.client("dynamodb"), plan)
    backoff = RecordingBackoff(initial=0.01, cap=0.04)
    running = run_ingest(ingest_settings, ddb=ddb, write_backoff=backoff)
    pub = device_publisher(device_id)
    pub.publish(*(reading(device_id, seq) for seq in range(60)))
    running.wait(lambda s: s.written >= 60)
    stats = running.finish()

    items = scan_items(aws.client("dynamodb"), ingest_settings.table)
    assert sorted(int(i["Seq"]["N"]) for i in items) == list(range(60))
    assert not ddb.plan, "every injected fault was met"
    assert stats.retries == len(plan) == len(backoff.delays)
    assert max(backoff.delays) <= 0.04
    assert stats.written == 60


def test_missing_table_stops_ingest_without_acking_and_a_restart_writes_everything(
    ingest_settings: IngestSettings,
    run_ingest: RunIngest,
    device_publisher: Publisher,
    device_id: str,
    aws: Endpoint,
) -> None:
    missing = replace(ingest_settings, table=f"{ingest_settings.table}-later")
    running = run_ingest(missing)
    device_publisher(device_id).publish(reading(device_id, 3), reading(device_id, 4))
    running.thread.join(15)
    assert not running.thread.is_alive(), "a missing table must stop ingest"
    with pytest.raises(TableError, match="not found") as caught:
        running.finish()
    assert caught.value.code == "ResourceNotFoundException"
    assert running.stats.written == 0

    ddb = aws.client("dynamodb")
    create_table(ddb, missing.table)
    again = run_ingest(missing)  # same client id: the broker kept the unacked messages
    again.wait(lambda s: s.written >= 2)
    again.finish()
    assert sorted(int(i["Seq"]["N"]) for i in scan_items(ddb, missing.table)) == [3, 4]


class GatedDynamo:
    """A real client whose first BatchWriteItem waits until the test opens the gate."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.gate = threading.Event()
        self.entered = threading.Event()

    def batch_write_item(self, **kwargs: Any) -> dict[str, Any]:
        if not self.entered.is_set():
            self.entered.set()
            assert self.gate.wait(20), "the test never opened the gate"
        return dict(self.real.batch_write_item(**kwargs))


def test_broker_restart_during_a_write_resends_the_batch_and_loses_nothing(
    ingest_settings: IngestSettings,
    run_ingest: RunIngest,
    start_broker: Callable[..., Mosquitto],
    pki: Pki,
    device_id: str,
    aws: Endpoint,
) -> None:
    broker = start_broker()
    settings = replace(ingest_settings, port=broker.config.port)
    ddb = GatedDynamo(aws.client("dynamodb"))
    running = run_ingest(settings, ddb=ddb, connect_backoff=Backoff(initial=0.05, cap=0.2))
    pub = DevicePublisher(broker.config.port, pki, device_id)
    pub.publish(*(reading(device_id, seq) for seq in range(10)))
    pub.close()
    assert ddb.entered.wait(10), "the batch never reached the table"

    broker.stop()  # with the batch's acks still owed
    broker.start()
    running.wait(lambda s: s.connections >= 2 and running.ingest.ready.is_set())
    ddb.gate.set()
    # The first batch's acks belong to the lost connection and are dropped; the broker
    # resends those messages on the new one, and ingest knows their items are written.
    running.wait(lambda s: s.received >= 20)
    stats = running.finish()

    items = scan_items(aws.client("dynamodb"), settings.table)
    assert sorted(int(i["Seq"]["N"]) for i in items) == list(range(10))
    assert (stats.received, stats.written, stats.duplicates, stats.connections) == (20, 10, 10, 2)


CHILD = """
import json, logging, signal, sys, threading
from pathlib import Path
from cloud.aws import Endpoint
from cloud.ingest.service import Ingest
from cloud.ingest.settings import IngestSettings
from cloud.identity.local_ca import Identity

cfg = json.loads(sys.argv[1])
logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(message)s")
stop = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: stop.set())
settings = IngestSettings(
    host="127.0.0.1", port=cfg["port"], tls=Identity(*(Path(p) for p in cfg["tls"])),
    endpoint=Endpoint(cfg["endpoint"], "us-east-1"), table=cfg["table"],
    dead_letter=Path(cfg["dead_letter"]), client_id=cfg["client_id"],
    share_group=cfg["share_group"], report_every=1.0,
)
print(Ingest(settings).run(stop).line(), flush=True)
"""


def start_child(settings: IngestSettings, log_path: Path) -> subprocess.Popen[str]:
    """Ingest in a process of its own, so it can be SIGKILLed; its log goes to `log_path`,
    its summary line to the same name with `.out`."""
    assert settings.tls is not None and settings.endpoint.url is not None
    cfg = {
        "port": settings.port,
        "tls": [str(settings.tls.cert), str(settings.tls.key), str(settings.tls.ca)],
        "endpoint": settings.endpoint.url,
        "table": settings.table,
        "dead_letter": str(settings.dead_letter),
        "client_id": settings.client_id,
        "share_group": settings.share_group,
    }
    with log_path.open("w") as log, log_path.with_suffix(".out").open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, json.dumps(cfg)],
            cwd=REPO,
            stdout=out,
            stderr=log,
            text=True,
        )
    CHILDREN.append(proc)
    poll(
        lambda: "subscribed to" in log_path.read_text() or proc.poll() is not None,
        timeout=20,
        interval=0.05,
        what="the ingest child's subscription",
    )
    assert proc.poll() is None, log_path.read_text()
    return proc


def test_ingest_killed_mid_stream_and_restarted_loses_nothing(
    ingest_settings: IngestSettings,
    tls_args: Callable[[str], list[str]],
    device_id: str,
    aws: Endpoint,
    tmp_path: Path,
) -> None:
    ddb = aws.client("dynamodb")
    first = start_child(ingest_settings, tmp_path / "ingest-1.log")
    agent = start_agent(
        "--id",
        device_id,
        "--broker",
        f"mqtts://127.0.0.1:{ingest_settings.port}",
        *tls_args(device_id),
        "--interval",
        "0.002",
        "--count",
        "2000",
        "--outbox",
        str(tmp_path / "outbox.sqlite"),
    )
    table = ingest_settings.table
    poll(lambda: item_count(ddb, table) >= 300, 30, 0.1, "300 items before the kill")
    kill9(first)
    at_kill = item_count(ddb, ingest_settings.table)
    assert at_kill < 2000, "the kill should land mid-stream"

    second = start_child(ingest_settings, tmp_path / "ingest-2.log")
    code, out, err = finish(agent)
    assert code == 0, err
    assert "acknowledged 2000, buffered 0" in out
    poll(lambda: item_count(ddb, ingest_settings.table) >= 2000, 30, 0.3, "2000 items")
    second.send_signal(signal.SIGTERM)
    assert second.wait(20) == 0, (tmp_path / "ingest-2.log").read_text()
    summary = (tmp_path / "ingest-2.out").read_text().strip().splitlines()[-1]
    assert summary.startswith("ingest: received ")

    items = scan_items(ddb, ingest_settings.table)
    assert len(items) == 2000
    assert sorted(int(i["Seq"]["N"]) for i in items) == list(range(2000))


def test_dead_letter_file_survives_a_torn_last_line(tmp_path: Path) -> None:
    path = tmp_path / "dl.jsonl"
    sink = DeadLetterFile(path)
    first = DeadLetter.now("sensors/a/data", "not JSON", "not JSON: x", b"\x00\xffraw")
    sink.append(first)
    sink.close()
    with path.open("ab") as fh:
        fh.write(b'{"time": "2026-01-01T00:00:00.000+00:00", "topic"')  # a crash mid-append
    second = DeadLetter.now("sensors/b/data", "missing seq", "missing seq", b"{}")
    sink = DeadLetterFile(path)
    sink.append(second)
    sink.close()
    assert list(read_dead_letters(path)) == [first, second]
    assert list(read_dead_letters(tmp_path / "absent.jsonl")) == []


def test_settings_refuse_a_batch_dynamodb_would_refuse(ingest_settings: IngestSettings) -> None:
    with pytest.raises(ConfigError, match="batch_size 26"):
        replace(ingest_settings, batch_size=26)
    with pytest.raises(ConfigError, match="share_group"):
        replace(ingest_settings, share_group="a/b")


def test_ingest_confirms_each_written_or_dead_lettered_reading_to_its_device(
    ingest_settings: IngestSettings,
    run_ingest: RunIngest,
    device_publisher: Publisher,
    subscribe: Callable[..., Subscriber],
    device_id: str,
    aws: Endpoint,
) -> None:
    receipts = subscribe(ingest_settings.port, topics=(f"sensors/{device_id}/receipt",))
    running = run_ingest(ingest_settings)
    pub = device_publisher(device_id)
    good = [reading(device_id, seq) for seq in range(5)]
    # Valid JSON with a seq and ts, but no temperature: dead-lettered, and confirmed too,
    # so the device does not send it again and again.
    rejected = json.dumps({"v": 1, "sensor_id": device_id, "ts": 1_764_345_600_099, "seq": 99})
    pub.publish(*good, rejected.encode(), b"not json: nothing to confirm")
    running.wait(lambda s: s.written == 5 and s.dead_lettered == 2)

    expected = {json.loads(p)["seq"]: json.loads(p)["ts"] for p in good}
    expected[99] = 1_764_345_600_099

    def confirmed(messages: list[Any]) -> dict[int, int]:
        return {seq: ts for m in messages for seq, ts in parse_receipt(m.payload).items()}

    receipts.wait_for(lambda ms: confirmed(ms) == expected)
    stats = running.finish()
    assert stats.receipts == len(receipts.messages)
    assert f"receipts {stats.receipts} " in stats.line()
    assert item_count(aws.client("dynamodb"), ingest_settings.table) == 5
