"""Remote config's round trip, and the health message's size: one agent on a local
Mosquitto (mutual TLS, the project's ACL), the cloud's part played by an `ingest` reader.

The round trip is timed from publishing a retained desired config to receiving the
device's retained `reported` for that version (each desired changes health_interval, so
nothing else about the agent changes); the median of --rounds is the figure, beside a
bare paho responder's (the baseline) timed the same way in the same run.

    .venv/bin/python bench/config_roundtrip.py [--rounds N] [--quick]

Exit 0 once measured, 1 when it could not be set up or the agent did not answer, 130 when
interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import queue
import socket
import statistics
import subprocess
import time
from typing import Any

import harness
from harness import BenchError

with harness.venv_imports(__file__):
    import paho.mqtt.client as mqtt
    from agent_child import find_agent_exe
    from broker import HOST, setting_up, start_broker
    from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

    from device.payload import (
        Desired,
        Reported,
        config_desired_topic,
        config_reported_topic,
        encode_desired,
        encode_reported,
        health_topic,
        parse_desired,
        parse_health,
        parse_reported,
    )

DEVICE = "bench-config"
#: The baseline: a bare paho client that answers each desired config with its `reported`
#: at once (no checks, no outbox write), on the same broker in the same run.
BASELINE = "bench-config-baseline"


def nodelay(client: mqtt.Client) -> None:
    # As the agent's session does: without it, each publish after a PUBACK waits for the
    # broker's delayed ACK, and the figure would be Nagle's.
    sock = client.socket()
    assert isinstance(sock, socket.socket)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def start_responder(port: int, ident: Any, stack: contextlib.ExitStack) -> None:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, BASELINE, protocol=MQTTProtocolVersion.MQTTv5)
    client.tls_set(str(ident.ca), str(ident.cert), str(ident.key))

    def on_message(c: mqtt.Client, u: object, msg: mqtt.MQTTMessage) -> None:
        desired = parse_desired(bytes(msg.payload))
        answer = Reported(BASELINE, desired.version, "applied", dict(desired.settings))
        c.publish(config_reported_topic(BASELINE), encode_reported(answer), qos=1, retain=True)

    client.on_message = on_message
    client.connect(HOST, port)
    nodelay(client)
    client.subscribe(config_desired_topic(BASELINE), qos=1)
    client.loop_start()
    stack.callback(client.loop_stop)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--quick", action="store_true", help="5 rounds (make bench BENCH=--quick)")
    args = parser.parse_args()
    if args.quick:
        args.rounds = 5
    if args.rounds < 1:
        parser.error("--rounds: at least 1")
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        root = harness.temp_folder(stack, "config-roundtrip-")
        with setting_up():
            broker = start_broker(root, stack)
            device, cloud_id = broker.identity(DEVICE), broker.identity("ingest")
            start_responder(broker.port, broker.identity(BASELINE), stack)
        reported: dict[str, queue.Queue[tuple[float, int]]] = {
            DEVICE: queue.Queue(),
            BASELINE: queue.Queue(),
        }
        health: list[bytes] = []
        cloud = mqtt.Client(
            CallbackAPIVersion.VERSION2, "ingest", protocol=MQTTProtocolVersion.MQTTv5
        )
        cloud.tls_set(str(cloud_id.ca), str(cloud_id.cert), str(cloud_id.key))

        def on_message(c: mqtt.Client, u: object, msg: mqtt.MQTTMessage) -> None:
            if msg.topic == health_topic(DEVICE):
                health.append(bytes(msg.payload))
            else:
                answer = parse_reported(bytes(msg.payload))
                reported[answer.sensor_id].put((time.perf_counter(), answer.version))

        cloud.on_message = on_message
        cloud.connect(HOST, broker.port)
        nodelay(cloud)
        cloud.subscribe(
            [
                (config_reported_topic(DEVICE), 1),
                (config_reported_topic(BASELINE), 1),
                (health_topic(DEVICE), 1),
            ]
        )
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

        def round_trip(device_id: str, version: int) -> float:
            payload = encode_desired(Desired(version, {"health_interval": 60 + version}))
            sent = time.perf_counter()
            cloud.publish(config_desired_topic(device_id), payload, qos=1, retain=True)
            while True:
                try:
                    at, got = reported[device_id].get(timeout=30)
                except queue.Empty:
                    raise BenchError(f"{device_id}: no reported config for v{version}") from None
                if got == version:
                    return (at - sent) * 1000

        # Round 0 of each side waits for its connect: not counted.
        round_trip(DEVICE, 1)
        round_trip(BASELINE, 1)
        agent_ms, base_ms = [], []
        for version in range(2, args.rounds + 2):  # side by side, alternating
            base_ms.append(round_trip(BASELINE, version))
            agent_ms.append(round_trip(DEVICE, version))
        if not health:
            raise BenchError("no health message came")
        parse_health(health[-1], DEVICE)
        agent_med, base_med = statistics.median(agent_ms), statistics.median(base_ms)
        print(f"config round trip over {args.rounds} rounds, median (min..max):")
        print(f"  baseline (bare paho responder) {base_med:.1f} ms "
              f"({min(base_ms):.1f}..{max(base_ms):.1f})")  # fmt: skip
        print(f"  agent                          {agent_med:.1f} ms "
              f"({min(agent_ms):.1f}..{max(agent_ms):.1f})")  # fmt: skip
        print(f"  ratio agent/baseline           {agent_med / base_med:.1f}x")
        print(f"health message: {len(health[-1])} bytes: {health[-1].decode()}")
    harness.print_wall_time(started)
    return 0


if __name__ == "__main__":
    raise SystemExit(harness.run(main, __file__))
