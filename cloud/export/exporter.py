"""`cloud export --method scan`: the table scanned in parallel, written as files, committed
through the ledger.

**Watermark.** ReceivedAt is when the cloud received a reading; an incremental run exports the
items with ReceivedAt above the stored watermark. A Scan is not a snapshot, and an item is
written some time after its ReceivedAt, so an item received just before the watermark could
be written after the scan passed its segment and would then never be exported. Items received
within `settle` seconds before the run started are therefore left for the next run (and
counted), and the watermark never passes them. The first export of a format is a full one;
items without ReceivedAt are exported by full runs only. `--since T` selects by reading time
(CurrentTime >= T) instead of by watermark, so on an export that already holds rows it would
write some of them twice: it is refused there unless `--full` replaces the whole export.
This holds only if writers keep their side: an item is in the table within `settle` seconds
of its ReceivedAt (cloud ingest stamps it at the write attempt that succeeds).

**Reading times.** Items whose CurrentTime is outside device.columns.TS_MIN_MS..TS_MAX_MS (2000 to
2100: a device sending seconds or microseconds, from before ingest refused them) are skipped
by both formats and counted, rather than fail every Parquet export (Arrow's timestamps end in
the year 9999) or reach queries as the year 1970 or 58888.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from cloud.errors import ExportError, PipelineError
from cloud.export import layout
from cloud.export.encoding import received_at_ms, time_out_of_range
from cloud.export.ledger import Ledger, Watermark, iso_time, new_run_id
from cloud.export.progress import Progress
from cloud.export.scan import ParallelScan, describe_table, table_error
from cloud.export.spec import NOTHING_NEW, ExportResult, ExportSpec
from cloud.export.storage import Destination, Lease, StoredObject
from cloud.export.writers import EventHook, JsonLinesWriter, ParquetWriter, Sink, Writer
from cloud.target import aws_problem


class Exporter:
    """One `cloud export --method scan` run.

    `on_event(kind, detail)` is called after each data file is staged ("file", its key) and
    after the manifest is written ("commit", the run id); an exception raised by it fails
    the run there, as any failure would. Tests use it to stop a run at a chosen point."""

    def __init__(
        self,
        ddb: Any,
        table: str,
        dest: Destination,
        spec: ExportSpec,
        *,
        progress: Progress | None = None,
        on_event: EventHook | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if spec.method != "scan":
            raise ExportError("Exporter runs --method scan; use NativeExport for native")
        self.ddb = ddb
        self.table = table
        self.dest = dest
        self.spec = spec
        self.progress = progress
        self.on_event = on_event
        self.clock = clock

    def run(self) -> ExportResult:
        started = self.clock()
        run_id = new_run_id(started)
        total = int(describe_table(self.ddb, self.table).get("ItemCount") or 0) or None
        self.dest.check()
        ledger = Ledger(self.dest, self.spec.fmt)
        lease = ledger.hold(run_id, started)
        try:
            return self._run(ledger, lease, run_id, started, total)
        finally:
            lease.release()

    def _run(
        self, ledger: Ledger, lease: Lease, run_id: str, started: float, total: int | None
    ) -> ExportResult:
        spec = self.spec
        t0 = time.monotonic()
        ledger.settle()
        previous = ledger.watermark()
        full = spec.full or previous is None  # the first export of a format is a full one
        if spec.since_ms is not None and not full:
            raise ExportError(
                f"--since picks readings by their time, so it would write rows already in "
                f"{self.dest.location(layout.data_prefix(spec.fmt))} a second time; add --full "
                "to replace that export with the readings since then, or drop --since"
            )
        cutoff = int(started * 1000 - spec.settle_seconds * 1000)
        request = self._request(full, previous)
        sink = Sink(self.dest, ledger, run_id, self.on_event)
        writer: Writer
        if spec.fmt == "parquet":
            writer = ParquetWriter(sink, spec.rows_per_file, spec.row_group_rows)
        else:
            writer = JsonLinesWriter(sink, spec.rows_per_file)
        items = scanned = deferred = out_of_range = 0
        highest: int | None = None
        try:
            with ParallelScan(self.ddb, request, spec.segments) as pages:
                for page, page_scanned in pages:
                    ready = []
                    for item in page:
                        received = received_at_ms(item)
                        if received is not None and received > cutoff:
                            deferred += 1
                            continue
                        if received is not None and (highest is None or received > highest):
                            highest = received
                        if time_out_of_range(item):
                            out_of_range += 1  # for good: the watermark may pass it
                            continue
                        ready.append(item)
                    items += writer.write(ready)
                    scanned += page_scanned
                    if self.progress is not None:
                        self.progress.update(scanned, total, f"{items:,} exported")
            writer.close()
        except ClientError as exc:
            writer.abort()
            sink.abort()
            raise table_error(exc, self.table) from None
        except BotoCoreError as exc:
            writer.abort()
            sink.abort()
            raise ExportError(
                f"reading table {self.table} failed: {aws_problem(exc) or exc}"
            ) from None
        except BaseException:
            writer.abort()
            sink.abort()
            raise
        finally:
            if self.progress is not None:
                self.progress.close()
        skipped = getattr(writer, "skipped", 0)
        old_mark = previous.received_at_ms if previous else None
        if not sink.files and not full:
            return ExportResult(
                run_id,
                spec.fmt,
                "scan",
                NOTHING_NEW,
                0,
                (),
                time.monotonic() - t0,
                self.dest.location(layout.data_prefix(spec.fmt) + "/"),
                old_mark,
                skipped,
                deferred,
                spec.settle_seconds,
                out_of_range,
            )
        # Never backwards: a --since run may export only older readings.
        marks = [m for m in (old_mark, highest) if m is not None]
        watermark = max(marks) if marks else None
        manifest = {
            "version": 1,
            "run_id": run_id,
            "format": spec.fmt,
            "method": "scan",
            "table": self.table,
            "full": full,
            "since_ms": spec.since_ms,
            "started": iso_time(started),
            "finished": iso_time(self.clock()),
            "items": items,
            "skipped": skipped,
            "skipped_out_of_range": out_of_range,
            "deferred": deferred,
            "bytes": sum(f.size for f in sink.files),
            "data_prefix": layout.data_prefix(spec.fmt),
            "files": [f.as_json() for f in sink.files],
            "watermark": {
                "received_at_ms": watermark,
                "previous_ms": old_mark,
                "cutoff_ms": cutoff,
            },
        }
        try:
            ledger.check_commit(lease, run_id, sink.files)
        except PipelineError:
            sink.abort()
            raise
        # The commit point: from here on the run counts, and settle() (now, or in the next
        # run after a crash) moves its files into place, sets the watermark and, for a full
        # run, removes what it replaces.
        ledger.write_json(ledger.manifest_key(run_id), manifest)
        if self.on_event is not None:
            self.on_event("commit", run_id)
        ledger.settle()
        return ExportResult(
            run_id,
            spec.fmt,
            "scan",
            "full" if full else "incremental",
            items,
            tuple(StoredObject(f.key, f.size, f.sha256) for f in sink.files),
            time.monotonic() - t0,
            self.dest.location(layout.data_prefix(spec.fmt) + "/"),
            watermark,
            skipped,
            deferred,
            spec.settle_seconds,
            out_of_range,
        )

    def _request(self, full: bool, previous: Watermark | None) -> dict[str, Any]:
        request: dict[str, Any] = {"TableName": self.table}
        if self.spec.page_size is not None:
            request["Limit"] = self.spec.page_size
        names: dict[str, str] = {}
        values: dict[str, Any] = {}
        if full:
            if self.spec.since_ms is not None:
                condition = "#t >= :since"
                names["#t"] = "CurrentTime"
                values[":since"] = {"N": str(self.spec.since_ms)}
            else:
                return request
        elif previous is not None and previous.received_at_ms is not None:
            condition = "#r > :mark"
            names["#r"] = "ReceivedAt"
            values[":mark"] = {"N": str(previous.received_at_ms)}
        else:
            # Committed before, but nothing had ReceivedAt: only items that have one are new.
            condition = "attribute_exists(#r)"
            names["#r"] = "ReceivedAt"
        request["FilterExpression"] = condition
        request["ExpressionAttributeNames"] = names
        if values:
            request["ExpressionAttributeValues"] = values
        return request
