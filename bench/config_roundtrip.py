"""Remote config's round trip, and the health message's size: one agent on a local
Mosquitto (mutual TLS, the project's ACL), the cloud's part played by an `ingest` reader.

The round trip is timed from publishing a retained desired config to receiving the
device's retained `reported` for that version (each desired changes health_interval, so
nothing else about the agent changes); the median of --rounds is the figure.

    .venv/bin/python bench/config_roundtrip.py [--rounds N]

Exit 0 once measured, 1 when it could not be set up or the agent did not answer, 130 when
interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import queue
import statistics
import subprocess
import time

import harness
from harness import BenchError

with harness.venv_imports(__file__):
    import paho.mqtt.client as mqtt
    from agent_child import find_agent_exe
    from broker import HOST, setting_up, start_broker
    from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

    from device.payload import (
        Desired,
        config_desired_topic,
        config_reported_topic,
        encode_desired,
        health_topic,
        parse_health,
        parse_reported,
    )

DEVICE = "bench-config"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        root = harness.temp_folder(stack, "config-roundtrip-")
        with setting_up():
            broker = start_broker(root, stack)
            device, cloud_id = broker.identity(DEVICE), broker.identity("ingest")
        reported: queue.Queue[tuple[float, int]] = queue.Queue()
        health: list[bytes] = []
        cloud = mqtt.Client(
            CallbackAPIVersion.VERSION2, "ingest", protocol=MQTTProtocolVersion.MQTTv5
        )
        cloud.tls_set(str(cloud_id.ca), str(cloud_id.cert), str(cloud_id.key))

        def on_message(c: mqtt.Client, u: object, msg: mqtt.MQTTMessage) -> None:
            if msg.topic == health_topic(DEVICE):
                health.append(bytes(msg.payload))
            else:
                reported.put((time.perf_counter(), parse_reported(bytes(msg.payload)).version))

        cloud.on_message = on_message
        cloud.connect(HOST, broker.port)
        cloud.subscribe([(config_reported_topic(DEVICE), 1), (health_topic(DEVICE), 1)])
        cloud.loop_start()
        stack.callback(cloud.loop_stop)
        agent = subprocess.Popen(
            [str(find_agent_exe()), "--id", DEVICE, "--broker", f"mqtts://{HOST}:{broker.port}",
             "--cert", str(device.cert), "--key", str(device.key), "--ca", str(device.ca),
             "--outbox", str(root / "outbox.sqlite"), "--clock-wait", "0", "--flush-timeout", "0",
             "-q"],
            stdout=subprocess.DEVNULL,  # its tally, and warnings about readings nobody reads
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        stack.callback(agent.wait)
        stack.callback(agent.terminate)
        rounds: list[float] = []
        for version in range(1, args.rounds + 1):
            payload = encode_desired(Desired(version, {"health_interval": 60 + version}))
            sent = time.perf_counter()
            cloud.publish(config_desired_topic(DEVICE), payload, qos=1, retain=True)
            while True:
                try:
                    at, got = reported.get(timeout=30)
                except queue.Empty:
                    raise BenchError(f"no reported config for v{version} within 30 s") from None
                if got == version:
                    rounds.append(at - sent)
                    break
        if not health:
            raise BenchError("no health message came")
        parse_health(health[-1], DEVICE)
        ms = sorted(r * 1000 for r in rounds)
        print(f"config round trip over {len(ms)} rounds: median {statistics.median(ms):.1f} ms, "
              f"min {ms[0]:.1f} ms, max {ms[-1]:.1f} ms")  # fmt: skip
        print(f"health message: {len(health[-1])} bytes: {health[-1].decode()}")
    harness.print_wall_time(started)
    return 0


if __name__ == "__main__":
    raise SystemExit(harness.run(main, __file__))
