from __future__ import annotations

import sqlite3
from pathlib import Path


def outbox_rows(path: Path) -> int:
    """Readings waiting in an agent's outbox, read as a user would with sqlite3."""
    if not path.exists():
        return 0
    with sqlite3.connect(path) as db:
        try:
            return int(db.execute("SELECT count(*) FROM outbox").fetchone()[0])
        except sqlite3.OperationalError:
            return 0  # the agent has not made its tables yet
