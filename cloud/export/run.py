"""`cloud export` as a library: the SensorData table, streamed to a folder or S3 for SQL.

Layout under the export root (a folder or s3://bucket/prefix; names from cloud/export/layout.py):

    sensor_data/<run-id>-<n>.json                  datapipeline: JSON lines, uncompressed
    readings/dt=YYYY-MM-DD/<run-id>-<n>.parquet    parquet: flat typed columns, zstd
    _manifests/<format>/<run-id>.json              one per committed run (the commit record)
    _manifests/<format>/watermark.json             highest ReceivedAt exported so far
    _manifests/<format>/lease                      held by the one export running there
    _manifests/<format>/staging/<run-id>/<key>     a run's files before its commit
    AWSDynamoDB/<export-id>/...                    --method native (written by DynamoDB)
    _manifests/native/<run-id>.json                one per committed native export

The parts, one module each: what a run is asked and answers (spec.py), item encodings
(encoding.py), the file writers (writers.py), the parallel Scan (scan.py), manifests and the
commit protocol (ledger.py), the two methods (exporter.py for scan, native.py), and progress
on a terminal (progress.py). This module is the front door that picks among them.
"""

from __future__ import annotations

import sys
from typing import TextIO

from cloud.aws import Endpoint
from cloud.export.exporter import Exporter
from cloud.export.location import open_destination
from cloud.export.native import NativeExport
from cloud.export.progress import LineProgress, Progress
from cloud.export.spec import NATIVE, ExportResult, ExportSpec
from cloud.export.writers import EventHook

#: What `cloud export` (cloud/cli/export.py) calls: a spec in, a run, its progress line.
__all__ = ["ExportSpec", "run_export", "terminal_progress"]


# Here, beside the front door, rather than in progress.py: it is the CLI's one choice of how
# a run shows its progress.
def terminal_progress(stream: TextIO | None = None) -> Progress | None:
    """A progress line on stderr when it is a terminal; None (silence) otherwise."""
    stream = sys.stderr if stream is None else stream
    return LineProgress(stream) if stream.isatty() else None


def run_export(
    endpoint: Endpoint,
    table: str,
    spec: ExportSpec,
    *,
    progress: Progress | None = None,
    on_event: EventHook | None = None,
) -> ExportResult:
    """Export `table` as `spec` says, through `endpoint` (AWS, or the moto server)."""
    # One connection per scan segment, so the workers never queue for the pool.
    ddb = endpoint.client("dynamodb", max_pool_connections=max(10, spec.segments + 2))
    dest = open_destination(spec.destination, endpoint)
    if spec.method == NATIVE:
        return NativeExport(ddb, table, dest, spec, progress=progress).run()
    return Exporter(ddb, table, dest, spec, progress=progress, on_event=on_event).run()
