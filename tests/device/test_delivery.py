"""Nothing the agent takes is lost: broker down at start, broker restarted, agent killed."""

from __future__ import annotations

import signal
from pathlib import Path

from tests.mqtt import finish, kill9, start_agent, wait_until
from tests.outbox import outbox_rows


def seqs(sub, device_id: str) -> list[int]:
    return [r["seq"] for r in sub.readings(device_id)]


def test_agent_started_with_broker_down_delivers_everything_once_it_is_up(
    start_broker, subscribe, tls_args, device_id, tmp_path: Path
):
    broker = start_broker()
    sub = subscribe(broker.config.port)  # its persistent session outlives the broker's stop
    broker.stop()
    outbox = tmp_path / "outbox.sqlite"
    agent = start_agent(
        "--id",
        device_id,
        "--broker",
        f"mqtts://127.0.0.1:{broker.config.port}",
        *tls_args(device_id),
        "--count",
        "20",
        "--interval",
        "0",
        "--outbox",
        str(outbox),
    )
    wait_until(lambda: outbox_rows(outbox) == 20, what="20 readings buffered on disk")
    assert agent.poll() is None, "the agent must wait for the broker, not give up"

    broker.start()
    code, out, err = finish(agent)
    assert code == 0, err
    assert "acknowledged 20, buffered 0" in out
    sub.wait_readings(device_id, 20)
    assert sorted(set(seqs(sub, device_id))) == list(range(20))


def test_broker_restarted_mid_run_loses_nothing_the_agent_counted_as_sent(
    start_broker, subscribe, tls_args, device_id, tmp_path: Path
):
    broker = start_broker()
    sub = subscribe(broker.config.port)
    agent = start_agent(
        "--id",
        device_id,
        "--broker",
        f"mqtts://127.0.0.1:{broker.config.port}",
        *tls_args(device_id),
        "--count",
        "400",
        "--interval",
        "0.005",
        "--outbox",
        str(tmp_path / "outbox.sqlite"),
    )
    sub.wait_readings(device_id, 50)
    broker.stop()
    broker.start()
    code, out, err = finish(agent)
    assert code == 0, err
    assert "acknowledged 400, buffered 0" in out
    sub.wait_readings(device_id, 400)
    assert sorted(set(seqs(sub, device_id))) == list(range(400))


def test_agent_killed_and_restarted_resends_without_gap_in_seq(
    shared_broker, subscribe, tls_args, device_id, tmp_path: Path
):
    sub = subscribe(shared_broker.config.port)
    outbox = tmp_path / "outbox.sqlite"
    args = [
        "--id",
        device_id,
        "--broker",
        f"mqtts://127.0.0.1:{shared_broker.config.port}",
        *tls_args(device_id),
        "--interval",
        "0.002",
        "--outbox",
        str(outbox),
    ]
    first = start_agent(*args, "--count", "100000")
    sub.wait_readings(device_id, 100)
    kill9(first)
    left = outbox_rows(outbox)

    second = start_agent(*args, "--count", "50")
    code, out, err = finish(second)
    assert code == 0, err
    assert "buffered 0" in out
    assert f"published {left + 50}," in out, "the second run resends exactly what was left"

    received = sorted(set(seqs(sub, device_id)))
    assert received == list(range(len(received))), "no gap in seq"
    assert len(received) >= 150


def test_sigterm_flushes_and_prints_the_summary(
    shared_broker, subscribe, tls_args, device_id, tmp_path: Path
):
    sub = subscribe(shared_broker.config.port)
    agent = start_agent(
        "--id",
        device_id,
        "--broker",
        f"mqtts://127.0.0.1:{shared_broker.config.port}",
        *tls_args(device_id),
        "--interval",
        "0.01",
        "--outbox",
        str(tmp_path / "o.sqlite"),
    )
    sub.wait_readings(device_id, 10)
    agent.send_signal(signal.SIGTERM)
    code, out, err = finish(agent)
    assert code == 0, err
    line = out.strip().splitlines()[-1]
    assert line.startswith(f"{device_id}: published ")
    assert "buffered 0, dropped 0, read errors 0" in line
    published = int(line.split("published ")[1].split(",")[0])
    sub.wait_readings(device_id, published)
    assert sorted(set(seqs(sub, device_id))) == list(range(published))
