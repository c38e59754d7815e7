"""The `_manifests/<format>/` folder of an export: run ids, manifests, the watermark, the
lease, and the commit protocol that makes a run count once and whole.

**Commit protocol** (scan method). A run stages each data file, whole, under
`_manifests/<format>/staging/<run-id>/` (outside the data prefix, so no query sees it). Then:
1. the run's manifest is written: this is the commit point;
2. the staged files are moved to their keys under the data prefix;
3. watermark.json is rewritten from the manifest;
4. for `--full`, the files listed by older manifests are deleted, then those manifests.
Every step after 1 is idempotent and is redone by the next run if a crash interrupts it
(`_Ledger.settle`); staged files of a run without a manifest are deleted by that same step.
So a crash before 1 leaves nothing visible and the watermark unmoved (the rerun exports the
same items again); a crash after 1 is finished by the next run. New rows appear (2) before old
ones go (4): a reader between the two sees some rows twice, briefly, and never misses one.
Staging beats the alternative (files named by run id straight under the data prefix, and a
commit step that deletes files no manifest lists): there a crashed run's rows stay visible
until the next run, and during a `--full` run old and new rows are both visible for the
whole run, not for a moment. The price on S3 is one server-side copy per file.
One export per destination and format at a time: a second one started concurrently would take
the first one's staging area for a crashed run's and delete it. So a run holds
`_manifests/<format>/lease` from before its first settle() until it ends (cloud/export/folder.py
and s3.py: an flock in a folder, which dies with its process; on S3 an object created with a
conditional put and renewed while the run goes on, which a dead run's stops being after
LEASE_SECONDS), and a second run is refused with the holder's start time. As a last guard,
the commit checks that every staged file is still there before it writes the manifest.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import secrets
import socket
from dataclasses import dataclass
from typing import Any

from cloud.errors import ExportError, LeaseHeld, StorageError
from cloud.export import layout
from cloud.export.storage import Destination, Lease, is_temporary
from cloud.timeparse import iso_ms

_RUN_ID = re.compile(r"^\d{8}T\d{9}Z-[0-9a-f]{8}$")


def new_run_id(now: float) -> str:
    """Sortable by start time (to the millisecond), unique by its random tail."""
    stamp = dt.datetime.fromtimestamp(now, dt.UTC)
    return f"{stamp:%Y%m%dT%H%M%S}{stamp.microsecond // 1000:03d}Z-{secrets.token_hex(4)}"


def iso_time(now: float) -> str:
    return iso_ms(int(now * 1000))


@dataclass(frozen=True)
class DataFile:
    key: str  # its key under the root once published
    size: int
    sha256: str | None
    rows: int

    def as_json(self) -> dict[str, Any]:
        return {"key": self.key, "size": self.size, "sha256": self.sha256, "rows": self.rows}


@dataclass(frozen=True)
class Watermark:
    received_at_ms: int | None  # None: runs were committed, but no item had ReceivedAt
    run_id: str


class Ledger:
    """The `_manifests/<area>/` folder of one format: run manifests, watermark, staging."""

    def __init__(self, dest: Destination, area: str) -> None:
        self.dest = dest
        self.prefix = layout.manifest_prefix(area)
        self.area = area
        self.staging = f"{self.prefix}/staging"
        self.watermark_key = f"{self.prefix}/watermark.json"
        self.lease_key = f"{self.prefix}/lease"  # no .json: readers glob manifests by that

    def manifest_key(self, run_id: str) -> str:
        return f"{self.prefix}/{run_id}.json"

    def hold(self, run_id: str, started: float) -> Lease:
        """This area for this run alone, until the lease is released."""
        holder = {
            "run_id": run_id,
            "since": iso_time(started),
            "host": socket.gethostname(),
            "pid": os.getpid(),
        }
        try:
            return self.dest.lease(self.lease_key, holder)
        except LeaseHeld as held:
            other = held.holder
            raise ExportError(
                f"another export to {self.dest.url} ({self.area}) is running since "
                f"{other.get('since', 'an unknown time')} (run {other.get('run_id', '?')}); "
                f"wait for it to finish. {held.hint[:1].upper()}{held.hint[1:]}",
                "LeaseHeld",
            ) from None

    def check_commit(self, lease: Lease, run_id: str, files: list[DataFile]) -> None:
        """Refuse to commit unless this run still holds the lease and its staged files are
        all there: a manifest must never count rows that no file holds."""
        try:
            lease.check()
        except StorageError as exc:
            raise ExportError(f"{exc}; nothing was committed: rerun", exc.code) from None
        staged = {o.key: o.size for o in self.dest.list(f"{self.staging}/{run_id}/")}
        gone = [f for f in files if staged.get(self.staged_key(run_id, f.key)) != f.size]
        if gone:
            raise ExportError(
                f"{len(gone)} of {len(files)} staged file(s) of this run vanished before its "
                f"commit (first {self.dest.location(self.staged_key(run_id, gone[0].key))}): "
                "did something else write to this export? Nothing was committed: rerun"
            )

    def staged_key(self, run_id: str, key: str) -> str:
        return f"{self.staging}/{run_id}/{key}"

    def runs(self) -> list[str]:
        """Committed run ids, oldest first, from the manifests' names alone."""
        found = []
        for obj in self.dest.list(f"{self.prefix}/"):
            name = obj.key[len(self.prefix) + 1 :]
            if name.endswith(".json") and _RUN_ID.match(name[:-5]):
                found.append(name[:-5])
        return sorted(found)

    def manifest(self, run_id: str) -> dict[str, Any]:
        return self._read_json(self.manifest_key(run_id)) or {}

    def _read_json(self, key: str) -> dict[str, Any] | None:
        data = self.dest.read(key)
        if data is None:
            return None
        try:
            body = json.loads(data)
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise ExportError(
                f"{self.dest.location(key)} is not a JSON object; it was not written by "
                "cloud export, or was damaged: move it away and rerun"
            )
        return body

    def watermark(self) -> Watermark | None:
        body = self._read_json(self.watermark_key)
        if body is None:
            return None
        value = body.get("received_at_ms")
        return Watermark(int(value) if value is not None else None, str(body.get("run_id")))

    def write_json(self, key: str, body: dict[str, Any]) -> None:
        self.dest.put_bytes(key, json.dumps(body, indent=2).encode() + b"\n")

    def settle(self) -> None:
        """Finish what committed runs left undone and drop what uncommitted runs left.

        Idempotent; every run calls it before it starts and right after its commit."""
        runs = self.runs()
        committed = set(runs)
        leftovers: list[str] = []
        for obj in self.dest.list(f"{self.prefix}/"):
            key = obj.key
            if is_temporary(key):
                leftovers.append(key)  # a manifest or file cut off mid-write
            elif key.startswith(f"{self.staging}/"):
                run_id, _, final = key[len(self.staging) + 1 :].partition("/")
                if run_id in committed and final:
                    self.dest.move(key, final)
                else:
                    leftovers.append(key)
        self.dest.delete(leftovers)
        if not runs:
            return
        newest = self.manifest(runs[-1])
        if newest.get("full"):
            # The newest run replaced everything before it: its files are already in place
            # (moved above), so the older ones can go; their manifests last, so a crash in
            # between still leaves a list of what to delete.
            for old in runs[:-1]:
                files = self.manifest(old).get("files", [])
                self.dest.delete(str(f["key"]) for f in files)
                self.dest.delete([self.manifest_key(old)])
        mark = newest.get("watermark", {})
        current = self.watermark()
        if current is None or current.run_id != runs[-1]:
            received = mark.get("received_at_ms")
            self.write_json(
                self.watermark_key,
                {
                    "format": newest.get("format"),
                    "received_at_ms": received,
                    "received_at": iso_ms(received) if received is not None else None,
                    "run_id": runs[-1],
                },
            )
