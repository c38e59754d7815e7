"""What `cloud local status` and `cloud status` show of the local stack: each part as the
supervisor last saw it, and where each kind of data lives and how big it is."""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

from cloud.local.state import StackState, alive


def folder_size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += (Path(dirpath) / name).stat().st_size
    return total


@dataclass(frozen=True)
class PartView:
    name: str
    running: bool
    state: str
    pid: int | None
    uptime: float | None
    restarts: int
    last_exit: str | None
    log: str


def part_views(state: StackState) -> list[PartView]:
    status = state.supervisor()
    now = time.time()
    views = []
    for name in state.parts:
        part = status.parts.get(name) if status else None
        if part is None:
            views.append(PartView(name, False, "stopped", None, None, 0, None, ""))
            continue
        running = part.state == "running" and alive(part.pid, name)
        uptime = now - part.started_at if part.started_at and part.pid else None
        views.append(
            PartView(
                name,
                running,
                part.state if status else "stopped",
                part.pid,
                uptime,
                part.restarts,
                part.last_exit,
                part.log,
            )
        )
    return views


def data_sizes(state: StackState) -> dict[str, tuple[Path, int]]:
    """Where each kind of data lives, and its size in bytes."""
    places = {
        "table": state.table_dir,
        "exports": state.exports_dir,
        "broker": state.broker_dir,
        "dead letters": state.dead_letter,
    }
    return {k: (p, folder_size(p) if p.exists() else 0) for k, p in places.items()}
