"""How fast our write path fills the SensorData table, and how fast `cloud readings` reads it.

On the local stack's engine (dynalite, DynamoDB's API on LevelDB) and, for comparison, on
moto's server, both started here on free ports of 127.0.0.1 with their data in a temporary
folder that is deleted at the end, also on failure, Ctrl-C or SIGTERM. Per engine:

1. Load rate, ours against a raw baseline, in alternating rounds (which side goes first
   alternates; each round has sensor ids of its own, so every item is a new key) on a fixed
   sample, each side into a table of its own on the same engine:
   - ours: the ingest worker itself, `Ingest._work`, fed through its link's `_on_message` (the
     callback paho calls) with the JSON payloads a fleet sends. So each message goes
     through `cloud.ingest.rule.to_item` (payload checks, the rule's mapping, ReceivedAt = now),
     the duplicate check, 25-item batches and `BatchWriter.write` (BatchWriteItem, retrying
     throttling and UnprocessedItems with ingest's backoff). Only MQTT is left out: the
     inbox is filled before the clock starts (on the network thread, in ingest), and this
     thread stands in for the network thread, taking the acks and receipts the writer
     queues (without sending them). These are private names of cloud.ingest: a change
     there breaks this bench loudly, never silently.
   - raw: plain boto3 `batch_write_item`, 25 prebuilt items per call (built by the same
     `to_item` beforehand, so the items are identical), UnprocessedItems resent at once.
   Both use the same client config (`cloud.aws.Endpoint.local(port).client("dynamodb")`)
   and `--threads` [1] threads a side. Each ingest instance keeps up to its `writers` (4)
   BatchWriteItem calls in flight, so with one thread ours has four calls in flight
   against raw's one: bench/ingest.py compares them at equal concurrency. `--threads N`
   models N ingest instances sharing the load (one Ingest each, messages dealt
   round-robin as a shared subscription does), in one process, so they share one GIL,
   which real ingest processes would not.
2. The full load: `--items` readings (10 sensors, one reading a second each, in the order a
   fleet sends them) into SensorData with our path alone, with its rate as it goes.
3. Reads of that table: `query_readings(..., limit=100)` (what `cloud readings --id X
   --limit 100` runs), rows materialised, for a random sensor, p50 and p99; and on
   dynalite the real command as a child process, Python start-up included:
   `python -m cloud readings --id sensor-3 --limit 100 --target aws --endpoint-url URL` with
   SENSOR_TABLE set, so it looks up no CloudFormation stack.

moto is slow and holds everything in Python objects (its Query walks every item of the
table), so it gets smaller sizes: `--moto-items`, `--moto-sample`, `--moto-queries`. Every
figure says at what table size it was measured.

    .venv/bin/python bench/table_load.py [--items N] [--moto-items N] [--rounds R] [--quick]

Exit 0 once measured, 1 when the bench could not be set up or a run failed, 130 when
interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import harness
from harness import BenchError

with harness.venv_imports(__file__):
    import paho.mqtt.client as mqtt
    import psutil

    from cloud.aws import LOCAL_CREDENTIALS, Endpoint
    from cloud.errors import PipelineError
    from cloud.ingest.deadletter import DeadLetterFile
    from cloud.ingest.rule import to_item
    from cloud.ingest.service import Ingest
    from cloud.ingest.settings import MAX_BATCH_WRITE_ITEMS as MAX_BATCH
    from cloud.ingest.settings import IngestSettings
    from cloud.local import table_engine
    from cloud.local.moto import MotoServer
    from cloud.local.ports import free_port, wait_listening
    from cloud.table import Row, create_table, query_readings
    from device.payload import Reading
    from device.sensors.simulated import SimulatedSensor

HOST = "127.0.0.1"
SENSORS = 10
FIRST_TS_MS = 1_764_345_600_000  # 2025-11-28T16:00:00Z
INTERVAL_MS = 1000  # one reading a second per sensor; ts gets 0-49 ms of jitter on top
TABLE = "SensorData"
OURS_TABLE = "BenchOurs"
RAW_TABLE = "BenchRaw"
WARMUP_TABLE = "BenchWarmup"
WARMUP_ITEMS = 2500
QUERY_LIMIT = 100
CLI_SENSOR = "sensor-3"
#: The issue's goal for `cloud readings --limit 100` on a table of 1,000,000 readings.
GOAL_P99_MS = 100.0
#: The ingest instances' broker port: never connected to (MQTT is left out, see above).
UNUSED_PORT = 1

Message = tuple[str, bytes]  # (topic, payload), as the broker delivers it
Requests = list[list[dict[str, Any]]]  # BatchWriteItem request lists of 25 puts


# -- the readings --------------------------------------------------------------------------


def make_readings(prefix: str, per_sensor: int) -> list[Message]:
    """SENSORS simulated sensors PREFIX1..PREFIX10, `per_sensor` readings each, as a fleet
    sends them: every sensor's reading of one second, then the next second's."""
    ids = [f"{prefix}{n}" for n in range(1, SENSORS + 1)]
    sensors = [SimulatedSensor(sensor_id) for sensor_id in ids]
    topics = [f"sensors/{sensor_id}/data" for sensor_id in ids]
    jitter = random.Random(prefix)
    out: list[Message] = []
    for seq in range(per_sensor):
        second = FIRST_TS_MS + seq * INTERVAL_MS
        for sensor_id, sensor, topic in zip(ids, sensors, topics, strict=True):
            ts = second + jitter.randrange(50)
            reading = Reading(sensor_id, ts, seq, sensor.read()["temperature"])
            out.append((topic, reading.to_payload()))
    return out


def raw_requests(messages: Sequence[Message]) -> Requests:
    """The same readings as prebuilt BatchWriteItem put lists (items by our mapping)."""
    return put_batches([to_item(topic, payload) for topic, payload in messages])


def put_batches(items: Sequence[dict[str, Any]]) -> Requests:
    """Items as BatchWriteItem put lists of 25, in their order."""
    puts = [{"PutRequest": {"Item": item}} for item in items]
    return [puts[i : i + MAX_BATCH] for i in range(0, len(puts), MAX_BATCH)]


# -- loading -------------------------------------------------------------------------------


@dataclass
class Load:
    items: int
    seconds: float
    calls: int = 0  # BatchWriteItem calls that reached the engine
    unprocessed: int = 0  # items the engine handed back as UnprocessedItems
    sdk_retries: int = 0  # attempts boto3 repeated by itself (throttling, 5xx)
    ingest_retries: int = 0  # ours only: the writer's own retries (throttled, unprocessed, no link)

    @property
    def rate(self) -> float:
        return self.items / self.seconds

    def anomalies(self) -> str:
        """What went other than plainly: empty when nothing did."""
        parts = [
            f"{n} {what}"
            for n, what in (
                (self.unprocessed, "UnprocessedItems"),
                (self.sdk_retries, "boto3 retries"),
                (self.ingest_retries, "ingest retries"),
            )
            if n
        ]
        return ", ".join(parts)


class CountingWriter:
    """The boto3 client ingest writes with, counting what the engine answered. A
    DynamoWriter (ingest takes one for fault injection); one Python call per 25 items."""

    def __init__(self, client: Any, table: str) -> None:
        self._client = client
        self._table = table
        self.calls = 0
        self.unprocessed = 0
        self.sdk_retries = 0

    def batch_write_item(self, **kwargs: Any) -> dict[str, Any]:
        answer: dict[str, Any] = self._client.batch_write_item(**kwargs)
        self.calls += 1
        self.unprocessed += len(answer.get("UnprocessedItems", {}).get(self._table, []))
        self.sdk_retries += int(answer.get("ResponseMetadata", {}).get("RetryAttempts", 0))
        return answer


def _deadline(items: int, rate_floor: float = 300.0) -> float:
    """Seconds a load may take before we call it stuck: generous, the machine is shared."""
    return 60.0 + items / rate_floor


def load_ours(
    endpoint: Endpoint,
    table: str,
    messages: Sequence[Message],
    threads: int,
    root: Path,
    label: str = "",
) -> Load:
    """`messages` into `table` by ingest's worker, one Ingest per thread (see the module doc).
    With a label, prints the rate every tenth of the way."""
    ingests: list[Ingest] = []
    writers: list[CountingWriter] = []
    for k in range(threads):
        writer = CountingWriter(endpoint.client("dynamodb"), table)
        ingest = Ingest(
            IngestSettings(
                host=HOST,
                port=UNUSED_PORT,
                tls=None,
                endpoint=endpoint,
                table=table,
                dead_letter=root / f"dead-letter-{table}-{k}.jsonl",
                client_id=f"bench-ingest-{k}",
                report_every=3600.0,
            ),
            ddb=writer,
        )
        # What paho's network thread does per message: our callback puts it in the inbox.
        for i in range(k, len(messages), threads):
            topic, payload = messages[i]
            msg = mqtt.MQTTMessage(mid=i % 65535 + 1, topic=topic.encode())
            msg.payload = payload
            msg.qos = 1
            ingest._link._on_message(ingest._link.client, None, msg)
        ingests.append(ingest)
        writers.append(writer)

    stop = threading.Event()
    errors: list[BaseException] = []

    def work(ingest: Ingest, writer: CountingWriter) -> None:
        dead = DeadLetterFile(ingest.settings.dead_letter)
        try:
            ingest._work(stop, writer, dead)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)
        finally:
            dead.close()

    workers = [
        threading.Thread(target=work, args=(i, w), name=f"bench-ingest-{k}", daemon=True)
        for k, (i, w) in enumerate(zip(ingests, writers, strict=True))
    ]
    total = len(messages)
    acked = 0
    step = max(total // 10, 1)
    next_report = step
    last = (0.0, 0)
    limit = _deadline(total)
    started = time.perf_counter()
    for worker in workers:
        worker.start()
    try:
        while True:
            # The network thread's part of the job: take the acks and receipts the writer queued.
            for ingest in ingests:
                while ingest._acks:
                    ingest._acks.popleft()
                    acked += 1
                ingest._receipts.clear()
            written = sum(i.stats.written for i in ingests)
            now = time.perf_counter() - started
            if label and written >= next_report:
                print(
                    f"  {label}: {written:>9,} written in {now:6.1f}s, "
                    f"{written / now:,.0f}/s (last {written - last[1]:,}: "
                    f"{(written - last[1]) / (now - last[0]):,.0f}/s)",
                    flush=True,
                )
                last = (now, written)
                next_report += step
            if written >= total:
                break
            if errors:
                raise BenchError(f"ingest's worker failed writing to {table}: {errors[0]!r}")
            if now > limit:
                raise BenchError(f"loading {table} stuck: {written} of {total} in {now:.0f}s")
            time.sleep(0.002)
        seconds = time.perf_counter() - started
    finally:
        stop.set()
        for worker in workers:
            worker.join(15)
    for ingest in ingests:
        acked += len(ingest._acks)
    stats = [i.stats for i in ingests]
    dead = sum(s.dead_lettered for s in stats)
    duplicates = sum(s.duplicates for s in stats)
    if dead or duplicates or acked != total:
        raise BenchError(
            f"ingest into {table}: {dead} dead-lettered, {duplicates} duplicates, "
            f"{acked} of {total} acknowledged: the bench's readings should all be new and valid"
        )
    return Load(
        items=total,
        seconds=seconds,
        calls=sum(w.calls for w in writers),
        unprocessed=sum(w.unprocessed for w in writers),
        sdk_retries=sum(w.sdk_retries for w in writers),
        ingest_retries=sum(s.retries for s in stats),
    )


def load_raw(endpoint: Endpoint, table: str, requests: Requests, threads: int) -> Load:
    """Prebuilt put lists into `table`, plain boto3, `threads` threads of one client each."""
    stop = threading.Event()
    clients = [endpoint.client("dynamodb") for _ in range(threads)]
    parts = [requests[k::threads] for k in range(threads)]
    tallies = [[0, 0, 0] for _ in range(threads)]  # calls, unprocessed, boto3 retries
    errors: list[BaseException] = []

    def work(k: int) -> None:
        client, tally = clients[k], tallies[k]
        try:
            for puts in parts[k]:
                pending = puts
                while pending:
                    if stop.is_set():
                        return
                    answer = client.batch_write_item(RequestItems={table: pending})
                    pending = answer.get("UnprocessedItems", {}).get(table, [])
                    tally[0] += 1
                    tally[1] += len(pending)
                    tally[2] += int(answer["ResponseMetadata"].get("RetryAttempts", 0))
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    workers = [
        threading.Thread(target=work, args=(k,), name=f"bench-raw-{k}", daemon=True)
        for k in range(threads)
    ]
    items = sum(len(puts) for puts in requests)
    limit = _deadline(items)
    started = time.perf_counter()
    for worker in workers:
        worker.start()
    try:
        for worker in workers:
            while worker.is_alive():
                worker.join(0.1)
                if time.perf_counter() - started > limit:
                    raise BenchError(f"raw load into {table} stuck after {limit:.0f}s")
        seconds = time.perf_counter() - started
    finally:
        stop.set()  # a load that failed or was interrupted: its threads stop at their next call
    if errors:
        raise BenchError(f"raw batch_write_item into {table} failed: {errors[0]!r}")
    return Load(
        items=items,
        seconds=seconds,
        calls=sum(t[0] for t in tallies),
        unprocessed=sum(t[1] for t in tallies),
        sdk_retries=sum(t[2] for t in tallies),
    )


# -- reading -------------------------------------------------------------------------------


def check_rows(rows: list[Row], sensor_id: str, per_sensor: int) -> None:
    expected = min(QUERY_LIMIT, per_sensor)
    if len(rows) != expected or any(r.sensor_id != sensor_id for r in rows):
        raise BenchError(f"query for {sensor_id}: {len(rows)} rows, expected {expected}")
    seqs = [r.seq for r in rows]
    if seqs != list(range(per_sensor - 1, per_sensor - 1 - expected, -1)):
        raise BenchError(f"query for {sensor_id}: not the newest {expected} readings, in order")


def time_queries(
    endpoint: Endpoint, table: str, per_sensor: int, repeats: int, seed: int
) -> list[float]:
    """Milliseconds per `list(query_readings(..., limit=100))` for a random sensor."""
    ddb = endpoint.client("dynamodb")
    ids = [f"sensor-{n}" for n in range(1, SENSORS + 1)]
    check_rows(list(query_readings(ddb, table, ids[0], limit=QUERY_LIMIT)), ids[0], per_sensor)
    rng = random.Random(seed)
    out: list[float] = []
    for _ in range(repeats):
        sensor_id = rng.choice(ids)
        started = time.perf_counter()
        rows = list(query_readings(ddb, table, sensor_id, limit=QUERY_LIMIT))
        out.append((time.perf_counter() - started) * 1000)
        check_rows(rows, sensor_id, per_sensor)
    return out


def percentile(samples: Sequence[float], pct: int) -> float:
    if len(samples) == 1:
        return samples[0]
    return statistics.quantiles(samples, n=100, method="inclusive")[pct - 1]


@dataclass
class Cli:
    argv: list[str]
    walls: list[float]  # s, `cloud readings`, spawn to exit
    startup: list[float]  # s, `python -m cloud --help`: interpreter and CLI imports alone


def time_cli(url: str, table: str, per_sensor: int, runs: int, cwd: Path) -> Cli:
    """The real `cloud readings` as a child process, against the engine at `url`."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("AWS_") and k not in ("CLOUD_TARGET", "SENSOR_TABLE", "SENSOR_STACK")
    }
    env.update(
        SENSOR_TABLE=table,
        # "testing", as for every loopback endpoint (cloud.aws).
        AWS_ACCESS_KEY_ID=LOCAL_CREDENTIALS["aws_access_key_id"],
        AWS_SECRET_ACCESS_KEY=LOCAL_CREDENTIALS["aws_secret_access_key"],
        AWS_REGION="us-east-1",
        AWS_EC2_METADATA_DISABLED="true",
    )
    prefix = [sys.executable, "-m", "cloud"]
    argv = [*prefix, "readings", "--id", CLI_SENSOR, "--limit", str(QUERY_LIMIT)]
    argv += ["--target", "aws", "--endpoint-url", url]
    expected = 2 + min(QUERY_LIMIT, per_sensor)  # a header and its rule, then a reading a line

    def run(command: list[str]) -> tuple[float, str]:
        started = time.perf_counter()
        # cwd: a folder no local stack runs from, so nothing is found there by accident.
        done = subprocess.run(
            command, cwd=cwd, env=env, capture_output=True, text=True, timeout=120, check=False
        )
        wall = time.perf_counter() - started
        if done.returncode != 0:
            raise BenchError(f"{' '.join(command[1:])} exited {done.returncode}: {done.stderr}")
        return wall, done.stdout

    walls, startup = [], []
    for _ in range(runs):
        startup.append(run([*prefix, "--help"])[0])
        wall, out = run(argv)
        lines = out.splitlines()
        if len(lines) != expected or not lines[2].rstrip().endswith(str(per_sensor - 1)):
            raise BenchError(f"cloud readings printed {len(lines)} lines, expected {expected}")
        walls.append(wall)
    return Cli(argv, walls, startup)


# -- engines -------------------------------------------------------------------------------


def memory_mib(pid: int) -> tuple[float, float]:
    """(current, peak) resident memory of a process: VmRSS and the kernel's high-water
    mark VmHWM (per process image, so not inherited from us), psutil's RSS elsewhere."""
    try:
        fields = {}
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                fields[key] = int(value.split()[0]) / 1024  # kB
        return fields["VmRSS"], fields["VmHWM"]
    except (OSError, KeyError, ValueError):
        rss = psutil.Process(pid).memory_info().rss / 2**20
        return rss, rss


def folder_mib(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass
class Engine:
    name: str
    endpoint: Endpoint
    pid: int
    data: Path | None  # its data folder, when it has one


def start_dynalite(root: Path, stack: contextlib.ExitStack) -> Engine:
    port = free_port(HOST)
    data, log_path = root / "dynalite", root / "dynalite.log"
    data.mkdir()
    argv = table_engine.command(port, data)
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
    stack.callback(stop_process, proc)
    wait_listening(port, proc, "dynalite", str(log_path), timeout=30)
    return Engine("dynalite", Endpoint.local(port), proc.pid, data)


def start_moto(root: Path, stack: contextlib.ExitStack) -> Engine:
    moto = MotoServer(free_port(HOST), root / "moto.log")
    stack.callback(moto.stop)  # before start(): a server that never listened is stopped too
    moto.start()
    assert moto.process is not None
    return Engine("moto", Endpoint.local(moto.port), moto.process.pid, None)


# -- one engine's figures --------------------------------------------------------------------


@dataclass
class Figures:
    engine: str
    items: int = 0  # in SensorData when it was queried
    sample: int = 0
    rounds: list[tuple[Load, Load]] = field(default_factory=list)  # (ours, raw)
    full: Load | None = None
    queries: list[float] = field(default_factory=list)
    cli: Cli | None = None
    rss: tuple[float, float] = (0.0, 0.0)
    disk_mib: float | None = None

    def median(self, pick: Callable[[tuple[Load, Load]], float]) -> float:
        return statistics.median(pick(r) for r in self.rounds)


def measure(
    engine: Engine,
    full: Sequence[Message],
    sample: int,
    rounds: int,
    repeats: int,
    cli_runs: int,
    threads: int,
    root: Path,
) -> Figures:
    name, endpoint = engine.name, engine.endpoint
    ddb = endpoint.client("dynamodb")
    for table in (TABLE, OURS_TABLE, RAW_TABLE, WARMUP_TABLE):
        create_table(ddb, table)
    # Untimed: each side's first calls (connections, boto3's lazily built serializers,
    # the engine's first allocations) would otherwise land on whichever goes first.
    warm = make_readings("warmup-sensor-", WARMUP_ITEMS // SENSORS)
    load_ours(endpoint, WARMUP_TABLE, warm, threads, root)
    load_raw(endpoint, WARMUP_TABLE, raw_requests(make_readings("warmup2-", 250)), threads)

    figures = Figures(name, sample=sample)
    print(f"\n== {name}: ours against raw, {sample:,} items a side a round", flush=True)
    for r in range(rounds):
        messages = make_readings(f"r{r + 1}-sensor-", sample // SENSORS)
        requests = raw_requests(messages)
        loads: dict[str, Load] = {}
        for side in ("raw", "ours") if r % 2 == 0 else ("ours", "raw"):
            if side == "ours":
                loads[side] = load_ours(endpoint, OURS_TABLE, messages, threads, root)
            else:
                loads[side] = load_raw(endpoint, RAW_TABLE, requests, threads)
        ours, raw = loads["ours"], loads["raw"]
        figures.rounds.append((ours, raw))
        notes = "; ".join(
            f"{side}: {load.anomalies()}" for side, load in loads.items() if load.anomalies()
        )
        print(
            f"round {r + 1}: raw {raw.rate:7,.0f} items/s ({raw.seconds:5.1f}s), "
            f"ours {ours.rate:7,.0f} items/s ({ours.seconds:5.1f}s), "
            f"ratio ours/raw {ours.rate / raw.rate:.2f}" + (f"  [{notes}]" if notes else ""),
            flush=True,
        )

    print(f"== {name}: the full load, {len(full):,} readings into {TABLE}, our path", flush=True)
    figures.full = load_ours(endpoint, TABLE, full, threads, root, label=name)
    figures.items = len(full)
    extra = figures.full.anomalies()
    print(
        f"{name}: {len(full):,} items in {figures.full.seconds:.1f}s, "
        f"{figures.full.rate:,.0f} items/s" + (f"  [{extra}]" if extra else ""),
        flush=True,
    )
    per_sensor = len(full) // SENSORS
    print(f"== {name}: query_readings limit {QUERY_LIMIT} x {repeats}", flush=True)
    figures.queries = time_queries(endpoint, TABLE, per_sensor, repeats, seed=len(full))
    q = figures.queries
    print(
        f"{name}: at {len(full):,} items, p50 {percentile(q, 50):.1f} ms, "
        f"p99 {percentile(q, 99):.1f} ms, max {max(q):.1f} ms",
        flush=True,
    )
    if cli_runs:
        url = endpoint.url or ""
        figures.cli = time_cli(url, TABLE, per_sensor, cli_runs, root)
        shown = " ".join(figures.cli.argv[1:])
        print(
            f"{name}: `python {shown}` with SENSOR_TABLE={TABLE}: "
            f"{', '.join(f'{w:.2f}' for w in figures.cli.walls)} s "
            f"(`python -m cloud --help` alone: {statistics.median(figures.cli.startup):.2f} s)",
            flush=True,
        )
    figures.rss = memory_mib(engine.pid)
    if engine.data is not None:
        figures.disk_mib = folder_mib(engine.data)
    return figures


# -- the report ----------------------------------------------------------------------------


def report(figs: list[Figures], threads: int, rounds: int) -> None:
    def row(label: str, cells: list[str]) -> None:
        print(f"{label:<44}" + "".join(f"{c:>22}" for c in cells))

    def each(fmt: Callable[[Figures], str]) -> list[str]:
        return [fmt(f) for f in figs]

    print(
        f"\n== summary: {threads} writer thread(s) a side; medians of {rounds} round(s) "
        "where rounds; figures per engine at the size shown"
    )
    row("", each(lambda f: f.engine))
    row("sample a side a round, items", each(lambda f: f"{f.sample:,}"))
    row("  raw batch_write_item, items/s", each(lambda f: f"{f.median(lambda r: r[1].rate):,.0f}"))
    row("  ours (ingest worker), items/s", each(lambda f: f"{f.median(lambda r: r[0].rate):,.0f}"))
    row(
        "  ratio ours/raw (median of rounds)",
        each(lambda f: f"{f.median(lambda r: r[0].rate / r[1].rate):.2f}"),
    )
    row("full load with our path, items", each(lambda f: f"{f.items:,}"))
    row("  items/s", each(lambda f: f"{f.full.rate:,.0f}" if f.full else "-"))
    row("  seconds", each(lambda f: f"{f.full.seconds:.1f}" if f.full else "-"))
    row(
        f"query_readings limit {QUERY_LIMIT}, repeats",
        each(lambda f: f"{len(f.queries)} at {f.items:,}"),
    )
    row("  p50 ms", each(lambda f: f"{percentile(f.queries, 50):.1f}"))
    row("  p99 ms", each(lambda f: f"{percentile(f.queries, 99):.1f}"))
    row(
        "`cloud readings --limit 100` CLI, wall s",
        each(lambda f: f"{statistics.median(f.cli.walls):.2f}" if f.cli else "-"),
    )
    row(
        "  of which `python -m cloud --help`, s",
        each(lambda f: f"{statistics.median(f.cli.startup):.2f}" if f.cli else "-"),
    )
    row("engine RSS now / peak, MiB", each(lambda f: f"{f.rss[0]:.0f} / {f.rss[1]:.0f}"))
    row("engine data on disk, MiB", each(lambda f: f"{f.disk_mib:.0f}" if f.disk_mib else "-"))
    anomalies = [
        f"{f.engine} {what}: {load.anomalies()}"
        for f in figs
        for what, load in [("full load", f.full), *(("round", x) for r in f.rounds for x in r)]
        if load is not None and load.anomalies()
    ]
    print(
        "UnprocessedItems / retries: "
        + ("; ".join(anomalies) if anomalies else "none (no throttling, nothing unprocessed)")
    )
    for f in figs:
        if f.engine == "dynalite":
            p99 = percentile(f.queries, 99)
            harness.print_goal(
                f"p99 <= {GOAL_P99_MS:.0f} ms for `readings --limit {QUERY_LIMIT}` at "
                f"{f.items:,} items on dynalite (in process)",
                f"{p99:.1f} ms",
                p99 <= GOAL_P99_MS,
            )


# -- main ----------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, help="full load on dynalite [1,000,000]")
    parser.add_argument("--sample", type=int, help="items a side a round, dynalite [40,000]")
    parser.add_argument("--moto-items", type=int, help="full load on moto [200,000]")
    parser.add_argument("--moto-sample", type=int, help="items a side a round, moto [10,000]")
    parser.add_argument("--rounds", type=int, help="ours/raw rounds per engine [3]")
    parser.add_argument("--queries", type=int, help="query repeats on dynalite [200]")
    parser.add_argument("--moto-queries", type=int, help="query repeats on moto [20]")
    parser.add_argument("--cli-runs", type=int, help="`cloud readings` child runs [3]")
    parser.add_argument("--threads", type=int, default=1, help="writer threads a side [1]")
    parser.add_argument("--no-moto", action="store_true", help="dynalite only")
    parser.add_argument(
        "--quick", action="store_true", help="a small run to check the bench (20,000 items)"
    )
    args = parser.parse_args()
    quick = {
        "items": 20_000,
        "sample": 5_000,
        "moto_items": 20_000,
        "moto_sample": 5_000,
        "rounds": 2,
        "queries": 50,
        "moto_queries": 10,
        "cli_runs": 1,
    }
    full = {
        "items": 1_000_000,
        "sample": 40_000,
        "moto_items": 200_000,
        "moto_sample": 10_000,
        "rounds": 3,
        "queries": 200,
        "moto_queries": 20,
        "cli_runs": 3,
    }
    harness.default_sizes(args, quick if args.quick else full)
    unit = SENSORS * MAX_BATCH * args.threads  # whole batches for every instance
    harness.require_multiples(parser, args, ("items", "sample", "moto_items", "moto_sample"), unit)
    if args.moto_items > args.items:
        parser.error("--moto-items: at most --items (moto loads the first of the same readings)")
    if min(args.rounds, args.queries, args.moto_queries, args.threads) < 1 or args.cli_runs < 0:
        parser.error("--rounds, --queries, --moto-queries and --threads: at least 1")

    with contextlib.ExitStack() as stack:
        root = harness.temp_folder(stack, "bench-table-load-")
        print(
            f"table_load: {args.threads} writer thread(s) a side; dynalite {args.items:,} items, "
            f"moto {'skipped' if args.no_moto else f'{args.moto_items:,} items'}; "
            f"{args.rounds} round(s); data in {root}",
            flush=True,
        )
        started = time.perf_counter()
        readings = make_readings("sensor-", args.items // SENSORS)
        size = sum(len(payload) for _, payload in readings) / len(readings)
        print(
            f"prepared {len(readings):,} payloads ({size:.0f} bytes on average) in "
            f"{time.perf_counter() - started:.1f}s, untimed",
            flush=True,
        )
        figs: list[Figures] = []
        try:
            engine = start_dynalite(root, stack)
            figs.append(
                measure(
                    engine, readings, args.sample, args.rounds, args.queries, args.cli_runs,
                    args.threads, root,
                )
            )  # fmt: skip
            if not args.no_moto:
                engine = start_moto(root, stack)
                figs.append(
                    measure(
                        engine, readings[: args.moto_items], args.moto_sample, args.rounds,
                        args.moto_queries, 0, args.threads, root,
                    )
                )  # fmt: skip
        except (PipelineError, OSError) as exc:
            raise BenchError(str(exc)) from exc
        report(figs, args.threads, args.rounds)
        harness.print_wall_time(started)
    return 0


if __name__ == "__main__":
    sys.exit(harness.run(main, __file__))
