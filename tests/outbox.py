"""An agent's outbox read from outside, as a user would with sqlite3."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path


def outbox_state(outbox: Path) -> tuple[int, int]:
    """(next seq, readings waiting) of an agent's outbox; (0, 0) before the agent made it.

    A read-write connection, as the agent opens it: after a SIGKILL only such a connection
    replays the WAL (a read-only one may see the state one commit behind)."""
    if not outbox.exists():
        return 0, 0
    with contextlib.closing(sqlite3.connect(outbox, timeout=5)) as db:
        try:
            row = db.execute("SELECT value FROM state WHERE key = 'next_seq'").fetchone()
            waiting = db.execute("SELECT count(*) FROM outbox").fetchone()[0]
        except sqlite3.OperationalError:
            return 0, 0  # the agent has not made its tables yet
    return (0 if row is None else int(row[0])), int(waiting)


def outbox_rows(outbox: Path) -> int:
    """Readings waiting in an agent's outbox."""
    return outbox_state(outbox)[1]
