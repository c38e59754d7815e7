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

**datapipeline** lines are what AWS Data Pipeline wrote: every attribute of the item with its
type in lower case and numbers as strings,
`{"SensorId":{"s":"sensor-1"},"CurrentTime":{"n":"1665678911000"},"Temperature":{"n":"23.5"}}`,
so the tutorial's `struct<s:string>` / openx JsonSerDe table reads them unchanged. They are not
gzipped, as Data Pipeline's were not: Athena and DuckDB would read `.json.gz` as well, but plain
files keep the tutorial's layout as it was and stay readable with `head` and `grep`; the
compact, fast layout is `parquet`.

**parquet** has the columns of `layout.PARQUET_COLUMNS` and is Hive-partitioned by the UTC day
of the reading's time (`dt=` is in the path, not in the files). Items without SensorId,
CurrentTime or a numeric Temperature cannot fill those non-null columns; they are skipped
and counted in the manifest.

**native** (`--method native`, S3 only): DynamoDB's ExportTableToPointInTime, which needs
point-in-time recovery on the table, writes a full snapshot under the root:

    AWSDynamoDB/<export-id>/manifest-summary.json   AWS's summary (on AWS, not on moto)
    AWSDynamoDB/<export-id>/manifest-files.json     AWS's list of data files (not on moto)
    AWSDynamoDB/<export-id>/_started                an empty marker (not on moto)
    AWSDynamoDB/<export-id>/data/<random>.json.gz   gzip JSON lines (moto: `<uuid>.gz`)

Each data line is `{"Item":{"SensorId":{"S":"sensor-1"},"CurrentTime":{"N":"1665678911000"},
...}}`: upper-case types, numbers as strings, wrapped in "Item". On moto the folder name is a
random id that is not the one in the export's ARN. Our manifest
(`_manifests/native/<run-id>.json`) lists the data keys with sizes and S3 ETags (no sha256:
that would mean downloading the export), and every object of the export. Readers should take
the files named by the newest manifest rather than glob `AWSDynamoDB/*/data/`: while DynamoDB
is still writing, or in the moment before an older export is removed, a glob can see two
snapshots. A committed native export replaces every other object under `AWSDynamoDB/`.

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
`_manifests/<format>/lease` from before its first settle() until it ends (cloud/export/storage.py:
an flock in a folder, which dies with its process; on S3 an object created with a
conditional put and renewed while the run goes on, which a dead run's stops being after
LEASE_SECONDS), and a second run is refused with the holder's start time. As a last guard,
the commit checks that every staged file is still there before it writes the manifest.

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

**Reading times.** Items whose CurrentTime is outside payload.TS_MIN_MS..TS_MAX_MS (2000 to
2100: a device sending seconds or microseconds, from before ingest refused them) are skipped
by both formats and counted, rather than fail every Parquet export (Arrow's timestamps end in
the year 9999) or reach queries as the year 1970 or 58888.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import json
import logging
import os
import queue
import re
import secrets
import socket
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from json.encoder import encode_basestring
from types import TracebackType
from typing import Any, BinaryIO, Protocol, TextIO

from botocore.exceptions import BotoCoreError, ClientError

from cloud.aws import Endpoint
from cloud.errors import PipelineError
from cloud.export import layout
from cloud.export.storage import (
    Destination,
    Lease,
    LeaseHeld,
    PendingFile,
    S3Prefix,
    StorageError,
    StoredObject,
    is_temporary,
    open_destination,
)
from cloud.target import aws_problem
from cloud.timeparse import iso_ms
from device.payload import TS_MAX_MS, TS_MIN_MS

log = logging.getLogger(__name__)

METHODS = ("scan", "native")
NATIVE = "native"  # the manifest area of --method native
NATIVE_DIR = "AWSDynamoDB"  # chosen by DynamoDB, not by us
ROWS_PER_FILE = 500_000
ROW_GROUP_ROWS = 100_000
SETTLE_SECONDS = 10.0
MAX_SEGMENTS = 1_000_000  # DynamoDB's limit on TotalSegments

NOTHING_NEW = "nothing new"

EventHook = Callable[[str, str], None]


class ExportError(PipelineError):
    """The export cannot run or failed; `code` is AWS's error code when there is one."""

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code


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
            f"{_human_bytes(self.bytes)}, in {self.elapsed:.1f}s to {self.location} "
            f"({self.fmt}, {self.mode}){skipped}{later}"
        )


def _year(ms: int) -> int:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).year


def _human_bytes(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    size = n / 1024
    for unit in ("KiB", "MiB"):
        if size < 1024:
            return f"{size:,.1f} {unit}"
        size /= 1024
    return f"{size:,.1f} GiB"


# -- progress -----------------------------------------------------------------------------


class Progress(Protocol):
    def update(self, done: int, total: int | None, note: str) -> None: ...

    def close(self) -> None: ...


class LineProgress:
    """One line on a terminal, redrawn at most every `interval` seconds."""

    def __init__(self, stream: TextIO, interval: float = 0.2) -> None:
        self.stream = stream
        self.interval = interval
        self.started = time.monotonic()
        self._drawn = 0.0

    def update(self, done: int, total: int | None, note: str) -> None:
        now = time.monotonic()
        if now - self._drawn < self.interval:
            return
        self._drawn = now
        elapsed = max(now - self.started, 1e-9)
        parts = [note]
        if done or total:
            rate = done / elapsed
            # DescribeTable's ItemCount is refreshed every few hours: an estimate only.
            parts.append(f"{done:,}" + (f"/~{total:,}" if total else "") + " scanned")
            parts.append(f"{rate:,.0f}/s")
            if total and rate > 0 and done < total:
                parts.append(f"~{(total - done) / rate:,.0f}s left")
        parts.append(f"{elapsed:,.0f}s")
        self.stream.write("\r\x1b[2K" + ", ".join(parts))
        self.stream.flush()

    def close(self) -> None:
        self.stream.write("\r\x1b[2K")
        self.stream.flush()


def terminal_progress(stream: TextIO | None = None) -> Progress | None:
    """A progress line on stderr when it is a terminal; None (silence) otherwise."""
    stream = sys.stderr if stream is None else stream
    return LineProgress(stream) if stream.isatty() else None


# -- item shapes --------------------------------------------------------------------------

# AWS Data Pipeline serialised the Java SDK's AttributeValue bean, so its keys are that
# class's property names: lower-case types, and the odd `bOOL` and `nULLValue`.
_DATAPIPELINE_TYPES = {
    "S": "s",
    "N": "n",
    "B": "b",
    "SS": "ss",
    "NS": "ns",
    "BS": "bs",
    "M": "m",
    "L": "l",
    "BOOL": "bOOL",
    "NULL": "nULLValue",
}


def datapipeline_value(value: dict[str, Any]) -> dict[str, Any]:
    """One DynamoDB attribute value (boto3's low-level shape) in Data Pipeline's shape."""
    ((kind, inner),) = value.items()
    if kind == "M":
        inner = {k: datapipeline_value(v) for k, v in inner.items()}
    elif kind == "L":
        inner = [datapipeline_value(v) for v in inner]
    elif kind == "B":
        inner = base64.b64encode(inner).decode("ascii")
    elif kind == "BS":
        inner = [base64.b64encode(b).decode("ascii") for b in inner]
    return {_DATAPIPELINE_TYPES[kind]: inner}


#: The same encoder for every line: json.dumps with options builds a new one per call.
_LINE_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def datapipeline_line(item: dict[str, Any]) -> bytes:
    """The item as one line of Data Pipeline's JSON, exactly as json.dumps would write it.

    Our items hold only strings and numbers (S and N, whose value is a string too), so
    those are written by hand around json's own string escaper (the one json.dumps uses
    with ensure_ascii=False): about 2.7x faster, which the export's rate is made of.
    """
    parts = []
    for name, value in item.items():
        ((kind, inner),) = value.items()
        if kind == "S" or kind == "N":
            tag = _DATAPIPELINE_TYPES[kind]
            parts.append(f'{encode_basestring(name)}:{{"{tag}":{encode_basestring(inner)}}}')
        else:
            parts.append(
                f"{encode_basestring(name)}:{_LINE_ENCODER.encode(datapipeline_value(value))}"
            )
    return ("{" + ",".join(parts) + "}\n").encode()


def _int(value: dict[str, Any] | None) -> int | None:
    if value is None or "N" not in value:
        return None
    text = value["N"]
    try:
        return int(text)
    except ValueError:
        try:
            return int(Decimal(text))
        except InvalidOperation:
            return None


def _time_out_of_range(item: dict[str, Any]) -> bool:
    """CurrentTime is a number but no reading's epoch ms (items without one are left to the
    writers: Parquet counts them as malformed, Data Pipeline lines carry what there is)."""
    ms = _int(item.get("CurrentTime"))
    return ms is not None and not TS_MIN_MS <= ms < TS_MAX_MS


def _float(value: dict[str, Any] | None) -> float | None:
    if value is None or "N" not in value:
        return None
    try:
        return float(value["N"])
    except ValueError:
        return None


# Parquet column -> item attribute and how to read it. Checked against layout below, so a
# column added there without a source here fails at import, not in a half-written file.
_COLUMN_SOURCES: dict[str, tuple[str, Callable[[dict[str, Any] | None], Any]]] = {
    "sensor_id": ("SensorId", lambda v: v.get("S") if v else None),
    "time": ("CurrentTime", _int),
    "temperature": ("Temperature", _float),
    "seq": ("Seq", _int),
    "humidity": ("Humidity", _float),
    "pressure": ("Pressure", _float),
    "received_at": ("ReceivedAt", _int),
}
if set(_COLUMN_SOURCES) != {c.name for c in layout.PARQUET_COLUMNS}:
    raise ImportError("cloud.export.run: _COLUMN_SOURCES does not match layout.PARQUET_COLUMNS")

_DAY_MS = 86_400_000
_TIMESTAMP = re.compile(r"^timestamp\[(s|ms|us|ns)(?:, tz=([^\]]+))?\]$")


def _arrow_type(name: str) -> Any:
    import pyarrow as pa  # type: ignore[import-untyped,unused-ignore]

    match = _TIMESTAMP.match(name)
    if match:
        return pa.timestamp(match.group(1), tz=match.group(2))
    return pa.type_for_alias(name)


def parquet_schema() -> Any:
    """The `readings` schema, from layout.PARQUET_COLUMNS (without the `dt` partition)."""
    import pyarrow as pa  # type: ignore[import-untyped,unused-ignore]

    return pa.schema(
        [
            pa.field(c.name, _arrow_type(c.arrow_type), nullable=c.nullable)
            for c in layout.PARQUET_COLUMNS
        ]
    )


def _utc_day(ms: int, cache: dict[int, str]) -> str:
    number = ms // _DAY_MS
    day = cache.get(number)
    if day is None:
        day = dt.datetime.fromtimestamp(number * 86_400, dt.UTC).date().isoformat()
        cache[number] = day
    return day


# -- data files ---------------------------------------------------------------------------


@dataclass(frozen=True)
class DataFile:
    key: str  # its key under the root once published
    size: int
    sha256: str | None
    rows: int

    def as_json(self) -> dict[str, Any]:
        return {"key": self.key, "size": self.size, "sha256": self.sha256, "rows": self.rows}


class _Sink:
    """The data files of one run: built on local disk, then staged whole, one by one."""

    def __init__(
        self, dest: Destination, ledger: _Ledger, run_id: str, on_event: EventHook | None
    ) -> None:
        self.dest = dest
        self.ledger = ledger
        self.run_id = run_id
        self.on_event = on_event
        self.files: list[DataFile] = []
        self._pending: dict[str, PendingFile] = {}

    def open(self, key: str) -> PendingFile:
        pending = self.dest.create(self.ledger.staged_key(self.run_id, key))
        self._pending[key] = pending
        return pending

    def done(self, key: str, rows: int) -> None:
        stored = self._pending.pop(key).commit()
        self.files.append(DataFile(key, stored.size, stored.sha256, rows))
        if self.on_event is not None:
            self.on_event("file", key)

    def abort(self) -> None:
        """Best effort after a failure; what is left here the next run's settle() removes."""
        for pending in self._pending.values():
            pending.discard()
        self._pending.clear()
        try:
            self.dest.delete(self.ledger.staged_key(self.run_id, f.key) for f in self.files)
        except PipelineError as exc:
            log.warning("could not remove this run's staged files (the next run will): %s", exc)


class _Writer(Protocol):
    def write(self, items: list[dict[str, Any]]) -> int: ...

    def close(self) -> None: ...

    def abort(self) -> None: ...


class _JsonLinesWriter:
    """Data Pipeline lines, a new file every `rows_per_file` lines."""

    def __init__(self, sink: _Sink, rows_per_file: int) -> None:
        self.sink = sink
        self.rows_per_file = rows_per_file
        self.prefix = layout.data_prefix("datapipeline")
        self._count = 0
        self._key = ""
        self._handle: BinaryIO | None = None
        self._rows = 0

    def _open(self) -> BinaryIO:
        self._key = f"{self.prefix}/{self.sink.run_id}-{self._count:05d}.json"
        self._count += 1
        self._rows = 0
        self._handle = self.sink.open(self._key).path.open("wb", buffering=1 << 20)
        return self._handle

    def write(self, items: list[dict[str, Any]]) -> int:
        start = 0
        while start < len(items):
            handle = self._handle or self._open()
            take = min(len(items) - start, self.rows_per_file - self._rows)
            # One write per chunk: the lines of a page are joined, not written one by one.
            handle.write(b"".join(datapipeline_line(i) for i in items[start : start + take]))
            self._rows += take
            start += take
            if self._rows >= self.rows_per_file:
                self._finish()
        return len(items)

    def _finish(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None
            self.sink.done(self._key, self._rows)

    def close(self) -> None:
        self._finish()

    def abort(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None


@dataclass
class _Partition:
    day: str
    columns: dict[str, list[Any]]  # rows not yet in Arrow form
    batches: list[Any] = field(default_factory=list)  # Arrow record batches for a row group
    batched: int = 0
    writer: Any = None  # pyarrow.parquet.ParquetWriter while a file is open
    key: str = ""
    rows_in_file: int = 0

    @property
    def loose(self) -> int:
        return len(self.columns["sensor_id"])


class _ParquetWriter:
    """Typed columns, files per UTC day, row groups of about `row_group_rows`.

    Rows wait as Python lists only in chunks of a few thousand (a row there costs ~250 bytes,
    in Arrow ~45), and as Arrow batches until a row group is full. Memory is bounded by
    2 x chunk Python rows and 2 x row_group_rows Arrow rows in all partitions together, and
    by `max_open` open files (the least recently used is finished first, so a day can get
    more than one file per run)."""

    CHUNK_ROWS = 8_192

    def __init__(
        self, sink: _Sink, rows_per_file: int, row_group_rows: int, max_open: int = 32
    ) -> None:
        import pyarrow as pa  # type: ignore[import-untyped,unused-ignore]
        import pyarrow.parquet as pq  # type: ignore[import-untyped,unused-ignore]

        self._pa, self._pq = pa, pq
        self.sink = sink
        self.rows_per_file = rows_per_file
        self.row_group_rows = min(row_group_rows, rows_per_file)
        self.chunk_rows = min(self.CHUNK_ROWS, self.row_group_rows)
        self.max_open = max_open
        self.schema = parquet_schema()
        self.prefix = layout.data_prefix("parquet")
        self.skipped = 0
        self._names = [c.name for c in layout.PARQUET_COLUMNS]
        self._required = [c.name for c in layout.PARQUET_COLUMNS if not c.nullable]
        self._parts: OrderedDict[str, _Partition] = OrderedDict()  # least recently used first
        self._loose = 0
        self._batched = 0
        self._count = 0
        self._days: dict[int, str] = {}

    def write(self, items: list[dict[str, Any]]) -> int:
        written = 0
        for item in items:
            row = {name: read(item.get(attr)) for name, (attr, read) in _COLUMN_SOURCES.items()}
            if any(row[name] is None for name in self._required):
                self.skipped += 1
                continue
            day = _utc_day(row["time"], self._days)
            part = self._parts.get(day)
            if part is None:
                part = _Partition(day, {name: [] for name in self._names})
                self._parts[day] = part
            self._parts.move_to_end(day)
            for name in self._names:
                part.columns[name].append(row[name])
            self._loose += 1
            written += 1
            if part.loose >= self.chunk_rows:
                self._to_arrow(part)
            elif self._loose >= 2 * self.chunk_rows:
                self._to_arrow(max(self._parts.values(), key=lambda p: p.loose))
        return written

    def _to_arrow(self, part: _Partition) -> None:
        rows = part.loose
        if not rows:
            return
        part.batches.append(self._pa.RecordBatch.from_pydict(part.columns, schema=self.schema))
        part.columns = {name: [] for name in self._names}
        part.batched += rows
        self._loose -= rows
        self._batched += rows
        if part.batched >= self.row_group_rows:
            self._flush(part)
        elif self._batched >= 2 * self.row_group_rows:
            self._flush(max(self._parts.values(), key=lambda p: p.batched))

    def _flush(self, part: _Partition) -> None:
        """Write the partition's batches as row groups, rolling files at rows_per_file."""
        if not part.batched:
            return
        table = self._pa.Table.from_batches(part.batches, schema=self.schema)
        self._batched -= part.batched
        part.batches, part.batched = [], 0
        offset = 0
        while offset < table.num_rows:
            if part.writer is None:
                self._open(part)
            take = min(table.num_rows - offset, self.rows_per_file - part.rows_in_file)
            part.writer.write_table(table.slice(offset, take), row_group_size=take)
            part.rows_in_file += take
            offset += take
            if part.rows_in_file >= self.rows_per_file:
                self._finish(part)

    def _open(self, part: _Partition) -> None:
        open_parts = [p for p in self._parts.values() if p.writer is not None]
        if len(open_parts) >= self.max_open:
            self._finish(open_parts[0])
        part.key = (
            f"{self.prefix}/{layout.PARTITION_KEY}={part.day}/"
            f"{self.sink.run_id}-{self._count:05d}.parquet"
        )
        self._count += 1
        part.rows_in_file = 0
        # zstd: smaller than snappy at a similar speed, and Athena and DuckDB read both.
        part.writer = self._pq.ParquetWriter(
            str(self.sink.open(part.key).path),
            self.schema,
            compression="zstd",
            **layout.parquet_writer_options(),
        )

    def _finish(self, part: _Partition) -> None:
        if part.writer is not None:
            part.writer.close()
            part.writer = None
            self.sink.done(part.key, part.rows_in_file)

    def close(self) -> None:
        for part in list(self._parts.values()):
            self._to_arrow(part)
            self._flush(part)
            self._finish(part)
        self._parts.clear()

    def abort(self) -> None:
        for part in self._parts.values():
            if part.writer is not None:
                with contextlib.suppress(Exception):
                    part.writer.close()
                part.writer = None
        self._parts.clear()


# -- reading the table --------------------------------------------------------------------


@dataclass
class _Message:
    items: list[dict[str, Any]] = field(default_factory=list)
    scanned: int = 0
    error: BaseException | None = None
    done: bool = False


class ParallelScan:
    """Scan segments on worker threads, pages handed over through a queue.

    A worker takes a credit before it asks for a page, and the page keeps it until the
    writer has taken the page after it; there are segments + 1 credits, so at most that many
    pages are in memory (in flight, queued, or being written) however large the table. That
    is enough for every segment to have a request in flight while the writer works, and the
    scan runs at the writer's pace. A page is at most 1 MB of items, some 20 MB once boto3
    has made them Python dicts (and about three times that while it parses one)."""

    def __init__(self, ddb: Any, request: dict[str, Any], segments: int) -> None:
        self.ddb = ddb
        self.request = request
        self.segments = segments
        self._credits = threading.BoundedSemaphore(segments + 1)
        self._queue: queue.Queue[_Message] = queue.Queue()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._work, args=(s,), name=f"scan-{s}", daemon=True)
            for s in range(segments)
        ]

    def __enter__(self) -> Iterator[tuple[list[dict[str, Any]], int]]:
        for thread in self._threads:
            thread.start()
        return self._pages()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()  # workers waiting for a credit see it within 0.1 s
        for thread in self._threads:
            thread.join()

    def _take_credit(self) -> bool:
        while not self._stop.is_set():
            if self._credits.acquire(timeout=0.1):
                return True
        return False

    def _work(self, segment: int) -> None:
        request = dict(self.request)
        if self.segments > 1:
            request.update(Segment=segment, TotalSegments=self.segments)
        try:
            while self._take_credit():
                try:
                    page = self.ddb.scan(**request)
                except BaseException:
                    self._credits.release()
                    raise
                # The consumer gives the credit back once it is done with this page.
                self._queue.put(_Message(page.get("Items", []), int(page.get("ScannedCount", 0))))
                if "LastEvaluatedKey" not in page:
                    break
                request["ExclusiveStartKey"] = page["LastEvaluatedKey"]
        except BaseException as exc:  # handed to the consuming thread, which raises it
            self._queue.put(_Message(error=exc))
        finally:
            self._queue.put(_Message(done=True))

    def _pages(self) -> Iterator[tuple[list[dict[str, Any]], int]]:
        finished = 0
        holding = False  # the credit of the page the writer has (or had) last
        while finished < self.segments:
            message = self._queue.get()
            if message.error is not None:
                raise message.error
            if message.done:
                finished += 1
                continue
            if holding:  # the writer asked for this page, so it is done with the one before
                self._credits.release()
            holding = True
            if message.items or message.scanned:
                yield message.items, message.scanned


def _describe_table(ddb: Any, table: str) -> dict[str, Any]:
    try:
        description: dict[str, Any] = ddb.describe_table(TableName=table)["Table"]
        return description
    except ClientError as exc:
        raise _table_error(exc, table) from None
    except BotoCoreError as exc:
        problem = aws_problem(exc)
        if problem is not None:
            raise ExportError(problem) from None
        raise ExportError(f"cannot reach DynamoDB for table {table}: {exc}") from None


def _table_error(exc: ClientError, table: str) -> ExportError:
    error = exc.response.get("Error", {})
    code = error.get("Code")
    if code == "ResourceNotFoundException":
        return ExportError(
            f"table {table} not found; is the stack up (cloud status), or is SENSOR_TABLE "
            "or --target wrong?",
            code,
        )
    return ExportError(f"reading table {table} failed: {code}: {error.get('Message')}", code)


# -- manifests, watermark, commit ---------------------------------------------------------

_RUN_ID = re.compile(r"^\d{8}T\d{9}Z-[0-9a-f]{8}$")


def new_run_id(now: float) -> str:
    """Sortable by start time (to the millisecond), unique by its random tail."""
    stamp = dt.datetime.fromtimestamp(now, dt.UTC)
    return f"{stamp:%Y%m%dT%H%M%S}{stamp.microsecond // 1000:03d}Z-{secrets.token_hex(4)}"


def _iso(now: float) -> str:
    return iso_ms(int(now * 1000))


@dataclass(frozen=True)
class Watermark:
    received_at_ms: int | None  # None: runs were committed, but no item had ReceivedAt
    run_id: str


class _Ledger:
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
            "since": _iso(started),
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


# -- the scan export ----------------------------------------------------------------------


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
        total = int(_describe_table(self.ddb, self.table).get("ItemCount") or 0) or None
        self.dest.check()
        ledger = _Ledger(self.dest, self.spec.fmt)
        lease = ledger.hold(run_id, started)
        try:
            return self._run(ledger, lease, run_id, started, total)
        finally:
            lease.release()

    def _run(
        self, ledger: _Ledger, lease: Lease, run_id: str, started: float, total: int | None
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
        sink = _Sink(self.dest, ledger, run_id, self.on_event)
        writer: _Writer
        if spec.fmt == "parquet":
            writer = _ParquetWriter(sink, spec.rows_per_file, spec.row_group_rows)
        else:
            writer = _JsonLinesWriter(sink, spec.rows_per_file)
        items = scanned = deferred = out_of_range = 0
        highest: int | None = None
        try:
            with ParallelScan(self.ddb, request, spec.segments) as pages:
                for page, page_scanned in pages:
                    ready = []
                    for item in page:
                        received = _int(item.get("ReceivedAt"))
                        if received is not None and received > cutoff:
                            deferred += 1
                            continue
                        if received is not None and (highest is None or received > highest):
                            highest = received
                        if _time_out_of_range(item):
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
            raise _table_error(exc, self.table) from None
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
            "started": _iso(started),
            "finished": _iso(self.clock()),
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


# -- the native export --------------------------------------------------------------------


class NativeExport:
    """`--method native`: DynamoDB's ExportTableToPointInTime to S3, then our manifest."""

    def __init__(
        self,
        ddb: Any,
        table: str,
        dest: Destination,
        spec: ExportSpec,
        *,
        progress: Progress | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not isinstance(dest, S3Prefix):
            raise ExportError(
                f"--method native: DynamoDB exports only to S3, not to {dest.url}; "
                "use --to s3://BUCKET/PREFIX"
            )
        self.ddb = ddb
        self.table = table
        self.dest: S3Prefix = dest
        self.spec = spec
        self.progress = progress
        self.clock = clock
        self.sleep = sleep

    def run(self) -> ExportResult:
        started = self.clock()
        run_id = new_run_id(started)
        table_arn = str(_describe_table(self.ddb, self.table)["TableArn"])
        self._check_pitr()
        self.dest.check()
        self._check_not_running(table_arn)
        ledger = _Ledger(self.dest, NATIVE)
        lease = ledger.hold(run_id, started)
        try:
            return self._run(ledger, lease, run_id, started, table_arn)
        finally:
            lease.release()

    def _run(
        self, ledger: _Ledger, lease: Lease, run_id: str, started: float, table_arn: str
    ) -> ExportResult:
        t0 = time.monotonic()
        before = {o.key for o in self.dest.list(f"{NATIVE_DIR}/")}
        request: dict[str, Any] = {
            "TableArn": table_arn,
            "S3Bucket": self.dest.bucket,
            "ExportFormat": "DYNAMODB_JSON",
            "ClientToken": run_id,  # a retried request cannot start a second export
        }
        if self.dest.prefix:
            request["S3Prefix"] = self.dest.prefix
        try:
            export = self.ddb.export_table_to_point_in_time(**request)["ExportDescription"]
        except ClientError as exc:
            error = exc.response.get("Error", {})
            raise ExportError(
                f"native export of {self.table} refused: {error.get('Code')}: "
                f"{error.get('Message')}",
                error.get("Code"),
            ) from None
        export = self._wait(str(export["ExportArn"]))
        created = [o for o in self.dest.list(f"{NATIVE_DIR}/") if o.key not in before]
        if export.get("ExportStatus") != "COMPLETED":
            self.dest.delete(o.key for o in created)
            raise ExportError(
                f"native export of {self.table} {export.get('ExportStatus')}: "
                f"{export.get('FailureCode')}: {export.get('FailureMessage')}",
                export.get("FailureCode"),
            )
        aws_manifest = export.get("ExportManifest")
        if aws_manifest:
            # On AWS the export's own folder is known; keep to it, ignoring any stray object.
            folder = str(aws_manifest).rsplit("/", 1)[0]
            folder = folder[len(self.dest.prefix) + 1 :] if self.dest.prefix else folder
            created = [o for o in created if o.key.startswith(f"{folder}/")]
        data = sorted((o for o in created if "/data/" in o.key), key=lambda o: o.key)
        if not data:
            raise ExportError(
                f"native export {export['ExportArn']} completed but no data file appeared "
                f"under {self.dest.location(NATIVE_DIR + '/')}"
            )
        export_time = export.get("ExportTime")
        manifest = {
            "version": 1,
            "run_id": run_id,
            "format": NATIVE,
            "method": NATIVE,
            "table": self.table,
            "full": True,
            "export_arn": export["ExportArn"],
            "export_time": export_time.isoformat() if export_time else None,
            "aws_manifest": aws_manifest,
            "started": _iso(started),
            "finished": _iso(self.clock()),
            "items": int(export.get("ItemCount") or 0),
            "bytes": sum(o.size for o in data),
            "files": [{"key": o.key, "size": o.size, "etag": o.etag, "sha256": None} for o in data],
            "objects": sorted(o.key for o in created),
        }
        # Commit, then remove the snapshots this one replaces (same order as the scan path).
        ledger.check_commit(lease, run_id, [])
        ledger.write_json(ledger.manifest_key(run_id), manifest)
        self._replace_all_but(ledger, set(manifest["objects"]))
        return ExportResult(
            run_id,
            "datapipeline",
            NATIVE,
            "full",
            manifest["items"],
            tuple(data),
            time.monotonic() - t0,
            self.dest.location(NATIVE_DIR + "/"),
            None,
        )

    def _check_pitr(self) -> None:
        try:
            backups = self.ddb.describe_continuous_backups(TableName=self.table)
        except ClientError as exc:
            raise _table_error(exc, self.table) from None
        status = (
            backups.get("ContinuousBackupsDescription", {})
            .get("PointInTimeRecoveryDescription", {})
            .get("PointInTimeRecoveryStatus")
        )
        if status != "ENABLED":
            raise ExportError(
                f"--method native needs point-in-time recovery on {self.table}, and it is "
                f"{status or 'off'}; turn it on (billed per GB) with `aws dynamodb "
                f"update-continuous-backups --table-name {self.table} "
                "--point-in-time-recovery-specification PointInTimeRecoveryEnabled=true`, "
                "or use --method scan",
                "PointInTimeRecoveryUnavailable",
            )

    def _check_not_running(self, table_arn: str) -> None:
        request: dict[str, Any] = {"TableArn": table_arn}
        while True:
            try:
                page = self.ddb.list_exports(**request)
            except ClientError as exc:
                raise _table_error(exc, self.table) from None
            for summary in page.get("ExportSummaries", []):
                if summary.get("ExportStatus") == "IN_PROGRESS":
                    raise ExportError(
                        f"an export of {self.table} is still running ({summary['ExportArn']}); "
                        "wait for it to finish, then rerun"
                    )
            if not page.get("NextToken"):
                return
            request["NextToken"] = page["NextToken"]

    def _wait(self, arn: str) -> dict[str, Any]:
        delay = 0.2
        try:
            while True:
                export: dict[str, Any] = self.ddb.describe_export(ExportArn=arn)[
                    "ExportDescription"
                ]
                status = export.get("ExportStatus")
                if self.progress is not None:
                    self.progress.update(0, None, f"native export {status}")
                if status != "IN_PROGRESS":
                    return export
                self.sleep(delay)
                delay = min(delay * 1.5, 10.0)  # AWS exports take minutes: poll gently
        except ClientError as exc:
            raise _table_error(exc, self.table) from None
        finally:
            if self.progress is not None:
                self.progress.close()

    def _replace_all_but(self, ledger: _Ledger, keep: set[str]) -> None:
        """Every object under AWSDynamoDB/ but `keep` goes (older snapshots, and exports a
        crashed run never committed), then every manifest but the newest. Only ever called
        right after a commit, so a failed run never removes the snapshot readers use."""
        self.dest.delete(o.key for o in self.dest.list(f"{NATIVE_DIR}/") if o.key not in keep)
        runs = ledger.runs()
        self.dest.delete(ledger.manifest_key(r) for r in runs[:-1])


# -- the front door -----------------------------------------------------------------------


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
