"""What `cloud export` is asked to do (`ExportSpec`), what it answers (`ExportResult`), and
how it fails (`ExportError`): the values every part of the export shares."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from cloud.errors import ExportError
from cloud.export import layout
from cloud.export.location import ExportRoot
from cloud.export.progress import human_bytes
from cloud.export.storage import StoredObject
from cloud.timeparse import iso_ms
from device.columns import TS_MAX_MS, TS_MIN_MS

METHODS = ("scan", "native")
NATIVE = "native"  # the manifest area of --method native
NATIVE_DIR = "AWSDynamoDB"  # chosen by DynamoDB, not by us
ROWS_PER_FILE = 500_000
ROW_GROUP_ROWS = 100_000
SETTLE_SECONDS = 10.0
MAX_SEGMENTS = 1_000_000  # DynamoDB's limit on TotalSegments

NOTHING_NEW = "nothing new"


@dataclass(frozen=True)
class ExportSpec:
    destination: str  # a folder, or s3://bucket/prefix
    fmt: str = "datapipeline"
    method: str = "scan"
    since_ms: int | None = None  # readings with CurrentTime >= this, instead of the watermark
    full: bool = False  # re-export everything and replace this format's earlier files
    segments: int = 4
    rows_per_file: int = ROWS_PER_FILE
    row_group_rows: int = ROW_GROUP_ROWS
    settle_seconds: float = SETTLE_SECONDS
    # Scan's Limit; None: the engine's own pages, 1 MB of items (~14k of ours). Smaller pages
    # add requests, and moto walks the whole table on each: 1,000-item pages halved the
    # export's rate there. The price is memory: boto3 needs some 60 MB to parse a 1 MB page,
    # so 4 segments peak at ~300-380 MiB (a raw 4-segment Scan: ~290), against ~120-160 MiB
    # with 1,000-item pages; bounded by the segments (see ParallelScan), not the table.
    page_size: int | None = None

    def __post_init__(self) -> None:
        if not self.destination:
            raise ExportError("--to: give a folder or s3://BUCKET/PREFIX")
        ExportRoot.to_write(self.destination, "--to")  # refused here, before any work
        if self.fmt not in layout.FORMATS:
            raise ExportError(f"--format {self.fmt!r}: one of {', '.join(layout.FORMATS)}")
        if self.method not in METHODS:
            raise ExportError(f"--method {self.method!r}: one of {', '.join(METHODS)}")
        if not 1 <= self.segments <= MAX_SEGMENTS:
            raise ExportError(f"--segments {self.segments}: between 1 and {MAX_SEGMENTS}")
        if self.rows_per_file < 1 or self.row_group_rows < 1:
            raise ExportError("rows_per_file and row_group_rows must be at least 1")
        if self.settle_seconds < 0:
            raise ExportError(f"--settle {self.settle_seconds:g}: must be 0 or more")
        if self.page_size is not None and self.page_size < 1:
            raise ExportError(f"page_size {self.page_size}: must be at least 1")
        if self.method == NATIVE:
            if self.fmt != "datapipeline":
                raise ExportError(
                    "--method native writes DynamoDB's own JSON; --format parquet needs "
                    "--method scan"
                )
            if self.since_ms is not None:
                raise ExportError("--method native exports the whole table; drop --since")


@dataclass(frozen=True)
class ExportResult:
    run_id: str
    fmt: str
    method: str
    mode: str  # "full", "incremental" or "nothing new"
    items: int
    files: tuple[StoredObject, ...]
    elapsed: float
    location: str  # where the data is, as the user would type it
    watermark_ms: int | None
    skipped: int = 0
    deferred: int = 0
    settle_seconds: float = 0.0
    out_of_range: int = 0  # items skipped for a CurrentTime outside TS_MIN_MS..TS_MAX_MS

    @property
    def bytes(self) -> int:
        return sum(f.size for f in self.files)

    def line(self) -> str:
        later = ""
        if self.out_of_range:
            n = self.out_of_range
            later += (
                f"; skipped {n:,} item{'s' if n != 1 else ''} with CurrentTime outside "
                f"{_year(TS_MIN_MS)}..{_year(TS_MAX_MS)} (not a reading's ms time)"
            )
        if self.deferred:
            later += (
                f"; {self.deferred:,} received in the last {self.settle_seconds:g}s "
                "wait for the next run"
            )
        if self.mode == NOTHING_NEW:
            since = iso_ms(self.watermark_ms) if self.watermark_ms is not None else "the start"
            return (
                f"nothing new since {since}: wrote nothing to {self.location} "
                f"({self.elapsed:.1f}s){later}"
            )
        skipped = f"; skipped {self.skipped:,} malformed item(s)" if self.skipped else ""
        return (
            f"exported {self.items:,} items in {len(self.files)} file(s), "
            f"{human_bytes(self.bytes)}, in {self.elapsed:.1f}s to {self.location} "
            f"({self.fmt}, {self.mode}){skipped}{later}"
        )


def _year(ms: int) -> int:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).year
