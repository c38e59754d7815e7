"""The outbox: order, bounds, and what survives a restart."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from device.errors import OutboxError
from device.outbox import Outbox


def temps(*values: float) -> list[dict[str, float]]:
    return [{"temperature": v} for v in values]


def test_seq_continues_across_reopen_and_ts_stays_true_when_the_clock_goes_back(
    tmp_path: Path,
):
    path = tmp_path / "o.sqlite"
    box = Outbox(path, "s1")
    t = 1_764_345_600_000
    first = box.append(temps(1, 2, 3), now_ms=t)
    box.close()
    box = Outbox(path, "s1")
    # The clock went back a minute (NTP correcting a fast clock): the true time, not
    # the last ts plus one (tests/device/test_clock.py has the rest).
    later = box.append(temps(4), now_ms=t - 60_000)
    stored = [json.loads(p.payload) for p in box.pending()]
    assert [p.seq for p in first + later] == [0, 1, 2, 3]
    assert [r["ts"] for r in stored] == [t, t + 1, t + 2, t - 60_000]


def test_removed_readings_are_not_pending_and_the_rest_stay_in_order(tmp_path: Path):
    box = Outbox(tmp_path / "o.sqlite", "s1")
    box.append(temps(*range(5)))
    box.remove([0, 2])
    assert [p.seq for p in box.pending()] == [1, 3, 4]
    assert [p.seq for p in box.pending(after_seq=1, limit=1)] == [3]
    assert len(box) == 3


def test_full_outbox_drops_the_oldest_and_counts_it(tmp_path: Path, caplog):
    box = Outbox(tmp_path / "o.sqlite", "s1", max_items=3, full_policy="drop-oldest")
    box.append(temps(*range(5)))
    assert [p.seq for p in box.pending()] == [2, 3, 4]
    assert box.dropped == 2
    assert "outbox full" in caplog.text


def test_full_outbox_refuses_the_newest_and_the_gap_shows_in_seq(tmp_path: Path):
    box = Outbox(tmp_path / "o.sqlite", "s1", max_items=3, full_policy="refuse-newest")
    kept = box.append(temps(*range(5)))
    assert [p.seq for p in kept] == [0, 1, 2]
    box.remove([0])
    assert [p.seq for p in box.append(temps(9))] == [5]
    assert box.dropped == 2


def test_an_outbox_belongs_to_one_sensor(tmp_path: Path):
    Outbox(tmp_path / "o.sqlite", "s1").close()
    with pytest.raises(OutboxError, match="belongs to sensor 's1', not 's2'"):
        Outbox(tmp_path / "o.sqlite", "s2")


def test_a_committed_append_survives_a_process_killed_right_after(tmp_path: Path):
    path = tmp_path / "o.sqlite"
    code = (
        "import os, sys; from pathlib import Path; from device.outbox import Outbox;"
        f"b = Outbox(Path({str(path)!r}), 's1');"
        "b.append([{'temperature': 20.5}] * 10);"
        "os.kill(os.getpid(), 9)"
    )
    proc = subprocess.run([sys.executable, "-c", code], check=False)
    assert proc.returncode == -9
    assert [p.seq for p in Outbox(path, "s1").pending()] == list(range(10))


def test_an_outbox_path_that_cannot_be_made_gives_a_clear_error(tmp_path: Path):
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    with pytest.raises(OutboxError, match=r"point --outbox elsewhere"):
        Outbox(not_a_folder / "o.sqlite", "s1")


def test_a_failed_delete_leaves_appends_fsynced(tmp_path: Path):
    """remove() commits without fsync; a delete that fails (a full disk) must not leave the
    connection that way, or every later append would lose its power-cut durability."""
    path = tmp_path / "o.sqlite"
    box = Outbox(path, "s1")
    box.append(temps(1, 2))
    with sqlite3.connect(path) as other:
        other.execute(
            "CREATE TRIGGER fail BEFORE DELETE ON outbox BEGIN SELECT RAISE(ABORT, 'disk I/O"
            " error'); END"
        )
    with pytest.raises(OutboxError, match="disk I/O error"):
        box.remove([0])
    full = 2
    assert box._db.execute("PRAGMA synchronous").fetchone()[0] == full
    assert [p.seq for p in box.pending()] == [0, 1]


def test_a_receipt_matches_only_its_own_reading_also_in_an_outbox_from_before_the_ts_column(
    tmp_path: Path,
):
    path = tmp_path / "o.sqlite"
    t = 1_764_345_600_000
    # An outbox as agents wrote it before `ts` was a column: seq and payload only.
    old = sqlite3.connect(path)
    old.executescript(
        "CREATE TABLE outbox (seq INTEGER PRIMARY KEY, payload BLOB NOT NULL);"
        "CREATE TABLE state (key TEXT PRIMARY KEY, value);"
    )
    old.executemany(
        "INSERT INTO state VALUES (?, ?)", [("sensor_id", "s1"), ("next_seq", 1), ("last_ts", t)]
    )
    payload = {"sensor_id": "s1", "ts": t, "seq": 0, "temperature": 1.0, "v": 1}
    old.execute("INSERT INTO outbox VALUES (0, ?)", (json.dumps(payload).encode(),))
    old.commit()
    old.close()

    box = Outbox(path, "s1")
    box.append(temps(2), now_ms=t + 5)
    # Each seq matches with its own ts only: another ts is another outbox's reading.
    assert box.matching({0: t, 1: t + 5}) == {0: t, 1: t + 5}
    assert box.matching({0: t + 1, 1: t}) == {}
