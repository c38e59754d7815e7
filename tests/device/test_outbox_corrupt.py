"""A corrupt outbox on a device nobody watches: moved aside and kept, a new one started, the
agent runs on and says so loudly."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from device.outbox import Outbox
from tests.mqtt import finish, start_agent


def not_a_database(path: Path) -> None:
    path.write_bytes(b"this is not an SQLite file\n" * 200)


def damaged_pages(path: Path) -> None:
    """A real outbox with readings in it, then a stretch of its pages overwritten (a bad SD
    card): SQLite opens it, and only reading those pages shows the damage."""
    box = Outbox(path, "ignored-by-the-test")
    for _ in range(20):
        box.append([{"temperature": 21.5}] * 100)
    box.close()
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    with path.open("r+b") as f:
        f.seek(4096 * 3)
        f.write(b"\xff" * 4096 * 4)


@pytest.mark.parametrize("damage", [not_a_database, damaged_pages], ids=lambda f: f.__name__)
def test_a_corrupt_outbox_is_moved_aside_and_the_agent_runs_on(
    damage: Callable[[Path], None], shared_broker, subscribe, tls_args, device_id, tmp_path: Path
):
    outbox = tmp_path / "outbox.sqlite"
    damage(outbox)
    before = outbox.read_bytes()
    sub = subscribe(shared_broker.config.port)
    proc = start_agent(
        "--id",
        device_id,
        "--broker",
        f"mqtts://127.0.0.1:{shared_broker.config.port}",
        *tls_args(device_id),
        "--outbox",
        str(outbox),
        "--count",
        "10",
        "--interval",
        "0",
    )
    code, out, err = finish(proc)
    assert code == 0, err
    assert f"{device_id}: published 10, acknowledged 10, buffered 0" in out
    assert sorted(r["seq"] for r in sub.wait_readings(device_id, 10)) == list(range(10))

    (kept,) = tmp_path.glob("outbox.sqlite.corrupt-*[!-walshm]")
    assert kept.read_bytes() == before, "the damaged file is kept as it was"
    (line,) = [x for x in err.splitlines() if " ERROR " in x]
    assert f"outbox {outbox} is corrupt" in line and f"moved it aside to {kept}" in line
    # The new outbox is a sound one, and holds nothing unsent.
    with sqlite3.connect(outbox) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert db.execute("SELECT count(*) FROM outbox").fetchone() == (0,)
