"""One export per destination and format at a time (issue 12, item 4).

Before the lease, a second export's settle() took the first one's staging area for a crashed
run's and deleted it: the first then committed a manifest that counted rows no file held,
and moved the watermark past them. Runs are interleaved with the export's own hooks, on a
thread, so the overlap is exact rather than hoped for.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from cloud.aws import Endpoint
from cloud.errors import ExportError
from cloud.export.run import run_export
from cloud.export.spec import ExportResult, ExportSpec
from tests.cloud.test_export import (
    DATA,
    assert_no_leftovers,
    canonical,
    data_lines,
    export,
    from_datapipeline,
    load,
    make_items,
    manifests,
    s3_keys,
    table_items,
)

LEASE = "_manifests/datapipeline/lease"


def exported_rows(aws: Endpoint, dest: str) -> list[str]:
    """Every data line under the export, read as a query would."""
    if not dest.startswith("s3://"):
        return data_lines(Path(dest))
    bucket, _, prefix = dest.removeprefix("s3://").partition("/")
    s3 = aws.client("s3")
    lines: list[str] = []
    for key in sorted(s3_keys(s3, bucket, f"{prefix}/{DATA}/")):
        lines.extend(s3.get_object(Bucket=bucket, Key=key)["Body"].read().decode().splitlines())
    return lines


@pytest.fixture(params=["folder", "s3"])
def destination(request: pytest.FixtureRequest, aws: Endpoint, table: str, tmp_path: Path) -> str:
    if request.param == "folder":
        return str(tmp_path / "export")
    bucket = f"lease-{table.lower()}"
    aws.client("s3").create_bucket(Bucket=bucket)
    return f"s3://{bucket}/site"


class PausedExport:
    """An export on a thread that stops once it has staged its first file (or has ended)
    until `finish()` lets it go on."""

    def __init__(self, aws: Endpoint, table: str, destination: str) -> None:
        self.spec = ExportSpec(destination, segments=1, settle_seconds=0)
        self.aws, self.table = aws, table
        self.reached = threading.Event()
        self.go = threading.Event()
        self.outcome: ExportResult | BaseException | None = None
        self.thread = threading.Thread(target=self._run)
        self.thread.start()
        assert self.reached.wait(30), "the export neither staged a file nor ended"

    def _hook(self, kind: str, detail: str) -> None:
        if kind == "file" and not self.reached.is_set():
            self.reached.set()
            assert self.go.wait(30), "the test never let the export go on"

    def _run(self) -> None:
        try:
            self.outcome = run_export(self.aws, self.table, self.spec, on_event=self._hook)
        except BaseException as exc:
            self.outcome = exc
        finally:
            self.reached.set()

    def finish(self) -> ExportResult | BaseException | None:
        self.go.set()
        self.thread.join(60)
        assert not self.thread.is_alive()
        return self.outcome


def test_a_second_export_while_one_runs_is_refused_and_no_row_is_lost(
    aws: Endpoint, table: str, destination: str
) -> None:
    load(aws, table, make_items(per_sensor=50))
    export(aws, table, destination)
    load(aws, table, make_items(per_sensor=30, start=1000))
    first = PausedExport(aws, table, destination)  # has staged the 90 new rows
    # The second sees these too; without the lease it staged them, then the first's commit
    # took its staging area for a crashed run's and deleted it, and the second committed a
    # manifest and a watermark for rows no file held.
    load(aws, table, make_items(per_sensor=30, start=2000))
    second = PausedExport(aws, table, destination)
    try:
        done_first = first.finish()
    finally:
        done_second = second.finish()
    export(aws, table, destination)

    lines = exported_rows(aws, destination)
    assert {canonical(from_datapipeline(x)) for x in lines} == table_items(aws, table)
    assert len(lines) == 330  # every row, and none twice
    assert isinstance(done_first, ExportResult) and done_first.items == 90, done_first
    assert isinstance(done_second, ExportError), done_second
    message = str(done_second)
    assert message.startswith(f"another export to {destination} (datapipeline) is running since ")
    assert "\n" not in message
    if destination.startswith("s3://"):
        assert f"aws s3 rm {destination}/{LEASE}" in message  # how to clear a dead one's
    else:
        assert "when that process ends" in message


def test_a_run_whose_staged_files_vanished_does_not_commit(
    aws: Endpoint, table: str, tmp_path: Path
) -> None:
    """The commit checks its staged files first: anything else deleting them (an older
    cloud export without the lease, a person) fails the run instead of losing its rows."""
    load(aws, table, make_items(sensors=1, per_sensor=300))

    def remove_staging(kind: str, detail: str) -> None:
        if kind == "file":
            shutil.rmtree(tmp_path / "_manifests/datapipeline/staging")

    spec = ExportSpec(str(tmp_path), rows_per_file=100, segments=1, settle_seconds=0)
    with pytest.raises(ExportError, match=r"staged file\(s\) of this run vanished"):
        run_export(aws, table, spec, on_event=remove_staging)
    assert manifests(tmp_path) == []
    assert not (tmp_path / "_manifests/datapipeline/watermark.json").exists()
    assert_no_leftovers(tmp_path)

    rerun = export(aws, table, tmp_path)
    assert rerun.items == 300 and len(data_lines(tmp_path)) == 300


def test_an_expired_s3_lease_of_a_dead_export_is_taken_over(aws: Endpoint, table: str) -> None:
    load(aws, table, make_items(sensors=1, per_sensor=10))
    s3 = aws.client("s3")
    bucket = f"stale-{table.lower()}"
    s3.create_bucket(Bucket=bucket)

    def lease_of(run_id: str, expires_at: float) -> None:
        body: dict[str, Any] = {"run_id": run_id, "since": "2025-01-01T00:00:00.000Z"}
        body["expires_at"] = expires_at
        s3.put_object(Bucket=bucket, Key=f"site/{LEASE}", Body=json.dumps(body).encode())

    lease_of("alive", time.time() + 600)  # a running export's, renewed as it goes
    with pytest.raises(ExportError, match=r"running since 2025-01-01T00:00:00\.000Z"):
        export(aws, table, f"s3://{bucket}/site")
    assert f"site/{DATA}/" not in "".join(s3_keys(s3, bucket))

    lease_of("dead", time.time() - 1)  # a crashed export's: it stopped renewing
    result = export(aws, table, f"s3://{bucket}/site")
    assert result.items == 10 and len(exported_rows(aws, f"s3://{bucket}/site")) == 10
    assert f"site/{LEASE}" not in s3_keys(s3, bucket)  # released after the run
