"""How fast `cloud ingest` moves readings from the broker into the table, and how soon.

On each table engine, dynalite (the local stack's) and then a moto server, both on free ports
of 127.0.0.1, with one Mosquitto (mutual TLS, the project's ACL) and the real ingest: the
`Ingest` class, run on a thread of this process as `cloud ingest` runs it (`Ingest.run`,
its MQTT network thread, its writers), with ingest's default settings (those `cloud local
up` runs it with) but for the table's name. The only thing added is a thin wrapper around
its boto3 client that notes when each BatchWriteItem returned and which items it wrote (the
client is `cloud.ingest.writer.table_client`, the one `Ingest.run` makes: one attempt per call,
bounded in time).

Per engine, in alternating rounds (the order of the three sides flips every round):
- ours: 10 devices (`bench-dev-1` .. `-10`, their own certificates, so the ACL applies)
  publish N readings between them as fast as they can (bare paho-mqtt, MQTT 5, QoS 1, at
  most 100 unacknowledged each), from a process of their own; the clock runs from the first
  publish until the BatchWriteItem that wrote the last of them returned;
- raw: the same items (built by `cloud.ingest.rule.to_item`) with plain boto3 BatchWriteItem, 25 a
  call, UnprocessedItems resent, from this process with as many threads as ingest has
  writers (table_load.load_raw);
- PutItem: one PutItem per reading, the same threads, the first `--put-items` of them (at
  ~200/s a side of 20,000 would take minutes a round).
Then the latency: the 10 devices publish at a steady total rate (each reading at its own
time on a fixed schedule, not in bursts) for a while; each reading's `ts` is the wall clock
just before its publish, and its latency is the wall clock when the BatchWriteItem that
wrote it returned minus that `ts`. So it includes the publisher's client, TLS, the broker,
ingest's network thread, the batch window and the write; not the PUBACK to the broker nor
the receipt to the device (ingest sends receipts as the local stack's does; the bench's
devices do not subscribe, so the broker drops them).
Beside each side's rate: the CPU seconds its processes used (this one, the engine, the
broker, the publishers) and how busy the whole machine was, since ours runs the broker and
the devices on the same 2 cores and the baselines do not.

    .venv/bin/python bench/ingest.py [--readings 20000] [--rounds 3] [--rate 500] \
        [--seconds 20] [--put-items 5000] [--writers N] [--engine dynalite|moto|both] [--quick]

Everything runs in a temporary folder that is deleted at the end, also on failure, Ctrl-C
or SIGTERM. Exit 0 once measured (goals met or not), 1 when the bench could not be set up or
a run failed, 130 when interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import multiprocessing
import os
import resource
import ssl
import statistics
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import harness
from harness import BenchError

with harness.venv_imports(__file__):
    import paho.mqtt.client as mqtt
    import psutil
    from broker import HOST, setting_up, start_broker
    from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
    from table_load import (
        Engine,
        Load,
        load_raw,
        percentile,
        put_batches,
        start_dynalite,
        start_moto,
    )

    from cloud.aws import Endpoint
    from cloud.identity.local_ca import Identity
    from cloud.ingest.rule import to_item
    from cloud.ingest.service import Ingest
    from cloud.ingest.settings import MAX_WRITERS, IngestSettings, IngestStats
    from cloud.ingest.writer import table_client
    from cloud.table import create_table
    from device.payload import Reading

DEVICES = 10
DEVICE_PREFIX = "bench-dev-"
OURS_TABLE, RAW_TABLE, PUT_TABLE = "BenchOurs", "BenchRaw", "BenchPut"
#: Synthetic times of the burst runs: 2030 on, each run 10^9 ms (11.6 days) after the last,
#: so no two runs share a key and none meets the latency runs' real clock.
FIRST_TS_MS = 1_893_456_000_000
RUN_SPAN_MS = 1_000_000_000
INFLIGHT = 100  # unacknowledged publishes per device, as the agent's default window
WARMUP_READINGS = 2000
GOAL_RAW = 0.8
GOAL_PUT = 5.0
GOAL_P99_MS = 250.0
#: The ingest settings' own default, so the bench follows a change of it.
WRITERS = next(int(f.default) for f in fields(IngestSettings) if f.name == "writers")  # type: ignore[arg-type]


def device_ids() -> list[str]:
    return [f"{DEVICE_PREFIX}{n}" for n in range(1, DEVICES + 1)]


# -- the publishers, in a process of their own -------------------------------------------


@dataclass(frozen=True)
class Plan:
    """What the publisher process sends: `bursts` (one list of payloads per device, as fast
    as it can) or, when empty, `rate` readings/s between all devices for `seconds`."""

    port: int
    identities: tuple[tuple[str, str, str, str], ...]  # (id, cert, key, ca)
    bursts: tuple[tuple[bytes, ...], ...] = ()
    rate: float = 0.0
    seconds: float = 0.0
    first_seq: int = 0


@dataclass
class Published:
    first: float  # time.time() of the first publish
    last: float  # of the last publish
    count: int  # publishes made
    acked: int  # PUBACKs that said success
    refused: list[str] = field(default_factory=list)
    late_ms: float = 0.0  # paced only: the most a publish was behind its schedule
    cpu: float = 0.0  # CPU seconds of the publisher process, connecting included


def _publish_process(plan: Plan, conn: Connection) -> None:
    """Connect every device, say "ready", wait for "go", publish, send a Published."""
    logging.basicConfig(level=logging.ERROR)
    try:
        conn.send(_publish(plan, conn))
    except BenchError as exc:
        conn.send(exc)
    except KeyboardInterrupt:
        pass


def _publish(plan: Plan, conn: Connection) -> Published:
    n = len(plan.identities)
    connected = threading.Barrier(n + 1, timeout=30)
    lock = threading.Lock()
    acked = [0]
    refused: list[str] = []
    clients: list[mqtt.Client] = []
    windows = [threading.BoundedSemaphore(INFLIGHT) for _ in range(n)]

    def client_for(k: int, sensor_id: str, cert: str, key: str, ca: str) -> mqtt.Client:
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=sensor_id, protocol=MQTTProtocolVersion.MQTTv5
        )
        client.tls_set(ca, cert, key, tls_version=ssl.PROTOCOL_TLS_CLIENT)
        client.max_inflight_messages_set(INFLIGHT)

        def on_connect(c: mqtt.Client, u: Any, f: Any, reason: Any, p: Any) -> None:
            if reason.is_failure:
                refused.append(f"{sensor_id}: CONNACK {reason}")
            with contextlib.suppress(threading.BrokenBarrierError):
                connected.wait()

        def on_publish(c: mqtt.Client, u: Any, mid: int, reason: Any, p: Any) -> None:
            with lock:
                if reason.is_failure:
                    refused.append(f"{sensor_id}: PUBACK {reason}")
                else:
                    acked[0] += 1
            windows[k].release()

        client.on_connect = on_connect
        client.on_publish = on_publish
        return client

    try:
        for k, (sensor_id, cert, key, ca) in enumerate(plan.identities):
            client = client_for(k, sensor_id, cert, key, ca)
            client.connect(HOST, plan.port)
            client.loop_start()
            clients.append(client)
        connected.wait()
    except (OSError, threading.BrokenBarrierError) as exc:
        raise BenchError(f"publishers: cannot connect to the broker: {exc!r}") from exc
    if refused:
        raise BenchError(f"publishers: {refused[0]}")
    conn.send("ready")
    if conn.recv() != "go":
        raise BenchError("publishers: no go")

    firsts: list[float] = []
    lasts: list[float] = []
    counts = [0] * n
    lateness = [0.0] * n
    failed: list[str] = []
    start = time.time() + 0.05

    def publish(k: int, payload: bytes) -> None:
        if not windows[k].acquire(timeout=60):
            raise BenchError(f"{plan.identities[k][0]}: no PUBACK for 60 s")
        info = clients[k].publish(f"sensors/{plan.identities[k][0]}/data", payload, qos=1)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise BenchError(f"publish failed: {mqtt.error_string(info.rc)}")

    def burst(k: int) -> None:
        payloads = plan.bursts[k]
        time.sleep(max(0.0, start - time.time()))
        firsts.append(time.time())
        for payload in payloads:
            publish(k, payload)
        counts[k] = len(payloads)
        lasts.append(time.time())

    def paced(k: int) -> None:
        sensor_id = plan.identities[k][0]
        total = int(plan.rate * plan.seconds)
        previous_ts = 0
        seq = plan.first_seq
        # Device k's readings are k, k + n, k + 2n, ... of one schedule at `rate` a second.
        for i in range(k, total, n):
            due = start + i / plan.rate
            now = time.time()
            if now < due:
                time.sleep(due - now)
                now = time.time()
            lateness[k] = max(lateness[k], now - due)
            ts = max(int(now * 1000), previous_ts + 1)  # strictly increasing per sensor
            previous_ts = ts
            if i < n:
                firsts.append(now)
            publish(k, Reading(sensor_id, ts, seq, 21.5 + k / 10).to_payload())
            seq += 1
            counts[k] += 1
        lasts.append(time.time())

    def guarded(target: Callable[[int], None], k: int) -> None:
        try:
            target(k)
        except BenchError as exc:
            failed.append(str(exc))

    body = burst if plan.bursts else paced
    threads = [threading.Thread(target=guarded, args=(body, k)) for k in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failed:
        raise BenchError(f"publishers: {failed[0]}")
    total = sum(counts)
    deadline = time.monotonic() + 60
    while acked[0] + len(refused) < total and time.monotonic() < deadline:
        time.sleep(0.01)
    for client in clients:
        client.disconnect()
        client.loop_stop()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return Published(
        min(firsts),
        max(lasts),
        total,
        acked[0],
        refused,
        max(lateness) * 1000,
        usage.ru_utime + usage.ru_stime,
    )


class Publishers:
    """The publisher process: started and connected by `__init__`, set off by `go`."""

    def __init__(self, plan: Plan) -> None:
        context = multiprocessing.get_context("spawn")  # no fork of a process with threads
        self._receive, send = context.Pipe()
        self._process = context.Process(
            target=_publish_process, args=(plan, send), name="bench-publishers"
        )
        self._process.start()
        send.close()
        self._expect("ready", 60)

    def _expect(self, what: str, timeout: float) -> Any:
        try:
            if not self._receive.poll(timeout):
                raise BenchError(f"publishers: no {what} in {timeout:.0f}s")
            got = self._receive.recv()
        except EOFError:
            raise BenchError(f"publishers died ({self._process.exitcode})") from None
        if isinstance(got, BenchError):
            raise got
        return got

    def go(self) -> None:
        self._receive.send("go")

    def result(self, timeout: float) -> Published:
        got = self._expect("result", timeout)
        if not isinstance(got, Published):
            raise BenchError(f"publishers sent {got!r}")
        if got.refused or got.acked != got.count:
            raise BenchError(
                f"publishers: {got.acked} of {got.count} acknowledged ({got.refused[:1]})"
            )
        return got

    def close(self) -> None:
        if self._process.is_alive():
            self._process.join(5)
        if self._process.is_alive():
            self._process.kill()
        self._process.join()
        self._receive.close()


# -- what ingest wrote, and when ---------------------------------------------------------


class TimingWriter:
    """Ingest's boto3 client, noting for each BatchWriteItem when it returned and which
    items it wrote (those not handed back as UnprocessedItems). Thread-safe: ingest may
    call it from several writer threads."""

    def __init__(self, client: Any, table: str) -> None:
        self._client = client
        self._table = table
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self.done: list[tuple[float, list[tuple[str, int]]]] = []  # (returned, keys)
            self.busy = 0.0  # seconds inside calls, summed over threads
            self.calls = 0
            self.unprocessed = 0

    def batch_write_item(self, **kwargs: Any) -> dict[str, Any]:
        started = time.time()
        answer: dict[str, Any] = self._client.batch_write_item(**kwargs)
        returned = time.time()
        requests = kwargs["RequestItems"][self._table]
        left = answer.get("UnprocessedItems", {}).get(self._table, [])
        skip = {id(r) for r in left} if left else set()
        keys = [
            (
                r["PutRequest"]["Item"]["SensorId"]["S"],
                int(r["PutRequest"]["Item"]["CurrentTime"]["N"]),
            )
            for r in requests
            if not left or id(r) not in skip
        ]
        if left:  # a fresh answer holds copies, not our dicts: match by key instead
            unwritten = {
                (
                    r["PutRequest"]["Item"]["SensorId"]["S"],
                    int(r["PutRequest"]["Item"]["CurrentTime"]["N"]),
                )
                for r in left
            }
            keys = [k for k in keys if k not in unwritten]
        with self._lock:
            self.done.append((returned, keys))
            self.busy += returned - started
            self.calls += 1
            self.unprocessed += len(left)
        return answer

    def written(self) -> dict[tuple[str, int], float]:
        """Each key written since `reset`, with the time its first write returned."""
        out: dict[tuple[str, int], float] = {}
        with self._lock:
            for returned, keys in self.done:
                for key in keys:
                    out.setdefault(key, returned)
        return out

    def rewrites(self) -> int:
        with self._lock:
            keys = [k for _, ks in self.done for k in ks]
        return len(keys) - len(set(keys))


# -- where the CPU went ------------------------------------------------------------------


class CpuMeter:
    """CPU seconds over one run, by process: this one (ingest, or a baseline's threads), the
    engine, the broker; and the whole machine's busy seconds (others' processes included:
    the machine is shared)."""

    def __init__(self, engine_pid: int) -> None:
        me = psutil.Process()
        self._procs = {"bench": me, "engine": psutil.Process(engine_pid)}
        for child in me.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                if child.name() == "mosquitto":
                    self._procs["broker"] = child
        self._start = self._read()

    def _read(self) -> dict[str, float]:
        out = {}
        for name, proc in self._procs.items():
            times = proc.cpu_times()
            out[name] = times.user + times.system
        machine = psutil.cpu_times()
        out["machine"] = sum(machine) - machine.idle - getattr(machine, "iowait", 0.0)
        out["wall"] = time.perf_counter()
        return out

    def done(self, publishers: float = 0.0) -> dict[str, float]:
        end = self._read()
        used = {k: end[k] - self._start[k] for k in end}
        used["publishers"] = publishers
        return used


# -- one engine's runs -------------------------------------------------------------------


@dataclass
class Burst:
    items: int
    seconds: float
    calls: int
    in_flight: float  # mean BatchWriteItem calls in flight over the run
    publish_seconds: float  # first to last publish
    publisher_cpu: float  # CPU seconds of the publisher process

    @property
    def rate(self) -> float:
        return self.items / self.seconds


@dataclass
class Latency:
    samples: list[float]  # ms, one per reading
    rate: float  # readings/s the publishers held
    late_ms: float  # the most a publish was behind its schedule


@dataclass
class Round:
    ours: Burst
    raw: Load
    put: Load
    cpu: dict[str, dict[str, float]] = field(default_factory=dict)  # side -> CpuMeter.done

    def cpu_per_k(self, side: str, items: int) -> float:
        """CPU seconds per 1,000 items of our processes (bench, engine, broker, publishers)."""
        c = self.cpu[side]
        parts = ("bench", "engine", "broker", "publishers")
        return 1000 * sum(c.get(k, 0.0) for k in parts) / items


@dataclass
class Figures:
    engine: str
    rounds: list[Round] = field(default_factory=list)
    latencies: list[Latency] = field(default_factory=list)
    stats: IngestStats | None = None

    def median(self, pick: Callable[[Round], float]) -> float:
        return statistics.median(pick(r) for r in self.rounds)


@dataclass
class Context:
    root: Path
    port: int
    devices: list[Identity]
    reader: Identity  # ingest's identity
    runs: int = 0  # burst runs so far on this broker: each gets times of its own

    def identities(self) -> tuple[tuple[str, str, str, str], ...]:
        return tuple(
            (sensor_id, str(i.cert), str(i.key), str(i.ca))
            for sensor_id, i in zip(device_ids(), self.devices, strict=True)
        )


def burst_readings(run: int, per_device: int) -> list[list[tuple[str, bytes]]]:
    """Per device, `per_device` readings one second apart, with times of run `run`'s own."""
    base = FIRST_TS_MS + run * RUN_SPAN_MS
    out = []
    for k, sensor_id in enumerate(device_ids()):
        topic = f"sensors/{sensor_id}/data"
        out.append(
            [
                (
                    topic,
                    Reading(sensor_id, base + s * 1000 + k, s, 20.0 + (s % 100) / 10).to_payload(),
                )
                for s in range(per_device)
            ]
        )
    return out


def wait_written(ingest: Ingest, worker: threading.Thread, target: int, limit: float) -> None:
    deadline = time.monotonic() + limit
    while ingest.stats.written < target:
        if not worker.is_alive():
            raise BenchError(f"ingest stopped: {ingest.stats.line()}")
        if time.monotonic() > deadline:
            raise BenchError(f"ingest wrote {ingest.stats.written} of {target} in {limit:.0f}s")
        time.sleep(0.002)


def run_ours(
    ctx: Context,
    ingest: Ingest,
    worker: threading.Thread,
    writer: TimingWriter,
    readings: list[list[tuple[str, bytes]]],
) -> Burst:
    total = sum(len(r) for r in readings)
    before = ingest.stats
    target = before.written + total
    duplicates, dead = before.duplicates, before.dead_lettered
    plan = Plan(ctx.port, ctx.identities(), bursts=tuple(tuple(p for _, p in r) for r in readings))
    publishers = Publishers(plan)
    try:
        writer.reset()
        publishers.go()
        wait_written(ingest, worker, target, 60 + total / 200)
        published = publishers.result(60)
    finally:
        publishers.close()
    written = writer.written()
    if (
        len(written) != total
        or writer.rewrites()
        or ingest.stats.duplicates != duplicates
        or ingest.stats.dead_lettered != dead
    ):
        raise BenchError(
            f"ours: {len(written)} of {total} keys written, {writer.rewrites()} written "
            f"twice; {ingest.stats.line()}"
        )
    last = max(written.values())
    seconds = last - published.first
    return Burst(
        total,
        seconds,
        writer.calls,
        writer.busy / seconds,
        published.last - published.first,
        published.cpu,
    )


def run_latency(
    ctx: Context,
    ingest: Ingest,
    worker: threading.Thread,
    writer: TimingWriter,
    rate: float,
    seconds: float,
    first_seq: int,
) -> Latency:
    total = int(rate * seconds)
    target = ingest.stats.written + total
    publishers = Publishers(
        Plan(ctx.port, ctx.identities(), rate=rate, seconds=seconds, first_seq=first_seq)
    )
    try:
        writer.reset()
        publishers.go()
        published = publishers.result(seconds + 60)
        wait_written(ingest, worker, target, 60)
    finally:
        publishers.close()
    written = writer.written()
    if len(written) != total:
        raise BenchError(f"latency: {len(written)} of {total} readings written")
    samples = [returned * 1000 - ts for (_, ts), returned in written.items()]
    span = published.last - published.first
    return Latency(samples, total / span if span > 0 else 0.0, published.late_ms)


def load_put(endpoint: Endpoint, table: str, items: Sequence[dict[str, Any]], threads: int) -> Load:
    """One PutItem per item, `threads` threads of one client each."""
    clients = [endpoint.client("dynamodb") for _ in range(threads)]
    errors: list[BaseException] = []
    retries = [0] * threads

    def work(k: int) -> None:
        try:
            for item in items[k::threads]:
                answer = clients[k].put_item(TableName=table, Item=item)
                retries[k] += int(answer["ResponseMetadata"].get("RetryAttempts", 0))
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    workers = [threading.Thread(target=work, args=(k,), daemon=True) for k in range(threads)]
    started = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join(60 + len(items) / 20)
        if w.is_alive():
            raise BenchError(f"PutItem into {table} stuck")
    seconds = time.perf_counter() - started
    if errors:
        raise BenchError(f"PutItem into {table} failed: {errors[0]!r}")
    return Load(items=len(items), seconds=seconds, calls=len(items), sdk_retries=sum(retries))


def measure(
    ctx: Context,
    engine: Engine,
    args: argparse.Namespace,
    stack: contextlib.ExitStack,
) -> Figures:
    name, endpoint = engine.name, engine.endpoint
    ddb = endpoint.client("dynamodb")
    for table in (OURS_TABLE, RAW_TABLE, PUT_TABLE):
        create_table(ddb, table)
    writer = TimingWriter(table_client(endpoint), OURS_TABLE)
    ingest = Ingest(ingest_settings(ctx, endpoint, name, args.writers), ddb=writer)
    stop = threading.Event()
    worker = threading.Thread(target=ingest.run, args=(stop,), name="bench-ingest", daemon=True)
    worker.start()
    with contextlib.ExitStack() as running:
        running.callback(worker.join, 15)
        running.callback(stop.set)
        if not ingest.ready.wait(30):
            raise BenchError(f"{name}: ingest never subscribed")
        per_device = args.readings // DEVICES
        # Untimed: the first connections, boto3's lazily built parts and the engine's first
        # allocations would otherwise land on whichever side goes first.
        warm = burst_readings(ctx.runs, WARMUP_READINGS // DEVICES)
        ctx.runs += 1
        run_ours(ctx, ingest, worker, writer, warm)
        warm_items = [to_item(t, p) for r in warm for t, p in r]
        load_raw(endpoint, RAW_TABLE, put_batches(warm_items), args.writers)
        load_put(endpoint, PUT_TABLE, warm_items[:200], args.writers)

        figures = Figures(name)
        print(
            f"\n== {name}: {args.readings:,} readings from {DEVICES} devices a round "
            f"(PutItem: the first {args.put_items:,}); {args.writers} writer(s) in ingest, "
            f"{args.writers} thread(s) a baseline",
            flush=True,
        )
        for r in range(args.rounds):
            readings = burst_readings(ctx.runs, per_device)
            ctx.runs += 1
            # Interleaved as a fleet sends them, so the baselines write in the same order.
            items = [to_item(t, p) for group in zip(*readings, strict=True) for t, p in group]
            sides = ("ours", "raw", "put") if r % 2 == 0 else ("put", "raw", "ours")
            got: dict[str, Any] = {}
            cpu: dict[str, dict[str, float]] = {}
            for side in sides:
                meter = CpuMeter(engine.pid)
                if side == "ours":
                    got[side] = run_ours(ctx, ingest, worker, writer, readings)
                elif side == "raw":
                    got[side] = load_raw(endpoint, RAW_TABLE, put_batches(items), args.writers)
                else:
                    got[side] = load_put(endpoint, PUT_TABLE, items[: args.put_items], args.writers)
                cpu[side] = meter.done(got["ours"].publisher_cpu if side == "ours" else 0.0)
            one = Round(got["ours"], got["raw"], got["put"], cpu)
            figures.rounds.append(one)
            notes = "; ".join(
                f"{side}: {load.anomalies()}"
                for side, load in (("raw", one.raw), ("put", one.put))
                if load.anomalies()
            )
            print(
                f"round {r + 1}: ours {one.ours.rate:6,.0f} items/s ({one.ours.seconds:5.1f}s; "
                f"{one.ours.in_flight:.2f} writes in flight on average, publishing took "
                f"{one.ours.publish_seconds:.1f}s), raw {one.raw.rate:6,.0f}/s "
                f"({one.raw.seconds:5.1f}s), PutItem {one.put.rate:5,.0f}/s "
                f"({one.put.seconds:5.1f}s); ours/raw {one.ours.rate / one.raw.rate:.2f}, "
                f"ours/PutItem {one.ours.rate / one.put.rate:.1f}"
                + (f"  [{notes}]" if notes else ""),
                flush=True,
            )
            print("  " + cpu_line(one, args.readings), flush=True)
        print(
            f"== {name}: latency, {args.rate:g} readings/s for {args.seconds:g}s a round",
            flush=True,
        )
        for r in range(args.rounds):
            latency = run_latency(
                ctx, ingest, worker, writer, args.rate, args.seconds, first_seq=r * 100_000
            )
            figures.latencies.append(latency)
            s = latency.samples
            print(
                f"round {r + 1}: {len(s):,} readings at {latency.rate:,.0f}/s (most behind "
                f"schedule {latency.late_ms:.0f} ms): p50 {percentile(s, 50):.0f} ms, "
                f"p99 {percentile(s, 99):.0f} ms, max {max(s):.0f} ms",
                flush=True,
            )
    if worker.is_alive():
        raise BenchError(f"{name}: ingest did not stop")
    figures.stats = ingest.stats
    return figures


def ingest_settings(ctx: Context, endpoint: Endpoint, name: str, writers: int) -> IngestSettings:
    return IngestSettings(
        host=HOST,
        port=ctx.port,
        tls=ctx.reader,
        endpoint=endpoint,
        table=OURS_TABLE,
        dead_letter=ctx.root / f"dead-letter-{name}.jsonl",
        report_every=3600.0,
        writers=writers,
    )


def cpu_line(r: Round, items: int) -> str:
    def busy(side: str) -> str:
        c = r.cpu[side]
        parts = ", ".join(
            f"{k} {c[k]:.1f}" for k in ("bench", "engine", "broker", "publishers") if c.get(k)
        )
        return (
            f"{side} {r.cpu_per_k(side, items):.2f} CPU-s/1k items ({parts} s; machine busy "
            f"{c['machine'] / c['wall']:.2f} of {psutil.cpu_count()} cores)"
        )

    return "CPU: " + "; ".join(busy(side) for side in ("ours", "raw"))


# -- the report ----------------------------------------------------------------------------


def report(figs: list[Figures], args: argparse.Namespace) -> None:
    def row(label: str, cells: list[str]) -> None:
        print(f"{label:<46}" + "".join(f"{c:>20}" for c in cells))

    def each(fmt: Callable[[Figures], str]) -> list[str]:
        return [fmt(f) for f in figs]

    def lat(f: Figures, pct: int) -> float:
        return statistics.median(percentile(x.samples, pct) for x in f.latencies)

    def median(pick: Callable[[Round], float], spec: str) -> list[str]:
        """Per engine, the median of the rounds' `pick`, formatted by `spec`."""
        return each(lambda f: format(f.median(pick), spec))

    print(
        f"\n== summary: medians of {args.rounds} round(s); {args.writers} writer(s) in ingest, "
        f"as many threads a baseline"
    )
    row("", each(lambda f: f.engine))
    row(
        f"ours: {args.readings:,} readings over MQTT, items/s",
        median(lambda r: r.ours.rate, ",.0f"),
    )
    row("  BatchWriteItem calls in flight, mean", median(lambda r: r.ours.in_flight, ".2f"))
    row("raw BatchWriteItem, items/s", median(lambda r: r.raw.rate, ",.0f"))
    row(f"PutItem per item ({args.put_items:,}), items/s", median(lambda r: r.put.rate, ",.0f"))
    row("ratio ours/raw (median of rounds)", median(lambda r: r.ours.rate / r.raw.rate, ".2f"))
    row("  by round", each(lambda f: " ".join(f"{r.ours.rate / r.raw.rate:.2f}" for r in f.rounds)))
    row("ratio ours/PutItem (median of rounds)", median(lambda r: r.ours.rate / r.put.rate, ".1f"))
    row(
        f"latency at {args.rate:g}/s for {args.seconds:g}s: p50 ms",
        each(lambda f: f"{lat(f, 50):.0f}"),
    )
    row("  p99 ms (median of rounds)", each(lambda f: f"{lat(f, 99):.0f}"))
    row(
        "  p99 ms by round",
        each(lambda f: " ".join(f"{percentile(x.samples, 99):.0f}" for x in f.latencies)),
    )
    row("  max ms", each(lambda f: f"{max(max(x.samples) for x in f.latencies):.0f}"))
    row(
        "CPU-s per 1,000 items, ours (all parts)",
        median(lambda r: r.cpu_per_k("ours", args.readings), ".2f"),
    )
    row("CPU-s per 1,000 items, raw", median(lambda r: r.cpu_per_k("raw", args.readings), ".2f"))
    row(
        "machine busy during ours, cores",
        median(lambda r: r.cpu["ours"]["machine"] / r.cpu["ours"]["wall"], ".2f"),
    )
    row(
        "ingest: batches, retries, duplicates",
        each(
            lambda f: (
                f"{f.stats.batches}, {f.stats.retries}, {f.stats.duplicates}" if f.stats else "-"
            )
        ),
    )
    for f in figs:
        ratio = f.median(lambda r: r.ours.rate / r.raw.rate)
        put = f.median(lambda r: r.ours.rate / r.put.rate)
        p99 = lat(f, 99)
        harness.print_goal(
            f"ours/raw BatchWriteItem >= {GOAL_RAW} on {f.engine}",
            f"{ratio:.2f}",
            ratio >= GOAL_RAW,
        )
        harness.print_goal(
            f"ours/PutItem >= {GOAL_PUT:g}x on {f.engine}", f"{put:.1f}x", put >= GOAL_PUT
        )
        harness.print_goal(
            f"publish -> row p99 <= {GOAL_P99_MS:.0f} ms at {args.rate:g}/s on {f.engine}",
            f"{p99:.0f} ms",
            p99 <= GOAL_P99_MS,
        )


# -- main ----------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--readings", type=int, help="a round's burst, all devices [20,000]")
    parser.add_argument("--put-items", type=int, help="PutItem side a round [5,000]")
    parser.add_argument("--rounds", type=int, help="rounds of each kind per engine [3]")
    parser.add_argument("--rate", type=float, help="latency: readings/s, all devices [500]")
    parser.add_argument("--seconds", type=float, help="latency: seconds a round [20]")
    parser.add_argument(
        "--writers", type=int, default=WRITERS,
        help=f"ingest's writers, and the baselines' threads [{WRITERS}, ingest's default]",
    )  # fmt: skip
    parser.add_argument("--engine", choices=("dynalite", "moto", "both"), default="both")
    parser.add_argument("--quick", action="store_true", help="a small run (about a minute)")
    args = parser.parse_args()
    sizes = (
        {"readings": 5_000, "put_items": 1_000, "rounds": 2, "rate": 500.0, "seconds": 5.0}
        if args.quick
        else {"readings": 20_000, "put_items": 5_000, "rounds": 3, "rate": 500.0, "seconds": 20.0}
    )
    harness.default_sizes(args, sizes)
    if args.readings <= 0 or args.readings % DEVICES:
        parser.error(f"--readings {args.readings}: a positive multiple of {DEVICES}")
    if not 0 < args.put_items <= args.readings:
        parser.error("--put-items: from 1 to --readings")
    if args.rounds < 1 or args.rate <= 0 or args.seconds <= 0 or args.writers < 1:
        parser.error("--rounds, --rate, --seconds and --writers: positive")
    if args.writers > MAX_WRITERS:
        parser.error(f"--writers: at most {MAX_WRITERS}")
    # This machine's clock is not NTP-synchronised; nothing here waits for it.
    os.environ.setdefault("DEVICE_AGENT_CLOCK_WAIT", "0")

    with contextlib.ExitStack() as stack:
        root = harness.temp_folder(stack, "bench-ingest-")
        started = time.perf_counter()
        print(
            f"ingest: {args.readings:,} readings a round, {args.rounds} round(s), latency at "
            f"{args.rate:g}/s for {args.seconds:g}s; engines: {args.engine}; data in {root}",
            flush=True,
        )
        figs: list[Figures] = []
        with setting_up():
            broker = start_broker(root, stack)
            devices = [broker.identity(i) for i in device_ids()]
            ctx = Context(root, broker.port, devices, broker.identity("ingest"))
            for name in ("dynalite", "moto"):
                if args.engine not in (name, "both"):
                    continue
                with contextlib.ExitStack() as engine_stack:
                    start = start_dynalite if name == "dynalite" else start_moto
                    engine = start(root, engine_stack)
                    figs.append(measure(ctx, engine, args, engine_stack))
        report(figs, args)
        harness.print_wall_time(started)
    return 0


if __name__ == "__main__":
    sys.exit(harness.run(main, __file__))
