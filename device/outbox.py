"""The durable outbox: every reading is on disk before it is published.

A SQLite file per device holds the readings not yet acknowledged by the broker, and the
counters that must survive a restart (the next `seq`, the last `ts`, how many were dropped).
WAL with synchronous=FULL makes each committed batch survive `kill -9` and a power cut; the
agent commits readings in batches, so the cost of an fsync is shared when readings come fast.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from device.errors import OutboxError
from device.payload import Reading

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY,
    payload BLOB NOT NULL,
    ts INTEGER
);
CREATE TABLE IF NOT EXISTS state (
    key TEXT PRIMARY KEY,
    value
);
CREATE TABLE IF NOT EXISTS stamps (
    n INTEGER PRIMARY KEY,
    ts INTEGER NOT NULL UNIQUE
);
"""
#: How far `ts` may run ahead of the clock to stay strictly increasing (readings faster than
#: one a millisecond, or a clock stepped back a little). A step back larger than this is a
#: clock jump: readings then get their true time, kept unique against `stamps`.
AHEAD_MS = 1000
#: The ts values of this many recent readings are kept to keep new ones unique after a
#: clock jump (about 27 hours at one reading a second).
RECENT_STAMPS = 100_000


#: SQLite's "database disk image is malformed" and "file is not a database".
_CORRUPT = (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)


class _CorruptOutbox(sqlite3.DatabaseError):
    """quick_check found damage SQLite did not report on open."""

    def __init__(self, detail: str) -> None:
        # SQLite's report runs over several lines; a log record is one.
        super().__init__("integrity check: " + " ".join(detail.split()))
        self.sqlite_errorcode = sqlite3.SQLITE_CORRUPT


@dataclass(frozen=True)
class Pending:
    seq: int
    payload: bytes


def _explain(path: Path, exc: sqlite3.Error) -> OutboxError:
    text = str(exc)
    if "disk is full" in text or "disk I/O" in text:
        hint = "free space on that disk or point --outbox elsewhere"
    elif "readonly" in text or "read-only" in text:
        hint = "make it writable or point --outbox elsewhere"
    elif "unable to open" in text:
        hint = "check that its folder exists and is writable"
    else:
        hint = "move the file aside to start a fresh outbox"
    return OutboxError(f"outbox {path}: {text}; {hint}")


class Outbox:
    """Unacknowledged readings of one sensor, in `seq` order, bounded to `max_items`."""

    def __init__(
        self,
        path: Path,
        sensor_id: str,
        max_items: int = 100_000,
        full_policy: str = "drop-oldest",
    ) -> None:
        if full_policy not in ("drop-oldest", "refuse-newest"):
            raise ValueError(f"full_policy: {full_policy!r}")
        self.path = path
        self.sensor_id = sensor_id
        self.max_items = max_items
        self.full_policy = full_policy
        #: Where a corrupt outbox found at start was moved (kept for recovery), if one was.
        self.moved_aside: Path | None = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            try:
                self._open()
            except sqlite3.DatabaseError as exc:
                if exc.sqlite_errorcode not in _CORRUPT:
                    raise
                # Unattended, refusing to start would lose every reading from now on; the
                # old file is kept, renamed, for `sqlite3 FILE .recover`.
                if hasattr(self, "_db"):
                    self._db.close()
                self.moved_aside = self._move_aside()
                log.error(
                    "outbox %s is corrupt (%s): moved it aside to %s, with the readings it "
                    "held, and started a new one (seq starts again at 0)",
                    path,
                    exc,
                    self.moved_aside,
                )
                self._open()
        except sqlite3.Error as exc:
            raise _explain(path, exc) from None
        except OSError as exc:
            raise OutboxError(f"outbox {path}: {exc.strerror}; point --outbox elsewhere") from None

    def _open(self) -> None:
        # isolation_level=None: we open transactions ourselves, one per batch.
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        # A damaged page shows here, at start, rather than at some later reading's write.
        (check,) = self._db.execute("PRAGMA quick_check(1)").fetchone()
        if check != "ok":
            raise _CorruptOutbox(check)
        self._db.executescript(_SCHEMA)
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(outbox)")}
        if "ts" not in columns:
            # An outbox from before `ts` was a column: its rows keep ts NULL (read from their
            # payload when a receipt is matched), new rows fill it.
            self._db.execute("ALTER TABLE outbox ADD COLUMN ts INTEGER")
        owner = self._get("sensor_id")
        if owner is None:
            self._set("sensor_id", self.sensor_id)
        elif owner != self.sensor_id:
            raise OutboxError(
                f"outbox {self.path} belongs to sensor {owner!r}, not {self.sensor_id!r}; "
                "give each device its own --outbox"
            )
        self._count = int(self._db.execute("SELECT count(*) FROM outbox").fetchone()[0])
        # Kept in memory as _count is: health reads it at every turn of the agent's loop.
        self._dropped = self._int("dropped")

    def _move_aside(self) -> Path:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        target = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        n = 1
        while target.exists():
            n += 1
            target = self.path.with_name(f"{self.path.name}.corrupt-{stamp}-{n}")
        # The WAL holds committed readings too: it goes with the file, under the new name.
        for suffix in ("-wal", "-shm"):
            side = Path(f"{self.path}{suffix}")
            if side.exists():
                side.rename(f"{target}{suffix}")
        self.path.rename(target)
        return target

    # -- counters kept with the data -------------------------------------------------------

    def _get(self, key: str) -> str | int | None:
        row = self._db.execute("SELECT value FROM state WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def _set(self, key: str, value: str | int) -> None:
        self._db.execute(
            "INSERT INTO state (key, value) VALUES (?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    def _int(self, key: str) -> int:
        value = self._get(key)
        return 0 if value is None else int(value)

    @property
    def next_seq(self) -> int:
        return self._int("next_seq")

    @property
    def dropped(self) -> int:
        """Readings lost to a full outbox, over the outbox's whole life."""
        return self._dropped

    def __len__(self) -> int:
        return self._count

    @property
    def remote_config(self) -> str | None:
        """The last remote config applied (JSON: version and settings), kept across runs."""
        value = self._get("remote_config")
        return None if value is None else str(value)

    def keep_remote_config(self, value: str) -> None:
        try:
            self._set("remote_config", value)  # autocommit: one row, durable at once
        except sqlite3.Error as exc:
            raise _explain(self.path, exc) from None

    def oldest_unsent_ts(self) -> int | None:
        """The `ts` (epoch ms) of the oldest reading still here, if any."""
        try:
            row = self._db.execute("SELECT ts, payload FROM outbox ORDER BY seq LIMIT 1").fetchone()
        except sqlite3.Error as exc:
            raise _explain(self.path, exc) from None
        if row is None:
            return None
        ts, payload = row
        return int(json.loads(payload)["ts"] if ts is None else ts)

    # -- the three operations --------------------------------------------------------------

    def append(
        self,
        measurements: Iterable[Mapping[str, float]],
        now_ms: int | None = None,
        taken_ms: Sequence[int] | None = None,
    ) -> list[Pending]:
        """Store new readings in one transaction and return those that were kept.

        Each gets the next `seq` and as `ts` the time it was taken (`taken_ms`, else
        `now_ms`, else now): past the previous `ts` when the clock has not jumped, never
        ahead of its own time by more than AHEAD_MS, and never a `ts` a recent reading has.
        A reading refused by a full outbox still uses up its `seq`, so the gap shows in the
        cloud.
        """
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        kept: list[Pending] = []
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                seq, last_ts = self.next_seq, self._int("last_ts")
                dropped = 0
                count = self._count
                for i, values in enumerate(measurements):
                    ts = self._unique_ts(taken_ms[i] if taken_ms is not None else now_ms, last_ts)
                    last_ts = max(last_ts, ts)
                    metrics = {k: v for k, v in values.items() if k != "temperature"}
                    reading = Reading(self.sensor_id, ts, seq, values["temperature"], metrics)
                    seq += 1
                    if count >= self.max_items:
                        dropped += 1
                        if self.full_policy == "refuse-newest":
                            continue
                        oldest = self._db.execute(
                            "DELETE FROM outbox WHERE seq = (SELECT min(seq) FROM outbox) "
                            "RETURNING seq"
                        ).fetchone()
                        if oldest is not None:
                            count -= 1
                            kept = [p for p in kept if p.seq != oldest[0]]
                    payload = reading.to_payload()
                    self._db.execute(
                        "INSERT INTO outbox (seq, payload, ts) VALUES (?, ?, ?)",
                        (reading.seq, payload, reading.ts),
                    )
                    count += 1
                    kept.append(Pending(reading.seq, payload))
                self._set("next_seq", seq)
                self._set("last_ts", last_ts)
                self._db.execute(
                    "DELETE FROM stamps WHERE n <= (SELECT max(n) FROM stamps) - ?",
                    (RECENT_STAMPS,),
                )
                if dropped:
                    self._set("dropped", self._dropped + dropped)
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:  # SQLite rolls back by itself on SQLITE_FULL
                    self._db.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise _explain(self.path, exc) from None
        self._dropped += dropped
        if dropped:
            log.warning(
                "outbox full (%d readings): %s %d reading(s); %d dropped so far",
                self.max_items,
                "dropped the oldest" if self.full_policy == "drop-oldest" else "refused",
                dropped,
                self.dropped,
            )
        self._count = count
        return kept

    def _unique_ts(self, taken: int, last_ts: int) -> int:
        if taken > last_ts:
            ts = taken
        elif last_ts - taken < AHEAD_MS:
            ts = last_ts + 1
        else:  # the clock went back: true time, but not one an earlier reading has
            ts = taken
            while self._db.execute("SELECT 1 FROM stamps WHERE ts = ?", (ts,)).fetchone():
                ts += 1
        self._db.execute("INSERT OR IGNORE INTO stamps (ts) VALUES (?)", (ts,))
        return ts

    def pending(self, after_seq: int = -1, limit: int = 1000) -> list[Pending]:
        """Unacknowledged readings with seq > after_seq, oldest first."""
        try:
            rows = self._db.execute(
                "SELECT seq, payload FROM outbox WHERE seq > ? ORDER BY seq LIMIT ?",
                (after_seq, limit),
            ).fetchall()
        except sqlite3.Error as exc:
            raise _explain(self.path, exc) from None
        return [Pending(int(seq), bytes(payload)) for seq, payload in rows]

    def matching(self, readings: Mapping[int, int]) -> dict[int, int]:
        """The readings of a receipt ({seq: ts}) that are in this outbox with that ts.

        A receipt meant for a reading of an earlier outbox (one that was replaced, so seqs
        began again at 0) matches nothing.
        """
        if not readings:
            return {}
        marks = ",".join("?" * len(readings))
        try:
            rows = self._db.execute(
                f"SELECT seq, ts, payload FROM outbox WHERE seq IN ({marks})",  # noqa: S608 (marks)
                list(readings),
            ).fetchall()
        except sqlite3.Error as exc:
            raise _explain(self.path, exc) from None
        return {
            seq: readings[seq]
            for seq, ts, payload in rows
            if (json.loads(payload).get("ts") if ts is None else ts) == readings[seq]
        }

    def remove(self, seqs: Iterable[int]) -> int:
        """Forget delivered readings; return how many were here. Losing this write to a
        crash only means a resend."""
        batch = [(s,) for s in seqs]
        if not batch:
            return 0
        try:
            # No fsync for this commit: losing it to a power cut only means a resend, and
            # the next append's FULL commit makes it durable along with its own rows.
            self._db.execute("PRAGMA synchronous=NORMAL")
            try:
                self._db.execute("BEGIN IMMEDIATE")
                before = self._db.total_changes
                self._db.executemany("DELETE FROM outbox WHERE seq = ?", batch)
                removed = self._db.total_changes - before
                self._db.execute("COMMIT")
            finally:
                # On every path: a failed delete must not leave appends without fsync.
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                self._db.execute("PRAGMA synchronous=FULL")
        except sqlite3.Error as exc:
            raise _explain(self.path, exc) from None
        self._count -= removed
        return removed

    def close(self) -> None:
        self._db.close()
