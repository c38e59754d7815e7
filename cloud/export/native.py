"""`cloud export --method native`: DynamoDB's own export to S3, committed by our manifest.

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
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from botocore.exceptions import ClientError

from cloud.errors import ExportError, aws_code, aws_message
from cloud.export.ledger import Ledger, iso_time, new_run_id
from cloud.export.progress import Progress
from cloud.export.s3 import S3Prefix
from cloud.export.scan import describe_table, table_error
from cloud.export.spec import NATIVE, NATIVE_DIR, ExportResult, ExportSpec
from cloud.export.storage import Destination, Lease


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
        table_arn = str(describe_table(self.ddb, self.table)["TableArn"])
        self._check_pitr()
        self.dest.check()
        self._check_not_running(table_arn)
        ledger = Ledger(self.dest, NATIVE)
        lease = ledger.hold(run_id, started)
        try:
            return self._run(ledger, lease, run_id, started, table_arn)
        finally:
            lease.release()

    def _run(
        self, ledger: Ledger, lease: Lease, run_id: str, started: float, table_arn: str
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
            raise ExportError(
                f"native export of {self.table} refused: {aws_code(exc)}: {aws_message(exc)}",
                aws_code(exc) or None,
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
            "started": iso_time(started),
            "finished": iso_time(self.clock()),
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
            raise table_error(exc, self.table) from None
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
                raise table_error(exc, self.table) from None
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
            raise table_error(exc, self.table) from None
        finally:
            if self.progress is not None:
                self.progress.close()

    def _replace_all_but(self, ledger: Ledger, keep: set[str]) -> None:
        """Every object under AWSDynamoDB/ but `keep` goes (older snapshots, and exports a
        crashed run never committed), then every manifest but the newest. Only ever called
        right after a commit, so a failed run never removes the snapshot readers use."""
        self.dest.delete(o.key for o in self.dest.list(f"{NATIVE_DIR}/") if o.key not in keep)
        runs = ledger.runs()
        self.dest.delete(ledger.manifest_key(r) for r in runs[:-1])
