"""A folder that ran the first local stack, whose table and exports bucket lived in moto's
server, in memory: `cloud local up` moves it to the persistent stack.

If that moto server still runs, its table's items and its bucket's objects are copied into
the new table and exports folder before it is stopped; if it does not, they were lost when
it stopped, and `up` says so. Certificates are kept: the CA and every identity stay valid.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cloud.aws import Endpoint
from cloud.export.storage import check_key
from cloud.local.stack import terminate
from cloud.local.state import StackState, alive, state_dir

LEGACY_FILE = "stack.legacy.json"


class LegacyStack:
    def __init__(self, root: Path, raw: dict[str, Any]) -> None:
        self.root = root
        self.raw = raw
        self.pids: dict[str, int] = {k: int(v) for k, v in dict(raw.get("pids") or {}).items()}

    @classmethod
    def find(cls, root: Path) -> LegacyStack | None:
        folder = state_dir(root)
        for path in (folder / "stack.json", folder / LEGACY_FILE):
            try:
                raw = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if isinstance(raw, dict) and "moto_port" in raw and "version" not in raw:
                # Keep it under its own name: `up` writes the new settings to stack.json.
                path.replace(folder / LEGACY_FILE)
                return cls(root, raw)
        return None

    def _alive(self, name: str) -> bool:
        return alive(self.pids.get(name), name)

    def _stop(self, *names: str) -> list[str]:
        stopped = []
        for name in names:
            if self._alive(name):
                terminate(self.pids[name])
                stopped.append(name)
        return stopped

    def stop(self) -> list[str]:
        """`down` on an old stack: stop it all (its in-memory data goes with it)."""
        stopped = self._stop("ingest", "mosquitto", "moto")
        (state_dir(self.root) / LEGACY_FILE).unlink(missing_ok=True)
        return stopped

    def stop_all_but_table(self) -> list[str]:
        """Free the broker's port for the new stack; moto keeps its data until it is copied."""
        stopped = self._stop("ingest", "mosquitto")
        if not stopped:
            return []
        return [f"stopped the old stack's {' and '.join(stopped)}"]

    def move_data_and_stop(self, state: StackState) -> list[str]:
        if not self._alive("moto"):
            (state_dir(self.root) / LEGACY_FILE).unlink(missing_ok=True)
            return [
                "upgraded from the in-memory stack: its table and exports lived in moto's "
                "server and were lost when it stopped; from now on the table is kept in "
                f"{state.table_dir} and exports in {state.exports_dir}"
            ]
        old = Endpoint.local(int(self.raw["moto_port"]))
        items = _copy_items(
            old.client("dynamodb"),
            str(self.raw.get("table", state.table)),
            state.endpoint.client("dynamodb"),
            state.table,
        )
        files = _copy_bucket(
            old.client("s3"), str(self.raw.get("bucket", "sensor-exports")), state.exports_dir
        )
        self._stop("moto")
        (state_dir(self.root) / LEGACY_FILE).unlink(missing_ok=True)
        return [
            f"upgraded from the in-memory stack: copied {items} reading(s) from the old "
            f"moto server into {state.table_dir} and {files} export file(s) into "
            f"{state.exports_dir}, then stopped it; `cloud export` now writes there by default"
        ]


def _copy_items(src: Any, src_table: str, dst: Any, dst_table: str) -> int:
    copied = 0
    kwargs: dict[str, Any] = {"TableName": src_table}
    while True:
        try:
            page = src.scan(**kwargs)
        except src.exceptions.ResourceNotFoundException:
            return copied
        items = page["Items"]
        for start in range(0, len(items), 25):
            pending = [{"PutRequest": {"Item": i}} for i in items[start : start + 25]]
            while pending:
                answer = dst.batch_write_item(RequestItems={dst_table: pending})
                pending = answer.get("UnprocessedItems", {}).get(dst_table, [])
        copied += len(items)
        if "LastEvaluatedKey" not in page:
            return copied
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def _copy_bucket(s3: Any, bucket: str, folder: Path) -> int:
    copied = 0
    try:
        pages = list(s3.get_paginator("list_objects_v2").paginate(Bucket=bucket))
    except s3.exceptions.NoSuchBucket:
        return 0
    for page in pages:
        for obj in page.get("Contents", []):
            key = check_key(obj["Key"])
            target = folder / key
            target.parent.mkdir(parents=True, exist_ok=True)
            s3.download_file(bucket, obj["Key"], str(target))
            copied += 1
    return copied
