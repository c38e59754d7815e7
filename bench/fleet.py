"""A fleet of simulated devices at 1 Hz through the local stack, up to 1,000 on this machine.

    .venv/bin/python bench/fleet.py [--sizes 100,500,1000] [--count 45] [--quick]

It starts a local stack (`cloud local up`: Mosquitto, dynalite, `cloud ingest`) in a
temporary folder on free ports, provisions every device beforehand (not timed), then per
size runs `device-agent simulate --devices N --count C --interval 1` as a child, and checks
the table: every reading of every device exactly once. Beside the largest size that the
old runner could manage, the same fleet runs on threads (two per device, paho's own
select() loops: what `simulate` did before device.fleet) as the baseline.

Exit 0 once measured (goals met or not), 1 when setup or a run failed, 130 interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import harness
from harness import BenchError

with harness.venv_imports(__file__):
    import psutil

    from cloud.aws import Endpoint
    from cloud.local.ports import free_port

PY = sys.executable
TABLE = "SensorData"
#: Readings taken in the first seconds wait in outboxes while the fleet still connects;
#: lag is counted from this seq on, once every device is up.
STEADY_FROM_SEQ = 15
#: The goals: readings reach the table this soon after they were taken, at p99, and the
#: devices keep at least this share of their 1 Hz.
LAG_GOAL_S = 2.0
RATE_GOAL = 0.95
#: The threaded runner, run as the baseline: the simulator as it was before device.fleet.
_THREADED = """
import sys
from device import cli
from device.agent import Agent
n, count, prefix, outboxes = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
ids = [f"{prefix}{i}" for i in range(1, n + 1)]
stack = cli._local_stack(ids)
flags = dict(count=count, interval=1.0, clock_wait=0.0, sensor="simulated")
agents = [
    Agent(cli.build_config(i, None, dict(flags, outbox=f"{outboxes}/{i}.sqlite"), stack))
    for i in ids
]
cli.run_agents(agents)
"""


@dataclass
class Run:
    runner: str  # "fleet" or "threads"
    devices: int
    count: int
    wall_s: float
    cpu_s: float  # the simulator's user + sys
    peak_rss_mib: float
    threads: int  # the simulator's peak thread count
    parts_cpu_s: dict[str, float]  # broker, ingest, table engine over the run
    in_table: int
    exactly_once: bool
    lag_p50_s: float
    lag_p99_s: float
    rate: float  # readings/s the devices took, from STEADY_FROM_SEQ on (N at 1 Hz)
    rc: int

    @property
    def expected(self) -> int:
        return self.devices * self.count


def cloud(root: Path, *args: str) -> str:
    done = subprocess.run(
        [PY, "-m", "cloud", *args], cwd=root, capture_output=True, text=True, timeout=600
    )
    if done.returncode != 0:
        raise BenchError(f"cloud {' '.join(args)}: {done.stderr.strip() or done.stdout}")
    return done.stdout


def local_down(root: Path) -> None:
    """`cloud local down`, at the end whatever happened; a stack that is already down, or
    never came up, is no error here."""
    with contextlib.suppress(BenchError, subprocess.TimeoutExpired):
        cloud(root, "local", "down")


def part_pids(root: Path) -> dict[str, int]:
    state = json.loads((root / "var" / "local" / "supervisor.json").read_text())
    return {name: part["pid"] for name, part in state["parts"].items()}


def cpu_seconds(pid: int) -> float:
    try:
        t = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return 0.0
    return float(t.user + t.system)


def simulate(
    root: Path, runner: str, n: int, count: int, prefix: str
) -> tuple[int, float, float, float, int]:
    """Run the fleet to its end: (rc, wall s, cpu s, peak RSS MiB, peak threads)."""
    outboxes = root / "outboxes" / prefix
    outboxes.mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEVICE_AGENT_")}
    if runner == "fleet":
        argv = [
            PY, "-m", "device", "simulate", "--devices", str(n), "--prefix", prefix,
            "--count", str(count), "--interval", "1", "--clock-wait", "0",
            "--outbox-dir", str(outboxes), "-q",
        ]  # fmt: skip
    else:
        argv = [PY, "-c", _THREADED, str(n), str(count), prefix, str(outboxes)]
    log = (root / f"{prefix}.log").open("wb")
    start = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)  # fmt: skip
    threads = 0
    peaks: dict[int, int] = {}  # pid -> peak RSS bytes: the simulator and its processes
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    try:
        child = psutil.Process(proc.pid)
        deadline = start + count + 120
        while proc.poll() is None:
            with contextlib.suppress(psutil.Error):
                family = [child, *child.children(recursive=True)]
                threads = max(threads, sum(p.num_threads() for p in family))
                for p in family:
                    peaks[p.pid] = max(peaks.get(p.pid, 0), _hwm(p.pid))
            if time.perf_counter() > deadline:
                proc.kill()
                break
            time.sleep(0.2)  # sampling the processes' threads and memory, not a wait
        rc = proc.wait()
        wall = time.perf_counter() - start
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    finally:
        log.close()
    # The simulator and every process it waited for (its fleet's children).
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return rc, wall, cpu, sum(peaks.values()) / 2**20, threads


def _hwm(pid: int) -> int:
    """A process's peak RSS (VmHWM), as agent_child.PeakRss reads it; 0 once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_bytes().splitlines():
            if line.startswith(b"VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def table_check(url: str, prefix: str, n: int, count: int) -> tuple[int, bool, list[float], float]:
    """(items, exactly once, steady-state lags s, steady readings/s) of this fleet's
    readings. The rate is each device's own (readings over the span of their `ts`, from
    STEADY_FROM_SEQ on), summed: N at a kept 1 Hz, less when the simulator falls behind."""
    ddb = Endpoint(url).client("dynamodb")
    seqs: dict[str, list[int]] = {}
    lags: list[float] = []
    taken: dict[str, list[int]] = {}
    pages = ddb.get_paginator("scan").paginate(
        TableName=TABLE,
        FilterExpression="begins_with(SensorId, :p)",
        ExpressionAttributeValues={":p": {"S": prefix}},
    )
    for page in pages:
        for item in page["Items"]:
            sensor, seq = item["SensorId"]["S"], int(item["Seq"]["N"])
            seqs.setdefault(sensor, []).append(seq)
            if seq >= STEADY_FROM_SEQ and "ReceivedAt" in item:
                ts = int(item["CurrentTime"]["N"])
                lags.append((int(item["ReceivedAt"]["N"]) - ts) / 1000)
                taken.setdefault(sensor, []).append(ts)
    items = sum(len(v) for v in seqs.values())
    once = len(seqs) == n and all(sorted(v) == list(range(count)) for v in seqs.values())
    rate = sum(
        (len(ts) - 1) / ((max(ts) - min(ts)) / 1000)
        for ts in taken.values()
        if len(ts) > 1 and max(ts) > min(ts)
    )
    return items, once, lags, rate


def percentile(values: list[float], pct: int) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1)))]


def measure(root: Path, url: str, runner: str, n: int, count: int) -> Run:
    prefix = f"{runner[0]}{n}-"
    pids = part_pids(root)
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    rc, wall, cpu, rss, threads = simulate(root, runner, n, count, prefix)
    # ingest may still be writing the last batch the fleet saw acknowledged
    items, once, lags, rate = table_check(url, prefix, n, count)
    parts = {name: cpu_seconds(pid) - before[name] for name, pid in pids.items()}
    return Run(runner, n, count, wall, cpu, rss, threads, parts, items, once,
               percentile(lags, 50), percentile(lags, 99), rate, rc)  # fmt: skip


def provision(root: Path, prefix: str, n: int) -> None:
    ids = [arg for i in range(1, n + 1) for arg in ("--id", f"{prefix}{i}")]
    for start in range(0, len(ids), 400):  # a bounded command line
        cloud(root, "provision", "--target", "local", *ids[start : start + 400])


def report(runs: list[Run]) -> None:
    print(
        f"{'runner':8} {'devices':>7} {'wall s':>7} {'readings':>15} {'once':>5} "
        f"{'read/s':>7} {'lag p50':>8} {'lag p99':>8} {'CPU s':>6} {'cores':>5} "
        f"{'RSS MiB':>8} {'threads':>7}  broker/ingest/table CPU s"
    )
    for r in runs:
        parts = "/".join(f"{r.parts_cpu_s.get(k, 0):.1f}" for k in ("mosquitto", "ingest", "table"))
        print(
            f"{r.runner:8} {r.devices:7d} {r.wall_s:7.1f} {r.in_table:7d}/{r.expected:<7d} "
            f"{'yes' if r.exactly_once else 'NO':>5} {r.rate:7.0f} {r.lag_p50_s:8.2f} "
            f"{r.lag_p99_s:8.2f} {r.cpu_s:6.1f} {r.cpu_s / r.wall_s:5.2f} "
            f"{r.peak_rss_mib:8.1f} {r.threads:7d}  {parts}" + (f"  (exit {r.rc})" if r.rc else "")
        )
    for r in runs:
        if r.runner != "fleet":
            continue
        met = (
            r.rc == 0
            and r.exactly_once
            and r.lag_p99_s <= LAG_GOAL_S
            and r.rate >= RATE_GOAL * r.devices
        )
        harness.print_goal(
            f"{r.devices} devices at 1 Hz ({RATE_GOAL:.0%} of it kept), every reading in "
            f"the table exactly once, p99 lag <= {LAG_GOAL_S:g} s",
            None,
            met,
        )
    base = {r.devices: r for r in runs if r.runner == "threads"}
    for r in runs:
        if r.runner == "fleet" and r.devices in base:
            b = base[r.devices]
            print(
                f"{r.devices} devices, fleet/threads: CPU {r.cpu_s / b.cpu_s:.2f}, "
                f"RSS {r.peak_rss_mib / b.peak_rss_mib:.2f}, threads {r.threads}/{b.threads}"
            )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="100,500,1000", help="fleet sizes, comma-separated")
    parser.add_argument("--count", type=int, default=45, help="readings per device (1 Hz)")
    parser.add_argument("--baseline", type=int, default=100,
                        help="devices for the threaded baseline (0: none)")  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="sizes 20,100; 25 readings")
    args = parser.parse_args()
    if args.quick:
        args.sizes, args.count, args.baseline = "20,100", 25, 20
    sizes = [int(s) for s in args.sizes.split(",")]
    if args.count <= STEADY_FROM_SEQ:
        parser.error(f"--count must be above {STEADY_FROM_SEQ}, the seq lag is counted from")
    runs: list[Run] = []
    with contextlib.ExitStack() as stack:
        root = harness.temp_folder(stack, "bench-fleet-")
        stack.callback(local_down, root)
        mqtt_port, table_port = free_port(), free_port()
        cloud(root, "local", "up", "--mqtt-port", str(mqtt_port), "--table-port", str(table_port))
        url = f"http://127.0.0.1:{table_port}"
        plan = [("fleet", n) for n in sizes]
        if args.baseline:
            plan.insert(0, ("threads", args.baseline))
            if args.baseline not in sizes:
                plan.insert(1, ("fleet", args.baseline))
        for runner, n in plan:
            provision(root, f"{runner[0]}{n}-", n)
        for runner, n in plan:
            print(f"running {n} devices on {runner} ...", flush=True)
            runs.append(measure(root, url, runner, n, args.count))
        print(f"\n{args.count} readings per device at 1 Hz, through `cloud local up` "
              f"(lag from seq {STEADY_FROM_SEQ} on; {os.cpu_count()} CPUs)\n")  # fmt: skip
        report(runs)
    return 0


if __name__ == "__main__":
    sys.exit(harness.run(main, __file__))
