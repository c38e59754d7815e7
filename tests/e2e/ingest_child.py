"""`cloud ingest` (the library's Ingest) in a process of its own, so a test can SIGKILL it.

Run as `python -m tests.e2e.ingest_child CONFIG_JSON`. Logs go to stderr, the summary line
to stdout. With `stall_after_batches` N, the (N+1)th BatchWriteItem writes the first half of
its batch, creates the file `stall_marker` and then blocks until the process is killed: a
crash in the middle of a batch, some of it written and none of it acknowledged.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from cloud.aws import Endpoint
from cloud.identity.local_ca import Identity
from cloud.ingest.service import Ingest
from cloud.ingest.settings import IngestSettings


class StallingWriter:
    def __init__(self, real: Any, after: int, marker: Path) -> None:
        self.real = real
        self.after = after
        self.marker = marker
        self.calls = 0

    def batch_write_item(self, **kwargs: Any) -> dict[str, Any]:
        self.calls += 1
        if self.calls <= self.after:
            return dict(self.real.batch_write_item(**kwargs))
        ((table, requests),) = kwargs["RequestItems"].items()
        half = requests[: max(1, len(requests) // 2)]
        self.real.batch_write_item(RequestItems={table: half})
        self.marker.write_text(f"{len(half)} of {len(requests)} written\n")
        threading.Event().wait()  # until SIGKILL
        raise AssertionError("unreachable")


def main() -> None:
    cfg = json.loads(sys.argv[1])
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s"
    )
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    endpoint = Endpoint(cfg["endpoint"], "us-east-1")
    settings = IngestSettings(
        host="127.0.0.1",
        port=cfg["port"],
        tls=Identity(*(Path(p) for p in cfg["tls"])),
        endpoint=endpoint,
        table=cfg["table"],
        dead_letter=Path(cfg["dead_letter"]),
        client_id=cfg["client_id"],
        share_group=cfg["share_group"],
        report_every=1.0,
    )
    ddb = None
    if cfg.get("stall_after_batches") is not None:
        ddb = StallingWriter(
            endpoint.client("dynamodb"), cfg["stall_after_batches"], Path(cfg["stall_marker"])
        )
    bridge = Ingest(settings, ddb=ddb)
    try:
        bridge.run(stop)
    finally:
        print(bridge.stats.line(), flush=True)


if __name__ == "__main__":
    main()
