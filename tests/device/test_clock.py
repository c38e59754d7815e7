"""Honest timestamps: readings held while the clock is not synchronised, stamped with their
true time once it is, and a backward jump of the clock counted, never papered over.

The agent runs in this process against a real broker, with an injected wall clock and an
injected synchronisation state (the kernel's is what a real agent asks)."""

from __future__ import annotations

import itertools
import json
import logging
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from device.agent import Agent, Summary
from device.clock import WallClock, kernel_clock_synchronized
from device.config import load_config
from device.outbox import Outbox
from tests.mqtt import wait_until

HOUR_MS = 3_600_000


class FakeTime:
    """A wall clock `offset_ms` away from the real one, and a switch for its sync state."""

    def __init__(self, offset_ms: int = 0, synced: bool = True) -> None:
        self.offset_ms = offset_ms
        self.synced = synced

    def clock(self) -> WallClock:
        return WallClock(
            now_ms=lambda: time.time_ns() // 1_000_000 + self.offset_ms,
            synchronized=lambda: self.synced,
        )


def start(
    device_id: str, port: int, tls: list[str], tmp_path: Path, wall: WallClock, **flags: Any
) -> tuple[Agent, threading.Thread, dict[str, Summary]]:
    args = dict(zip(tls[::2], tls[1::2], strict=True))
    config = load_config(
        device_id,
        {
            "broker": f"mqtts://127.0.0.1:{port}",
            "cert": args["--cert"],
            "key": args["--key"],
            "ca": args["--ca"],
            "outbox": tmp_path / "outbox.sqlite",
            **flags,
        },
        environ={},
    )
    agent = Agent(config, wall=wall)
    result: dict[str, Summary] = {}
    thread = threading.Thread(target=lambda: result.setdefault("summary", agent.run()))
    thread.start()
    return agent, thread, result


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def test_readings_taken_before_the_clock_syncs_are_held_then_stamped_with_their_true_time(
    shared_broker, subscribe, tls_args, device_id, tmp_path: Path, caplog
):
    caplog.set_level(logging.INFO)
    sub = subscribe(shared_broker.config.port)
    # A Pi that booted at the time it saved last: an hour behind, and not synchronised.
    fake = FakeTime(offset_ms=-HOUR_MS, synced=False)
    began = now_ms()
    agent, thread, result = start(
        device_id,
        shared_broker.config.port,
        tls_args(device_id),
        tmp_path,
        fake.clock(),
        count=10,
        interval=0.05,
        clock_wait=60,
    )
    # All ten are taken (half a second) and none is sent while the clock is wrong.
    wait_until(lambda: agent.held == 10, what="the agent to hold its ten readings")
    assert "holding readings" in caplog.text
    assert sub.readings(device_id) == []
    fake.offset_ms, fake.synced = 0, True  # NTP steps the clock to the truth
    thread.join(30)
    ended = now_ms()
    got = sorted(sub.wait_readings(device_id, 10), key=lambda r: r["seq"])
    stamps = [r["ts"] for r in got]
    assert all(began - 50 <= ts <= ended for ts in stamps), (began, stamps, ended)
    # Each keeps the time it was taken at: about the interval apart, not 1 ms.
    assert all(b - a >= 30 for a, b in itertools.pairwise(stamps)), stamps
    assert result["summary"].acknowledged == 10
    assert "stamping 10 held reading(s)" in caplog.text


def test_a_clock_that_never_syncs_is_used_as_it_is_after_clock_wait(
    shared_broker, subscribe, tls_args, device_id, tmp_path: Path, caplog
):
    sub = subscribe(shared_broker.config.port)
    fake = FakeTime(synced=False)
    _, thread, result = start(
        device_id,
        shared_broker.config.port,
        tls_args(device_id),
        tmp_path,
        fake.clock(),
        count=3,
        interval=0.05,
        clock_wait=0.5,
    )
    thread.join(30)
    assert result["summary"].acknowledged == 3
    assert len(sub.wait_readings(device_id, 3)) >= 3
    assert "still not synchronised after" in caplog.text


def test_a_backward_jump_of_an_hour_is_counted_and_readings_keep_their_true_time(
    shared_broker, subscribe, tls_args, device_id, tmp_path: Path
):
    sub = subscribe(shared_broker.config.port)
    fake = FakeTime()
    _, thread, result = start(
        device_id,
        shared_broker.config.port,
        tls_args(device_id),
        tmp_path,
        fake.clock(),
        count=10,
        interval=0.1,
        clock_wait=0,
    )
    sub.wait_readings(device_id, 4)
    fake.offset_ms = -HOUR_MS  # the clock was an hour fast, and NTP steps it back
    jumped_at = now_ms()
    thread.join(30)
    got = sorted(sub.wait_readings(device_id, 10), key=lambda r: r["seq"])
    before = [r["ts"] for r in got if r["ts"] > jumped_at - HOUR_MS / 2]
    after = [r["ts"] for r in got if r["ts"] <= jumped_at - HOUR_MS / 2]
    assert len(before) >= 4 and len(after) >= 4
    # After the jump, the clock's new time, not the old one plus a millisecond each.
    assert all(abs(ts - (jumped_at - HOUR_MS)) < 5_000 for ts in after), after
    assert len({r["ts"] for r in got}) == 10
    summary = result["summary"]
    assert summary.clock_jumps == 1
    assert summary.line().endswith(", clock jumps back 1")


T = 1_764_345_600_000  # an epoch ms


def test_after_a_jump_back_ts_stays_unique_against_earlier_readings(tmp_path: Path):
    box = Outbox(tmp_path / "o.sqlite", "s1")
    box.append([{"temperature": 1.0}] * 3, taken_ms=[T, T + 1, T + 2])
    # The clock stepped back 2 s; these were taken at the same true times as the first.
    box.append([{"temperature": 2.0}] * 4, taken_ms=[T - 2000, T, T + 1, T + 3])
    stamps = [json.loads(p.payload)["ts"] for p in box.pending()]
    assert stamps[:4] == [T, T + 1, T + 2, T - 2000]
    assert len(set(stamps)) == len(stamps) == 7
    assert all(ts >= taken for ts, taken in zip(stamps[4:], [T, T + 1, T + 3], strict=True))


@pytest.mark.parametrize(
    ("step_back_ms", "expected"),
    [(500, [T, T + 1]), (60_000, [T, T - 60_000 + 1])],
)
def test_a_small_step_back_keeps_ts_increasing_and_a_large_one_keeps_it_true(
    tmp_path: Path, step_back_ms: int, expected: list[int]
):
    box = Outbox(tmp_path / "o.sqlite", "s1")
    box.append([{"temperature": 1.0}], taken_ms=[T])
    box.append([{"temperature": 1.0}], taken_ms=[T - step_back_ms + 1])
    assert [json.loads(p.payload)["ts"] for p in box.pending()] == expected


def test_the_kernel_says_whether_the_clock_is_synchronised():
    assert kernel_clock_synchronized() in (True, False)
