"""The two file writers of a scan export (Data Pipeline JSON lines, Parquet), and the sink
that stages each finished file whole under the run's staging area."""

from __future__ import annotations

import contextlib
import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Protocol

from cloud.errors import PipelineError
from cloud.export import layout
from cloud.export.encoding import datapipeline_line, parquet_row, parquet_schema, utc_day
from cloud.export.ledger import DataFile, Ledger
from cloud.export.storage import Destination, PendingFile

log = logging.getLogger(__name__)

#: `on_event(kind, detail)`: "file" with a key once a file is staged, "commit" with a run id.
EventHook = Callable[[str, str], None]


class Sink:
    """The data files of one run: built on local disk, then staged whole, one by one."""

    def __init__(
        self, dest: Destination, ledger: Ledger, run_id: str, on_event: EventHook | None
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


class Writer(Protocol):
    def write(self, items: list[dict[str, Any]]) -> int: ...

    def close(self) -> None: ...

    def abort(self) -> None: ...


class JsonLinesWriter:
    """Data Pipeline lines, a new file every `rows_per_file` lines."""

    def __init__(self, sink: Sink, rows_per_file: int) -> None:
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


class ParquetWriter:
    """Typed columns, files per UTC day, row groups of about `row_group_rows`.

    Rows wait as Python lists only in chunks of a few thousand (a row there costs ~250 bytes,
    in Arrow ~45), and as Arrow batches until a row group is full. Memory is bounded by
    2 x chunk Python rows and 2 x row_group_rows Arrow rows in all partitions together, and
    by `max_open` open files (the least recently used is finished first, so a day can get
    more than one file per run)."""

    CHUNK_ROWS = 8_192

    def __init__(
        self, sink: Sink, rows_per_file: int, row_group_rows: int, max_open: int = 32
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
            row = parquet_row(item)
            if any(row[name] is None for name in self._required):
                self.skipped += 1
                continue
            day = utc_day(row["time"], self._days)
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
