"""Reading the table: a parallel Scan whose memory is bounded by its segments, and what
DynamoDB's errors mean to the user."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from cloud.errors import ExportError, aws_code, aws_message
from cloud.target import aws_problem


@dataclass
class ScanPage:
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
        self._queue: queue.Queue[ScanPage] = queue.Queue()
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
                self._queue.put(ScanPage(page.get("Items", []), int(page.get("ScannedCount", 0))))
                if "LastEvaluatedKey" not in page:
                    break
                request["ExclusiveStartKey"] = page["LastEvaluatedKey"]
        except BaseException as exc:  # handed to the consuming thread, which raises it
            self._queue.put(ScanPage(error=exc))
        finally:
            self._queue.put(ScanPage(done=True))

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


def describe_table(ddb: Any, table: str) -> dict[str, Any]:
    try:
        description: dict[str, Any] = ddb.describe_table(TableName=table)["Table"]
        return description
    except ClientError as exc:
        raise table_error(exc, table) from None
    except BotoCoreError as exc:
        problem = aws_problem(exc)
        if problem is not None:
            raise ExportError(problem) from None
        raise ExportError(f"cannot reach DynamoDB for table {table}: {exc}") from None


def table_error(exc: ClientError, table: str) -> ExportError:
    code = aws_code(exc) or None
    if code == "ResourceNotFoundException":
        return ExportError(
            f"table {table} not found; is the stack up (cloud status), or is SENSOR_TABLE "
            "or --target wrong?",
            code,
        )
    return ExportError(f"reading table {table} failed: {code}: {aws_message(exc)}", code)
