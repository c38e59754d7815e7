"""How fast `cloud export` reads the table, against a raw Scan of the same table.

On the local stack's engine (dynalite) and on moto's server, both started here on free ports
of 127.0.0.1 (table_load.py's helpers) with their data in a temporary folder that is deleted
at the end, also on failure, Ctrl-C or SIGTERM. Per engine:

1. The table is filled with half the items: readings of 10 simulated sensors, as table_load
   makes them, each turned into its item by `cloud.ingest.rule.to_item` and written by raw
   BatchWriteItem (the quickest way; loading is not what is measured here). Each format is
   exported once, for the exporter's peak RSS at that size.
2. The other half is added, and in alternating rounds (the order of the sides is reversed
   every other round) each side reads the whole table once:
   - ours, per format: `cloud.export.run.run_export(Endpoint.local(port), table,
     ExportSpec(folder, fmt, full=True, settle_seconds=0))`, the call `cloud export --to
     FOLDER --format FMT --full --settle 0` makes, with its default segments, so its lease,
     ledger, staging and manifest are all in the time;
   - raw: a parallel Scan with the exporter's number of segments, one thread each on one
     client built as run_export builds its own, no Limit (the engine's 1 MB pages), the
     items counted and dropped;
   - dump: one thread, Scan page after page, every item written as a JSON line to a file.
   `--raw-limit N` adds a fourth side, the raw parallel Scan with `Limit=N`.
Every side runs in a fresh child process of its own (this file with `--worker`), so each
has the same imports and a peak RSS of its own (the kernel's VmHWM, read by the child at its
end; a child's high-water mark does not inherit its parent's). Only the side's own work is
timed: not the interpreter's start-up or its imports. The child also counts the Scan
requests it sent (a botocore event handler on the session run_export's client comes from).

moto keeps every item in Python objects and walks the whole table on every Scan request, so
it gets a smaller table: `--moto-items`.

    .venv/bin/python bench/export_scan.py [--items N] [--moto-items N] [--rounds R] [--quick]

Exit 0 once measured, 1 when the bench could not be set up or a run failed, 130 when
interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import harness
from harness import BenchError

with harness.venv_imports(__file__):
    from table_load import (
        SENSORS,
        Engine,
        load_raw,
        make_readings,
        raw_requests,
        start_dynalite,
        start_moto,
        stop_process,
    )

    from cloud.aws import LOCAL_CREDENTIALS, Endpoint
    from cloud.errors import PipelineError
    from cloud.export.spec import ExportSpec
    from cloud.table import create_table

TABLE = "SensorData"
FORMATS = ("parquet", "datapipeline")
#: The issue's goal: an export reads the table at >= 0.8 of a raw parallel Scan's rate.
GOAL_RATIO = 0.8
LOAD_THREADS = 2
#: Seconds a side may take before the bench calls it stuck: generous, the machine is shared.
WORKER_TIMEOUT = 900.0


# -- the sides, each in a child process -------------------------------------------------------


def _hwm_mib() -> float:
    """This process's peak resident memory (VmHWM), MiB; 0 where /proc is not there."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def worker(job: dict[str, Any]) -> dict[str, Any]:
    """One side's run, in this (child) process; returns its figures."""
    from cloud import aws
    from cloud.export.run import run_export

    endpoint = Endpoint.local(int(job["port"]))
    table, segments, side = str(job["table"]), int(job["segments"]), str(job["side"])
    requests = [0]

    def count(**_: Any) -> None:
        requests[0] += 1

    # run_export's client comes from this thread's session, so it inherits the handler.
    aws._session().events.register("after-call.dynamodb.Scan", count)
    if side in FORMATS:
        import pyarrow  # noqa: F401  (imported lazily by the exporter: not in the time)

        spec = ExportSpec(job["folder"], fmt=side, full=True, segments=segments, settle_seconds=0)
        start_mib = _hwm_mib()
        cpu, started = time.process_time(), time.perf_counter()
        result = run_export(endpoint, table, spec)
        seconds = time.perf_counter() - started
        items = result.items
    else:
        ddb = endpoint.client("dynamodb", max_pool_connections=max(10, segments + 2))
        request: dict[str, Any] = {"TableName": table}
        if job.get("limit"):
            request["Limit"] = int(job["limit"])
        start_mib = _hwm_mib()
        cpu, started = time.process_time(), time.perf_counter()
        if side == "dump":
            items = _dump(ddb, request, Path(job["folder"]) / "dump.jsonl")
        else:
            items = _parallel_scan(ddb, request, segments)
        seconds = time.perf_counter() - started
    return {
        "side": side,
        "items": items,
        "seconds": seconds,
        "cpu_seconds": time.process_time() - cpu,
        "requests": requests[0],
        "start_mib": start_mib,
        "peak_mib": _hwm_mib(),
    }


def _parallel_scan(ddb: Any, request: dict[str, Any], segments: int) -> int:
    counts = [0] * segments
    errors: list[BaseException] = []

    def scan(segment: int) -> None:
        kwargs = dict(request)
        if segments > 1:
            kwargs.update(Segment=segment, TotalSegments=segments)
        try:
            while True:
                page = ddb.scan(**kwargs)
                counts[segment] += len(page["Items"])
                if "LastEvaluatedKey" not in page:
                    return
                kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]
        except BaseException as exc:  # raised by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=scan, args=(s,), daemon=True) for s in range(segments)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return sum(counts)


def _dump(ddb: Any, request: dict[str, Any], path: Path) -> int:
    items = 0
    kwargs = dict(request)
    with path.open("wb", buffering=1 << 20) as out:
        while True:
            page = ddb.scan(**kwargs)
            out.write(b"".join(json.dumps(i).encode() + b"\n" for i in page["Items"]))
            items += len(page["Items"])
            if "LastEvaluatedKey" not in page:
                return items
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def run_side(engine: Engine, side: str, segments: int, root: Path, limit: int = 0) -> Run:
    """`side` as a child process: this file with --worker. Its folder is removed after."""
    folder = Path(tempfile.mkdtemp(prefix=f"{side}-", dir=root))
    port = int((engine.endpoint.url or "").rsplit(":", 1)[1])
    job = {
        "port": port,
        "table": TABLE,
        "segments": segments,
        "side": side,
        "folder": str(folder),
        "limit": limit,
    }
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(
        AWS_ACCESS_KEY_ID=LOCAL_CREDENTIALS["aws_access_key_id"],
        AWS_SECRET_ACCESS_KEY=LOCAL_CREDENTIALS["aws_secret_access_key"],
        AWS_REGION="us-east-1",
        AWS_EC2_METADATA_DISABLED="true",
    )
    argv = [sys.executable, __file__, "--worker", json.dumps(job)]
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=root,
        start_new_session=True,  # Ctrl-C reaches us alone; we stop the child
    )  # fmt: skip
    try:
        out, err = proc.communicate(timeout=WORKER_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise BenchError(
            f"{side} on {engine.name} still running after {WORKER_TIMEOUT:.0f}s"
        ) from None
    finally:
        stop_process(proc)
        shutil.rmtree(folder, ignore_errors=True)
    if proc.returncode != 0:
        raise BenchError(f"{side} on {engine.name} exited {proc.returncode}: {err.decode()}")
    figures = json.loads(out.decode().strip().splitlines()[-1])
    return Run(**figures)


@dataclass
class Run:
    side: str
    items: int
    seconds: float
    cpu_seconds: float  # the child's, all its threads, user and system
    requests: int
    start_mib: float
    peak_mib: float

    @property
    def rate(self) -> float:
        return self.items / self.seconds


# -- one engine ------------------------------------------------------------------------------


@dataclass
class Figures:
    engine: str
    items: int
    half: dict[str, Run] = field(default_factory=dict)  # ours, per format, at items // 2
    rounds: list[dict[str, Run]] = field(default_factory=list)  # every side, at items

    def median(self, pick: Callable[[dict[str, Run]], float]) -> float:
        return statistics.median(pick(r) for r in self.rounds)


def load(engine: Engine, first: int, count: int) -> float:
    """Readings `first`..`first+count` (10 sensors) into TABLE by raw BatchWriteItem: s."""
    per_sensor, offset = count // SENSORS, first // SENSORS
    readings = make_readings("sensor-", offset + per_sensor)[offset * SENSORS :]
    loaded = load_raw(engine.endpoint, TABLE, raw_requests(readings), LOAD_THREADS)
    return loaded.seconds


def measure(
    engine: Engine, items: int, rounds: int, segments: int, limit: int, root: Path
) -> Figures:
    name = engine.name
    create_table(engine.endpoint.client("dynamodb"), TABLE)
    figures = Figures(name, items)
    half = items // 2
    seconds = load(engine, 0, half)
    print(f"== {name}: loaded {half:,} items in {seconds:.1f}s (raw BatchWriteItem)", flush=True)
    for fmt in FORMATS:
        run = run_side(engine, fmt, segments, root)
        check(run, half, name)
        figures.half[fmt] = run
        print(
            f"{name} at {half:,}: ours {fmt} {run.rate:,.0f} items/s ({run.seconds:.1f}s, "
            f"{run.requests} Scan requests), peak RSS {run.peak_mib:.0f} MiB",
            flush=True,
        )
    seconds = load(engine, half, items - half)
    print(f"== {name}: loaded {items - half:,} more in {seconds:.1f}s; {items:,} now", flush=True)
    sides = [*FORMATS, "raw", "dump"] + ([f"raw-limit-{limit}"] if limit else [])
    for r in range(rounds):
        runs: dict[str, Run] = {}
        for side in sides if r % 2 == 0 else sides[::-1]:
            kind = "raw" if side.startswith("raw") else side
            run = run_side(engine, kind, segments if kind != "dump" else 1, root,
                           limit if side != "raw" and kind == "raw" else 0)  # fmt: skip
            check(run, items, name)
            runs[side] = run
        figures.rounds.append(runs)
        raw = runs["raw"]
        print(
            f"round {r + 1}: "
            + ", ".join(f"{s} {x.rate:,.0f}/s ({x.requests} req)" for s, x in runs.items())
            + "; ours/raw "
            + ", ".join(f"{fmt} {runs[fmt].rate / raw.rate:.2f}" for fmt in FORMATS),
            flush=True,
        )
    return figures


def check(run: Run, expected: int, engine: str) -> None:
    if run.items != expected:
        raise BenchError(f"{run.side} on {engine} read {run.items:,} items, not {expected:,}")


# -- the report ------------------------------------------------------------------------------


def report(figs: Sequence[Figures], rounds: int, segments: int, limit: int) -> None:
    def row(label: str, cells: list[str]) -> None:
        print(f"{label:<46}" + "".join(f"{c:>20}" for c in cells))

    def each(fmt: Callable[[Figures], str]) -> list[str]:
        return [fmt(f) for f in figs]

    def rate(side: str) -> Callable[[Figures], str]:
        return lambda f: f"{f.median(lambda r: r[side].rate):,.0f}"

    def requests(side: str) -> Callable[[Figures], str]:
        return lambda f: f"{f.median(lambda r: r[side].requests):.0f}"

    def cpu(side: str) -> Callable[[Figures], str]:
        return lambda f: f"{f.median(lambda r: r[side].cpu_seconds / r[side].items * 1e6):.0f}"

    def ratio(side: str, base: str) -> Callable[[Figures], str]:
        return lambda f: f"{f.median(lambda r: r[side].rate / r[base].rate):.2f}"

    def peaks(side: str) -> Callable[[Figures], str]:
        return lambda f: (
            f"{f.half[side].peak_mib:.0f} -> {f.median(lambda r: r[side].peak_mib):.0f}"
        )

    print(f"\n== summary: medians of {rounds} round(s); {segments} segments for ours and raw")
    row("", each(lambda f: f.engine))
    row("table size, items", each(lambda f: f"{f.items:,}"))
    row(f"raw parallel Scan ({segments} seg), items/s", each(rate("raw")))
    row("  Scan requests", each(requests("raw")))
    row("  CPU us per item (the child's)", each(cpu("raw")))
    if limit:
        row(f"raw parallel Scan, Limit {limit}, items/s", each(rate(f"raw-limit-{limit}")))
        row("  Scan requests", each(requests(f"raw-limit-{limit}")))
    row("scan-and-dump (1 thread, JSON lines), items/s", each(rate("dump")))
    row("  CPU us per item", each(cpu("dump")))
    for fmt in FORMATS:
        row(f"ours, --format {fmt}, items/s", each(rate(fmt)))
        row("  Scan requests", each(requests(fmt)))
        row("  CPU us per item", each(cpu(fmt)))
        row("  ratio ours/raw (median of rounds)", each(ratio(fmt, "raw")))
        row("  ratio ours/dump", each(ratio(fmt, "dump")))
        row("  peak RSS MiB at N/2 -> N", each(peaks(fmt)))
    row("raw / dump peak RSS MiB at N", each(
        lambda f: f"{f.median(lambda r: r['raw'].peak_mib):.0f} / "
        f"{f.median(lambda r: r['dump'].peak_mib):.0f}"
    ))  # fmt: skip
    row("a child after its imports, MiB", each(lambda f: f"{f.rounds[0]['raw'].start_mib:.0f}"))
    for f in figs:
        for fmt in FORMATS:
            got = statistics.median(r[fmt].rate / r["raw"].rate for r in f.rounds)
            harness.print_goal(
                f"export >= {GOAL_RATIO} of raw scan, --format {fmt} on {f.engine} at "
                f"{f.items:,} items",
                f"{got:.2f}",
                got >= GOAL_RATIO,
            )


# -- main ------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--items", type=int, help="table size on dynalite [200,000]")
    parser.add_argument("--moto-items", type=int, help="table size on moto [100,000]")
    parser.add_argument("--rounds", type=int, help="rounds of every side per engine [3]")
    parser.add_argument("--segments", type=int, help="ours and raw [the exporter's default]")
    parser.add_argument("--raw-limit", type=int, default=0, help="add a raw Scan with Limit N")
    parser.add_argument("--no-moto", action="store_true", help="dynalite only")
    parser.add_argument("--no-dynalite", action="store_true", help="moto only")
    parser.add_argument("--quick", action="store_true", help="a small run (20,000 / 10,000 items)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return 0
    defaults = (
        {"items": 20_000, "moto_items": 10_000, "rounds": 3}
        if args.quick
        else {"items": 200_000, "moto_items": 100_000, "rounds": 3}
    )
    harness.default_sizes(args, defaults)
    if args.segments is None:
        args.segments = ExportSpec("unused").segments
    unit = 2 * SENSORS * 25  # two halves of whole 25-item batches of the 10 sensors
    harness.require_multiples(parser, args, ("items", "moto_items"), unit)
    if args.rounds < 1 or args.segments < 1 or args.raw_limit < 0:
        parser.error("--rounds and --segments: at least 1; --raw-limit: 0 (none) or more")
    if args.no_moto and args.no_dynalite:
        parser.error("--no-moto with --no-dynalite leaves nothing to measure")

    with contextlib.ExitStack() as stack:
        root = harness.temp_folder(stack, "bench-export-scan-")
        print(
            f"export_scan: dynalite {'skipped' if args.no_dynalite else f'{args.items:,}'}, "
            f"moto {'skipped' if args.no_moto else f'{args.moto_items:,}'} items; "
            f"{args.rounds} round(s), {args.segments} segments; data in {root}",
            flush=True,
        )
        started = time.perf_counter()
        figs: list[Figures] = []
        try:
            if not args.no_dynalite:
                engine = start_dynalite(root, stack)
                figs.append(
                    measure(engine, args.items, args.rounds, args.segments, args.raw_limit,
                            root)
                )  # fmt: skip
            if not args.no_moto:
                engine = start_moto(root, stack)
                figs.append(
                    measure(engine, args.moto_items, args.rounds, args.segments,
                            args.raw_limit, root)
                )  # fmt: skip
        except (PipelineError, OSError) as exc:
            raise BenchError(str(exc)) from exc
        report(figs, args.rounds, args.segments, args.raw_limit)
        harness.print_wall_time(started)
    return 0


if __name__ == "__main__":
    sys.exit(harness.run(main, __file__))
