"""The dashboard page under a fleet: its time to first paint and to a full page (every
device's hour of history charted), then how many live readings per second it draws and how
old they are when drawn, with --devices devices publishing at --rate Hz each.

Its own Mosquitto (mutual TLS, the project's ACL) and the local stack's table engine
(dynalite), the dashboard in this process, the publishers in a child process (a client and
certificate per device, as real devices), and Debian's Chromium headless. The baseline, in
the same run: a bare paho subscriber in a process of its own, counting the same readings
and their age on arrival; the page's figures are given as ratios to it.

    .venv/bin/python bench/dashboard.py [--devices N] [--seconds S] [--rate HZ] [--quick]

Exit 0 once measured, 1 when it could not be set up, 130 when interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import harness
from harness import BenchError

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # tests.browser: the one place Chromium is launched from

with harness.venv_imports(__file__):
    from broker import HOST, setting_up, start_broker
    from table_load import start_dynalite

    from cloud.dashboard.server import Dashboard
    from cloud.identity.local_ca import certs_dir
    from cloud.ingest.rule import to_item
    from cloud.local.state import StackState
    from cloud.table import create_table
    from cloud.target import Target
    from device.payload import Reading
    from tests.browser import chromium, console_errors

TABLE = "SensorData"
HISTORY_POINTS = 60  # one a minute over the last hour, per device
#: Readings drawn per second, as a share of those sent, and the newest's age when drawn.
GOAL_SHARE = 0.95
GOAL_P95_LAG_MS = 1000

#: Devices publishing at `rate` Hz each for `seconds`, phases spread over the period; then
#: "sent N" on stdout. argv: host port seconds rate then (id cert key ca) per device.
_PUBLISHERS = r"""
import json, sys, time, paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
host, port, seconds, rate = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
rest = sys.argv[5:]
devices = [rest[i:i + 4] for i in range(0, len(rest), 4)]
clients = []
for sensor_id, cert, key, ca in devices:
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=sensor_id,
                    protocol=MQTTProtocolVersion.MQTTv5)
    c.tls_set(ca, cert, key)
    c.will_set(f"sensors/{sensor_id}/status", "offline", qos=1, retain=True)
    c.connect(host, port)
    c.loop_start()
    # As an agent does: the dashboard learns of a device from its retained status.
    c.publish(f"sensors/{sensor_id}/status", "online", qos=1, retain=True).wait_for_publish(10)
    clients.append((sensor_id, c))
print("connected", flush=True)
sys.stdin.readline()  # go
period = 1 / rate
start = time.monotonic()
sent = 0
seq = 0
while time.monotonic() - start < seconds:
    for i, (sensor_id, c) in enumerate(clients):
        due = start + seq * period + i * period / len(clients)
        pause = due - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        body = {"v": 1, "sensor_id": sensor_id, "ts": int(time.time() * 1000), "seq": seq,
                "temperature": round(20 + (seq % 50) / 10, 2)}
        c.publish(f"sensors/{sensor_id}/data", json.dumps(body), qos=1)
        sent += 1
    seq += 1
for _, c in clients:
    c.disconnect()
    c.loop_stop()
print(f"sent {sent}", flush=True)
"""

#: The baseline: counts readings and their age on arrival until stdin closes; then one
#: JSON line. argv: host port cert key ca.
_BASELINE = r"""
import json, sys, threading, time, paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
host, port, cert, key, ca = sys.argv[1], int(sys.argv[2]), *sys.argv[3:6]
lags = []
first = last = None
def message(c, u, msg):
    global first, last
    now = time.time() * 1000
    lags.append(now - json.loads(msg.payload)["ts"])
    first = first or now
    last = now
c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="baseline",
                protocol=MQTTProtocolVersion.MQTTv5)
c.tls_set(ca, cert, key)
c.on_connect = lambda c, *_: c.subscribe("sensors/+/data", qos=1)
c.on_subscribe = lambda *_: print("ready", flush=True)
c.on_message = message
c.connect(host, port)
c.loop_start()
sys.stdin.read()
c.loop_stop()
print(json.dumps({"count": len(lags), "lags": lags}), flush=True)
"""


def percentile(samples: list[float], pct: int) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * pct / 100))]


def fill_history(endpoint: Any, ids: list[str], now_ms: int) -> None:
    ddb = endpoint.client("dynamodb")
    create_table(ddb, TABLE)
    items = [
        to_item(r.topic, r.to_payload())
        for sensor_id in ids
        for r in (
            Reading(sensor_id, now_ms - (HISTORY_POINTS - i) * 60_000, i, 20 + i / 10)
            for i in range(HISTORY_POINTS)
        )
    ]
    for start in range(0, len(items), 25):
        batch = [{"PutRequest": {"Item": item}} for item in items[start : start + 25]]
        ddb.batch_write_item(RequestItems={TABLE: batch})


def child(stack: contextlib.ExitStack, script: str, *args: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", script, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    stack.callback(proc.wait)
    stack.callback(proc.kill)
    return proc


def expect(proc: subprocess.Popen[str], word: str) -> str:
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    if not line.startswith(word):
        raise BenchError(f"a child said {line!r} where {word!r} was expected")
    return line


def measure(devices: int, seconds: float, rate: float) -> None:
    with contextlib.ExitStack() as stack:
        root = harness.temp_folder(stack, "bench-dashboard-")
        with setting_up():
            broker = start_broker(root, stack)
            engine = start_dynalite(root, stack)
            ids = [f"bench-{n:03d}" for n in range(devices)]
            fill_history(engine.endpoint, ids, int(time.time() * 1000))
            broker.ca.issue("dashboard", certs_dir(root) / "dashboard")
            table_port = int((engine.endpoint.url or "").rsplit(":", 1)[1])
            state = StackState(
                root=str(root), mqtt_port=broker.port, table_port=table_port, data_dir=str(root)
            )
            target = Target("local", engine.endpoint, TABLE, state, "bench")
            dashboard = Dashboard(target, HOST, 0)
            server = threading.Thread(target=dashboard.run, daemon=True)
            server.start()
            stack.callback(server.join, 10)
            stack.callback(dashboard.stop)
            publisher_args: list[str] = []
            for sensor_id in ids:
                ident = broker.identity(sensor_id)
                publisher_args += [sensor_id, str(ident.cert), str(ident.key), str(ident.ca)]
            reader = broker.identity("ingest")
            baseline = child(
                stack, _BASELINE, HOST, str(broker.port),
                str(reader.cert), str(reader.key), str(reader.ca),
            )  # fmt: skip
            expect(baseline, "ready")
            publishers = child(
                stack, _PUBLISHERS, HOST, str(broker.port), str(seconds), str(rate),
                *publisher_args,
            )  # fmt: skip
            expect(publishers, "connected")
            browser = stack.enter_context(chromium())

        # The page, before any live reading: its paint and its full hour of history.
        browser.get(dashboard.url)
        deadline = time.monotonic() + 60
        while not browser.execute_script("return window.dashboard.ready"):
            if time.monotonic() > deadline:
                raise BenchError("the page did not load its histories in 60 s")
            time.sleep(0.05)
        paint = browser.execute_script(
            "const p = performance.getEntriesByName('first-contentful-paint')[0];"
            "return [p ? p.startTime : null, window.dashboard.readyAtMs,"
            " window.dashboard.charts.size]"
        )
        if paint[2] != devices:
            raise BenchError(f"the page charted {paint[2]} devices, not {devices}")

        # The fleet publishes; the page's counters are read after a warm-up second.
        assert publishers.stdin is not None
        publishers.stdin.write("go\n")
        publishers.stdin.flush()
        time.sleep(1.0)
        read = "return [window.dashboard.readings, window.dashboard.renders, performance.now()]"
        r0, d0, t0 = browser.execute_script(read)
        browser.execute_script("window.dashboard.lagsMs = []")
        time.sleep(max(1.0, seconds - 2.0))
        r1, d1, t1 = browser.execute_script(read)
        lags = browser.execute_script("return window.dashboard.lagsMs.slice()")
        sent_line = expect(publishers, "sent")
        assert baseline.stdin is not None
        baseline.stdin.close()
        assert baseline.stdout is not None
        base = json.loads(baseline.stdout.readline())
        errors = console_errors(browser)

    span_s = (t1 - t0) / 1000
    page_rate = (r1 - r0) / span_s
    offered = devices * rate
    base_lags = base["lags"]
    print(f"dashboard: {devices} devices at {rate:g} Hz for {seconds:g} s; {sent_line}")
    print(
        f"  first contentful paint {paint[0]:.0f} ms; every chart with its hour "
        f"({HISTORY_POINTS} points x {devices}) at {paint[1]:.0f} ms"
    )
    print(
        f"  readings drawn  {page_rate:7.1f}/s  (offered {offered:g}/s; baseline subscriber "
        f"got {base['count']} readings)  chart redraws {(d1 - d0) / span_s:.1f}/s"
    )
    if lags:
        print(
            f"  age when drawn  p50 {statistics.median(lags):.0f} ms  p95 "
            f"{percentile(lags, 95):.0f} ms   baseline on arrival  p50 "
            f"{statistics.median(base_lags):.0f} ms  p95 {percentile(base_lags, 95):.0f} ms"
        )
    print(f"  console errors: {len(errors)}")
    harness.print_goal(
        f"page draws >= {GOAL_SHARE:.0%} of {offered:g} readings/s",
        f"{page_rate / offered:.2f}",
        page_rate >= GOAL_SHARE * offered,
    )
    p95 = percentile(lags, 95) if lags else float("inf")
    harness.print_goal(
        f"p95 age when drawn < {GOAL_P95_LAG_MS} ms", f"{p95:.0f} ms", p95 < GOAL_P95_LAG_MS
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int)
    parser.add_argument("--seconds", type=float)
    parser.add_argument("--rate", type=float, default=1.0, help="readings per second per device")
    parser.add_argument("--quick", action="store_true", help="20 devices for 8 s")
    args = parser.parse_args(argv)
    sizes = {"devices": 20, "seconds": 8.0} if args.quick else {"devices": 100, "seconds": 30.0}
    harness.default_sizes(args, sizes)
    if args.devices < 1 or args.seconds < 4 or args.rate <= 0:
        parser.error("--devices >= 1, --seconds >= 4, --rate > 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()

    def run() -> int:
        measure(args.devices, args.seconds, args.rate)
        harness.print_wall_time(started, load=True)
        return 0

    return harness.run(run, __file__)


if __name__ == "__main__":
    sys.exit(main())
