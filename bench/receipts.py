"""What receipts cost: readings per second from a fleet into the table, with and without.

Both sides run the same fleet (`device-agent simulate`, 5 devices, --interval 0) against the
same Mosquitto, the same `cloud ingest` (a thread of this process) and the same moto server,
in alternating rounds, each round with device ids of its own so every reading is a new item.
A run is timed from spawn until its last reading is in the table:
- with `--receipts` the fleet exits once ingest has confirmed every reading, so that is the
  moment the fleet exits;
- without, the fleet exits at its last PUBACK and the clock runs on until ingest has
  written the last reading.
The headline is the ratio with/without. Ingest publishes receipts in both (as the local
stack's does); without, the devices do not subscribe, so the broker drops them. It also
prints how many receipt messages ingest sent per reading.

    .venv/bin/python bench/receipts.py [--readings N] [--rounds R]

Everything runs on 127.0.0.1 in a temporary folder that is deleted at the end. Exit 0 once
measured, 1 when the bench could not be set up or a run failed, 130 when interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import harness
from harness import BenchError

# This machine runs no NTP: agents would hold their readings for --clock-wait (120 s).
os.environ.setdefault("DEVICE_AGENT_CLOCK_WAIT", "0")

with harness.venv_imports(__file__):
    from agent_child import find_agent_exe
    from broker import HOST, pick_port, setting_up, start_broker

    from cloud.aws import Endpoint
    from cloud.ingest.service import Ingest
    from cloud.ingest.settings import IngestSettings
    from cloud.local.moto import MotoServer
    from cloud.table import create_table

DEVICES = 5
TABLE = "SensorData"


def run_fleet(root: Path, prefix: str, readings: int, receipts: bool, ingest: Ingest) -> float:
    """Seconds from spawn until the fleet's last reading is in the table."""
    target = ingest.stats.written + DEVICES * readings
    argv = [
        str(find_agent_exe()),
        "simulate",
        "--devices",
        str(DEVICES),
        "--prefix",
        prefix,
        "--count",
        str(readings),
        "--interval",
        "0",
        "--broker",
        f"mqtts://{HOST}:{ingest.settings.port}",
        "--certs-dir",
        str(root / "devices"),
        "--outbox-dir",
        str(root / "outbox" / prefix),
        "--receipts" if receipts else "--no-receipts",
        "-q",
    ]
    started = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=False)
    if done.returncode != 0:
        raise BenchError(f"fleet {prefix} failed: {done.stderr.strip()[-500:]}")
    deadline = time.monotonic() + 120
    while ingest.stats.written < target:  # with receipts: already there
        if time.monotonic() > deadline:
            raise BenchError(f"fleet {prefix}: the table never got all its readings")
        time.sleep(0.005)
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--readings", type=int, default=2000, help="per device [2000]")
    parser.add_argument("--rounds", type=int, default=3, help="[3]")
    parser.add_argument("--quick", action="store_true", help="500 readings, 2 rounds")
    args = parser.parse_args()
    if args.quick:
        args.readings, args.rounds = 500, 2
    with contextlib.ExitStack() as stack:
        root = harness.temp_folder(stack, "bench-receipts-")
        with setting_up():
            broker = start_broker(root, stack)
            moto = MotoServer(pick_port(), root / "moto.log")
            stack.callback(moto.stop)
            moto.start()
            endpoint = Endpoint.local(moto.port)
            create_table(endpoint.client("dynamodb"), TABLE)
            # Two fleets a round, each with ids of its own (`simulate` names them PREFIXn).
            prefixes = [f"r{run}-" for run in range(2 * args.rounds)]
            for name in [f"{p}{n}" for p in prefixes for n in range(1, DEVICES + 1)]:
                broker.identity(name)
            ingest_identity = broker.identity("ingest")
        ingest = Ingest(
            IngestSettings(
                host=HOST,
                port=broker.port,
                tls=ingest_identity,
                endpoint=endpoint,
                table=TABLE,
                dead_letter=root / "dead-letter.jsonl",
                report_every=3600,
            )
        )
        stop = threading.Event()
        worker = threading.Thread(target=ingest.run, args=(stop,), daemon=True)
        worker.start()
        stack.callback(worker.join, 15)
        stack.callback(stop.set)
        if not ingest.ready.wait(30):
            raise BenchError("ingest never subscribed")

        total = DEVICES * args.readings
        rates: dict[bool, list[float]] = {True: [], False: []}
        receipt_messages = 0
        for r in range(args.rounds):
            # Alternate which side goes first, so neither always meets a warmer broker.
            order = (False, True) if r % 2 == 0 else (True, False)
            for receipts in order:
                before = ingest.stats.receipts
                seconds = run_fleet(root, prefixes.pop(0), args.readings, receipts, ingest)
                if receipts:
                    receipt_messages += ingest.stats.receipts - before
                rates[receipts].append(total / seconds)
                print(
                    f"round {r + 1}: {'receipts   ' if receipts else 'no receipts'} "
                    f"{total} readings to the table in {seconds:.2f}s ({total / seconds:,.0f}/s)",
                    flush=True,
                )
        with_r, without = statistics.median(rates[True]), statistics.median(rates[False])
        print(
            f"\nmedian of {args.rounds}: {DEVICES} devices x {args.readings} readings, "
            f"device to table\n"
            f"  without receipts: {without:,.0f} readings/s\n"
            f"  with receipts:    {with_r:,.0f} readings/s\n"
            f"  ratio with/without: {with_r / without:.2f}\n"
            f"  receipt messages per reading: {receipt_messages / (args.rounds * total):.3f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(harness.run(main, __file__))
