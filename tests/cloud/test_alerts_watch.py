"""`cloud alerts watch` and `cloud alerts test` as users run them: the real command on a
real broker, a webhook receiver that checks the exact JSON, SNS on moto, the table on moto."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from cloud.alerts.notify import NotifyError, Sns, Stdout, Webhook, stack_topic_arn
from cloud.alerts.rules import format_span as span
from cloud.alerts.rules import parse_rules
from cloud.alerts.watch import Watcher
from cloud.aws import Endpoint
from cloud.cli import main
from cloud.errors import ConfigError
from cloud.ingest.rule import to_item
from cloud.live.events import LiveEvent
from cloud.local.ports import free_port
from cloud.stack.deploy import deploy
from cloud.timeparse import iso_ms, parse_time_ms
from device.payload import Reading
from tests.conftest import BrokerFactory, Pki
from tests.mqtt import CHILDREN, REPO, MqttClient, wait_until

T0 = 1_764_345_600_000  # 2025-11-28T16:00:00Z


class Receiver:
    """A webhook receiver: keeps every JSON body POSTed; answers `fail` (a status) to the
    first `failures` requests."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.attempts = 0
        self.failures = 0
        self.fail = 500
        self.headers: list[str] = []
        self._cond = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with receiver._cond:
                    receiver.attempts += 1
                    receiver.headers.append(self.headers["Content-Type"])
                    failing = receiver.failures > 0
                    if failing:
                        receiver.failures -= 1
                    else:
                        receiver.bodies.append(body)
                    receiver._cond.notify_all()
                self.send_response(receiver.fail if failing else 204)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def wait(self, predicate: Callable[[list[dict[str, Any]]], bool], what: str) -> None:
        with self._cond:
            assert self._cond.wait_for(lambda: predicate(self.bodies), 30), (
                f"timed out waiting for {what}; got {self.bodies}"
            )

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


BODY = {
    "event": "fired",
    "rule": "r",
    "when": "seq gap",
    "sensor_id": "s1",
    "kind": "seq_gap",
    "since": "2025-11-28T16:00:00.000Z",
    "at": "2025-11-28T16:00:00.000Z",
    "value": 2.0,
    "message": "seq 1 -> 4: 2 reading(s) missing",
    "episode": f"r/s1/{T0}",
}


def test_the_webhook_gets_the_json_and_retries_a_failing_receiver(receiver: Receiver):
    pauses: list[float] = []
    hook = Webhook(receiver.url, timeout=5, attempts=3, sleep=pauses.append)
    receiver.failures = 2
    hook.send(BODY)
    assert receiver.bodies == [BODY] and receiver.attempts == 3
    assert receiver.headers == ["application/json"] * 3
    assert pauses == [0.5, 1.0]

    receiver.failures = 5
    with pytest.raises(NotifyError, match=r"^webhook http://127.0.0.1:\d+/\.\.\.: HTTP 500 "):
        hook.send(BODY)
    assert receiver.attempts == 6  # bounded: three, then given up

    receiver.failures, receiver.fail = 1, 400  # the receiver refuses the body: no retry
    with pytest.raises(NotifyError, match="HTTP 400"):
        hook.send(BODY)
    assert receiver.attempts == 7


def test_a_webhook_nobody_answers_fails_after_its_attempts():
    hook = Webhook(f"http://127.0.0.1:{free_port()}/", timeout=1, attempts=2, sleep=lambda s: None)
    with pytest.raises(
        NotifyError, match=r"^webhook http://127.0.0.1:\d+/\.\.\.: ConnectionRefusedError"
    ):
        hook.send(BODY)
    with pytest.raises(ConfigError, match="give an http:// or https:// URL"):
        Webhook("file:///etc/passwd")


def test_sns_publishes_the_json_to_the_stacks_topic(aws: Endpoint):
    name = f"alerts-{os.getpid()}-{free_port()}"
    with pytest.raises(ConfigError, match=f"no stack {name} for the alerts' SNS topic"):
        stack_topic_arn(aws, name)
    deploy(aws, name, {}, poll_seconds=0.05)
    arn = stack_topic_arn(aws, name)
    assert arn.endswith(f":{name}-alerts")
    sqs = aws.client("sqs")
    queue = sqs.create_queue(QueueName=f"{name}-q")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])
    aws.client("sns").subscribe(
        TopicArn=arn,
        Protocol="sqs",
        Endpoint=queue_arn["Attributes"]["QueueArn"],
        Attributes={"RawMessageDelivery": "true"},
    )
    Sns(aws.client("sns"), arn).send(BODY)
    got = sqs.receive_message(QueueUrl=queue, WaitTimeSeconds=5)["Messages"]
    assert [json.loads(m["Body"]) for m in got] == [BODY]


# -- the watcher, as a process on a real broker ---------------------------------------------


class Watch:
    """`cloud alerts watch` as a child process; its stdout and stderr lines as they come."""

    def __init__(self, args: list[str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cloud", "alerts", "watch", *args],
            cwd=REPO,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        CHILDREN.append(self.proc)
        self.out: list[str] = []
        self.err: list[str] = []
        self._cond = threading.Condition()
        self._readers = [
            threading.Thread(target=self._read, args=(stream, lines), daemon=True)
            for stream, lines in ((self.proc.stdout, self.out), (self.proc.stderr, self.err))
        ]
        for reader in self._readers:
            reader.start()

    def _read(self, stream: Any, lines: list[str]) -> None:
        for line in stream:
            with self._cond:
                lines.append(line.rstrip("\n"))
                self._cond.notify_all()

    def wait_err(self, text: str) -> None:
        with self._cond:
            ok = self._cond.wait_for(
                lambda: any(text in line for line in self.err) or self.proc.poll() is not None,
                30,
            )
        assert ok and self.proc.poll() is None, f"no {text!r} on stderr: {self.err}"

    def wait_out(self, n: int) -> list[str]:
        """The first `n` lines of stdout (a pipe may lag behind the webhook)."""
        with self._cond:
            assert self._cond.wait_for(lambda: len(self.out) >= n, 30), self.out
            return self.out[:n]

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(30)
        for reader in self._readers:  # every line it wrote, read to the end
            reader.join(10)
        return code


def rules_file(path: Path, dev: str, ghost: str, marker: bool = False) -> Path:
    text = (
        f'[[rule]]\nname = "too-warm"\nwhen = "temperature > 8"\nsensors = ["{dev}"]\n\n'
        f'[[rule]]\nname = "ghost-quiet"\nwhen = "no reading for 1s"\nsensors = ["{ghost}"]\n\n'
        f'[[rule]]\nname = "down"\nwhen = "offline"\nsensors = ["{dev}"]\n'
    )
    if marker:  # fires 1.5 s after the restart: any repeat of ghost-quiet would come first
        text += '\n[[rule]]\nname = "marker"\nwhen = "no reading for 1500ms"\n'
        text += f'sensors = ["{ghost}-m"]\n'
    path.write_text(text)
    return path


def test_watch_fires_and_clears_once_even_across_a_kill_and_restart(
    start_broker: BrokerFactory, pki: Pki, receiver: Receiver, device_id: str, tmp_path: Path
):
    broker = start_broker()
    port = broker.config.port
    watcher = pki.device("alerts")
    dev, ghost = device_id, f"{device_id}-ghost"
    state = tmp_path / "alerts-state.json"
    tls = ["--cert", str(watcher.cert), "--key", str(watcher.key), "--ca", str(watcher.ca)]
    common = ["--broker", f"mqtts://127.0.0.1:{port}", *tls, "--state", str(state)]
    common += ["--webhook", receiver.url, "--no-sns"]
    first = Watch([*common, "--rules", str(rules_file(tmp_path / "a.toml", dev, ghost))])
    first.wait_err("receiving the live stream")

    device = MqttClient.open(port, pki.device(dev), f"raw-{dev}", reconnect=True)
    device.publish(f"sensors/{dev}/data", Reading(dev, T0, 0, 9.5).to_payload())
    receiver.wait(lambda b: len(b) >= 1, "the threshold to fire")
    assert receiver.bodies[0] == {
        "event": "fired",
        "rule": "too-warm",
        "when": "temperature > 8",
        "sensor_id": dev,
        "kind": "threshold",
        "since": "2025-11-28T16:00:00.000Z",
        "at": "2025-11-28T16:00:00.000Z",
        "value": 9.5,
        "message": "temperature 9.5 > 8 (since 2025-11-28T16:00:00.000Z)",
        "episode": f"too-warm/{dev}/{T0}",
    }
    # A sensor a rule names and that never sent anything: stale 1 s after the watcher began.
    receiver.wait(lambda b: len(b) >= 2, "the ghost to be stale")
    quiet = receiver.bodies[1]
    since_ms = parse_time_ms(quiet["since"])
    assert quiet == {
        "event": "fired",
        "rule": "ghost-quiet",
        "when": "no reading for 1s",
        "sensor_id": ghost,
        "kind": "stale",
        "since": iso_ms(since_ms),
        "at": iso_ms(since_ms + 1000),
        "value": None,
        "message": f"no reading for 1s (none since {iso_ms(since_ms)})",
        "episode": f"ghost-quiet/{ghost}/{since_ms}",
    }
    device.client.publish(f"sensors/{dev}/status", b"offline", qos=1, retain=True).wait_for_publish(
        10
    )
    receiver.wait(lambda b: len(b) >= 3, "offline to fire")
    assert (receiver.bodies[2]["rule"], receiver.bodies[2]["event"]) == ("down", "fired")
    assert first.wait_out(3) == [
        f"2025-11-28T16:00:00.000Z FIRED   too-warm {dev}: temperature 9.5 > 8 (since "
        "2025-11-28T16:00:00.000Z)",
        f"{quiet['at']} FIRED   ghost-quiet {ghost}: {quiet['message']}",
        f"{receiver.bodies[2]['at']} FIRED   down {dev}: {receiver.bodies[2]['message']}",
    ]
    # Every remote delivery recorded as done: else a restart would send it again.
    wait_until(lambda: json.loads(state.read_text())["outbox"] == [], 10, "an empty outbox")

    first.proc.kill()  # SIGKILL: nothing of it runs on the way out
    first.proc.wait(10)
    # While it is away the sensor cools down and comes back online: the broker keeps the
    # reading for its session, and the status retained.
    device.publish(f"sensors/{dev}/data", Reading(dev, T0 + 1000, 1, 5.0).to_payload())
    device.client.publish(f"sensors/{dev}/status", b"online", qos=1, retain=True).wait_for_publish(
        10
    )

    second = Watch([*common, "--rules", str(rules_file(tmp_path / "b.toml", dev, ghost, True))])
    second.wait_err("receiving the live stream")
    receiver.wait(lambda b: any(x["rule"] == "marker" for x in b), "the marker rule")
    after = receiver.bodies[3:]
    assert {(b["rule"], b["event"]) for b in after[:2]} == {
        ("too-warm", "cleared"),
        ("down", "cleared"),
    }
    assert (after[2]["rule"], after[2]["event"]) == ("marker", "fired")
    assert len(after) == 3  # nothing fired again: not the warm one, the ghost, the offline
    cleared = next(b for b in after if b["rule"] == "too-warm")
    assert cleared == {
        "event": "cleared",
        "rule": "too-warm",
        "when": "temperature > 8",
        "sensor_id": dev,
        "kind": "threshold",
        "since": "2025-11-28T16:00:00.000Z",
        "at": "2025-11-28T16:00:01.000Z",
        "value": 5.0,
        "message": "temperature back to 5 (rule: > 8)",
        "episode": f"too-warm/{dev}/{T0}",
    }

    # One watcher per state file: a second would announce everything again.
    refused = CliRunner().invoke(
        main, ["alerts", "watch", *common, "--rules", str(tmp_path / "b.toml")]
    )
    assert refused.exit_code == 1
    assert refused.output == (
        f"Error: another `cloud alerts watch` (pid {second.proc.pid}) uses {state}: stop it, "
        "or give this one --state of its own\n"
    )
    assert len(second.wait_out(3)) == 3
    assert second.stop() == 0
    assert len(second.out) == 3
    saved = json.loads(state.read_text())
    assert [(e["rule"], e["sensor_id"]) for e in saved["episodes"]] == [
        ("ghost-quiet", ghost),
        ("marker", f"{ghost}-m"),
    ]
    device.close()


# -- cloud alerts test, over the table ------------------------------------------------------


def test_alerts_test_replays_the_tables_readings(
    aws: Endpoint, table: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    ddb = aws.client("dynamodb")
    temps = [5, 9, 9.5, 10, 6, 5]  # a reading a minute, then 10 minutes of silence, then one
    times = [T0 + i * 60_000 for i in range(len(temps))] + [T0 + 15 * 60_000]
    for i, (ts, t) in enumerate(zip(times, [*temps, 5], strict=True)):
        seq = i if i < 6 else i + 3  # readings 6..8 lost
        payload = Reading("fridge-1", ts, seq, t).to_payload()
        ddb.put_item(TableName=table, Item=to_item("sensors/fridge-1/data", payload))
    rules = tmp_path / "alerts.toml"
    rules.write_text(
        '[[rule]]\nname = "warm"\nwhen = "temperature > 8 for 2m"\nsensors = ["fridge-*"]\n\n'
        '[[rule]]\nname = "quiet"\nwhen = "no reading for 5m"\n\n'
        '[[rule]]\nname = "gap"\nwhen = "seq gap"\n\n'
        '[[rule]]\nname = "down"\nwhen = "offline for 1m"\n'
    )
    monkeypatch.setenv("SENSOR_TABLE", table)
    args = ["alerts", "test", "--rules", str(rules), "--target", "aws"]
    args += [
        "--endpoint-url",
        str(aws.url),
        "--since",
        iso_ms(T0),
        "--until",
        iso_ms(T0 + 20 * 60_000),
    ]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        "2025-11-28T16:03:00.000Z FIRED   warm fridge-1: temperature 10 > 8 for 2m (since "
        "2025-11-28T16:01:00.000Z)",
        "2025-11-28T16:04:00.000Z CLEARED warm fridge-1: temperature back to 6 (rule: > 8)",
        "2025-11-28T16:10:00.000Z FIRED   quiet fridge-1: no reading for 5m (last at "
        "2025-11-28T16:05:00.000Z)",
        "2025-11-28T16:15:00.000Z FIRED   gap fridge-1: seq 5 -> 9: 3 reading(s) missing",
        "2025-11-28T16:15:00.000Z CLEARED quiet fridge-1: reading again after 10m",
        "2025-11-28T16:20:00.000Z FIRED   quiet fridge-1: no reading for 5m (last at "
        "2025-11-28T16:15:00.000Z)",
    ]
    assert result.stderr.splitlines() == [
        "4 fired, 2 cleared, 2 still active at 2025-11-28T16:20:00.000Z (7 reading(s) of 1 "
        "sensor(s) from 2025-11-28T16:00:00.000Z)",
        "  active: gap fridge-1: seq 5 -> 9: 3 reading(s) missing",
        "  active: quiet fridge-1: no reading for 5m (last at 2025-11-28T16:15:00.000Z)",
        "not replayed (the table keeps no statuses): down",
    ]
    as_json = CliRunner().invoke(main, [*args, "--format", "json", "--id", "fridge-1"])
    assert [json.loads(line)["event"] for line in as_json.stdout.splitlines()] == [
        "fired",
        "cleared",
        "fired",
        "fired",
        "cleared",
        "fired",
    ]


def test_watch_refuses_what_it_cannot_do_before_it_starts(aws: Endpoint, tmp_path: Path):
    rules = rules_file(tmp_path / "a.toml", "s1", "s2")
    base = ["alerts", "watch", "--rules", str(rules), "--state", str(tmp_path / "s.json")]
    result = CliRunner().invoke(main, [*base, "--broker", "mqtts://127.0.0.1:8883"])
    assert result.exit_code == 2
    assert "--broker goes with --cert, --key and --ca (all four)" in result.output
    result = CliRunner().invoke(main, [*base, "--webhook", "ftp://x/"])
    assert (result.exit_code, result.output) == (
        1,
        "Error: --webhook 'ftp://x/': give an http:// or https:// URL\n",
    )
    # On AWS the alerts go to the stack's topic: no stack, no watcher (unless --no-sns).
    aws_side = ["--target", "aws", "--endpoint-url", str(aws.url), "--stack-name", "no-such"]
    result = CliRunner().invoke(main, [*base, *aws_side])
    assert (result.exit_code, result.output) == (
        1,
        "Error: no stack no-such for the alerts' SNS topic: deploy it with `cloud deploy`, or "
        "give --no-sns (or --sns-topic ARN)\n",
    )


class FakeStream:
    """Stands in for the broker in-process: says it receives once started."""

    def __init__(self, watcher: Watcher) -> None:
        self.watcher = watcher

    def start(self) -> None:
        self.watcher.on_state(None)

    def stop(self) -> None:
        pass


def test_a_dead_webhook_holds_up_nothing_and_is_given_up_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, receiver: Receiver
):
    gate = threading.Event()  # the webhook's pause between attempts lasts until we say so
    hook = Webhook(
        f"http://127.0.0.1:{free_port()}/", timeout=1, attempts=2, sleep=lambda s: gate.wait(30)
    )
    out = io.StringIO()
    state = tmp_path / "state.json"
    rules = parse_rules('[[rule]]\nname = "r"\nwhen = "seq gap"\n')
    watcher = Watcher(rules, state, Stdout(out), [hook, Webhook(receiver.url)])
    stop = threading.Event()
    runner = threading.Thread(target=watcher.run, args=(FakeStream(watcher), stop, 0.05))
    runner.start()
    for i, seq in enumerate([0, 5, 6, 10]):
        r = Reading("s1", T0 + i, seq, 20.0)
        watcher.on_event(LiveEvent("reading", "s1", T0 + i, reading=r))
    # Evaluated and printed at once, while the webhook is still between its attempts.
    assert [line.split(" ", 2)[1] for line in out.getvalue().splitlines()] == [
        "FIRED",
        "CLEARED",
        "FIRED",
    ]
    # The other remote has them all meanwhile; the outbox keeps them for the dead one.
    receiver.wait(lambda b: len(b) == 3, "the live webhook to get all three")
    assert [b["event"] for b in receiver.bodies] == ["fired", "cleared", "fired"]
    assert len(json.loads(state.read_text())["outbox"]) == 3
    gate.set()
    wait_until(lambda: json.loads(state.read_text())["outbox"] == [], 30, "the outbox to empty")
    stop.set()
    runner.join(30)
    failures = [r.getMessage() for r in caplog.records if "not delivered" in r.getMessage()]
    assert len(failures) == 3 and "ConnectionRefusedError" in failures[0]


def test_every_kind_fires_and_clears_through_the_webhook(
    start_broker: BrokerFactory, pki: Pki, receiver: Receiver, device_id: str, tmp_path: Path
):
    """One watcher, a rule of each kind on a sensor of its own, crafted readings and
    statuses: each rule's two notifications, as the webhook receives them."""
    broker = start_broker()
    port = broker.config.port
    ident = pki.device("alerts")
    warm, rate, gap, quiet, off = (f"{device_id}-{n}" for n in ("warm", "rate", "gap", "q", "off"))
    rules = tmp_path / "kinds.toml"
    rules.write_text(
        f'[[rule]]\nname = "warm"\nwhen = "temperature > 8 for 2s"\nsensors = ["{warm}"]\n'
        f'[[rule]]\nname = "rise"\nwhen = "temperature rises 2 in 10s"\nsensors = ["{rate}"]\n'
        f'[[rule]]\nname = "gap"\nwhen = "seq gap"\nsensors = ["{gap}"]\n'
        f'[[rule]]\nname = "quiet"\nwhen = "no reading for 1s"\nsensors = ["{quiet}"]\n'
        f'[[rule]]\nname = "off"\nwhen = "offline"\nsensors = ["{off}"]\n'
    )
    tls = ["--cert", str(ident.cert), "--key", str(ident.key), "--ca", str(ident.ca)]
    broker_args = ["--broker", f"mqtts://127.0.0.1:{port}", *tls, "--no-sns"]
    state = ["--state", str(tmp_path / "s.json")]
    watch = Watch([*broker_args, *state, "--webhook", receiver.url, "--rules", str(rules)])
    watch.wait_err("receiving the live stream")

    def send(sensor: str, *readings: tuple[int, int, float]) -> None:
        client = MqttClient.open(port, pki.device(sensor), f"raw-{sensor}")
        try:
            for offset_s, seq, temperature in readings:
                reading = Reading(sensor, T0 + offset_s * 1000, seq, temperature)
                client.publish(reading.topic, reading.to_payload())
        finally:
            client.close()

    def status(sensor: str, text: bytes) -> None:
        client = MqttClient.open(port, pki.device(sensor), f"raw-{sensor}")
        try:
            client.client.publish(f"sensors/{sensor}/status", text, qos=1).wait_for_publish(10)
        finally:
            client.close()

    def of(rule: str) -> list[dict[str, Any]]:
        return [b for b in receiver.bodies if b.get("rule") == rule]

    def body(rule: str, when: str, sensor: str, kind: str, **rest: Any) -> dict[str, Any]:
        return {"rule": rule, "when": when, "sensor_id": sensor, "kind": kind, **rest}

    # Threshold on the readings' clock: above 8 for 2 s, then back down.
    send(warm, (0, 0, 9.0), (1, 1, 9.5), (2, 2, 10.0), (3, 3, 6.0))
    receiver.wait(lambda b: len(of("warm")) == 2, "warm to fire and clear")
    assert of("warm") == [
        body("warm", "temperature > 8 for 2s", warm, "threshold", event="fired",
             since=iso_ms(T0), at=iso_ms(T0 + 2000), value=10.0,
             message=f"temperature 10 > 8 for 2s (since {iso_ms(T0)})",
             episode=f"warm/{warm}/{T0}"),
        body("warm", "temperature > 8 for 2s", warm, "threshold", event="cleared",
             since=iso_ms(T0), at=iso_ms(T0 + 3000), value=6.0,
             message="temperature back to 6 (rule: > 8)", episode=f"warm/{warm}/{T0}"),
    ]  # fmt: skip

    # Rate of change: 20 -> 23 in 5 s fires; 20 s on, nothing in the window rose 2.
    send(rate, (0, 0, 20.0), (5, 1, 23.0), (20, 2, 23.0))
    receiver.wait(lambda b: len(of("rise")) == 2, "rise to fire and clear")
    fired, cleared = of("rise")
    assert fired == body(
        "rise", "temperature rises 2 in 10s", rate, "rate", event="fired", since=iso_ms(T0),
        at=iso_ms(T0 + 5000), value=3.0, message="temperature rose 3 in 5s (20 -> 23)",
        episode=f"rise/{rate}/{T0}",
    )  # fmt: skip
    assert cleared == body(
        "rise", "temperature rises 2 in 10s", rate, "rate", event="cleared", since=iso_ms(T0),
        at=iso_ms(T0 + 20_000), value=23.0, message="temperature steady again at 23",
        episode=f"rise/{rate}/{T0}",
    )  # fmt: skip

    # A seq gap: 0, then 3 (1 and 2 lost); the next in sequence clears it.
    send(gap, (0, 0, 20.0), (1, 3, 20.0), (2, 4, 20.0))
    receiver.wait(lambda b: len(of("gap")) == 2, "gap to fire and clear")
    assert of("gap") == [
        body("gap", "seq gap", gap, "seq_gap", event="fired", since=iso_ms(T0 + 1000),
             at=iso_ms(T0 + 1000), value=2.0, message="seq 0 -> 3: 2 reading(s) missing",
             episode=f"gap/{gap}/{T0 + 1000}"),
        body("gap", "seq gap", gap, "seq_gap", event="cleared", since=iso_ms(T0 + 1000),
             at=iso_ms(T0 + 2000), value=4.0, message="seq in order again at 4",
             episode=f"gap/{gap}/{T0 + 1000}"),
    ]  # fmt: skip

    # Staleness with no reading at all (1 s after the watcher began); a reading clears it.
    receiver.wait(lambda b: len(of("quiet")) == 1, "quiet to fire")
    since_ms = parse_time_ms(of("quiet")[0]["since"])
    assert of("quiet")[0] == body(
        "quiet", "no reading for 1s", quiet, "stale", event="fired", since=iso_ms(since_ms),
        at=iso_ms(since_ms + 1000), value=None,
        message=f"no reading for 1s (none since {iso_ms(since_ms)})",
        episode=f"quiet/{quiet}/{since_ms}",
    )  # fmt: skip
    send(quiet, (0, 0, 20.0))
    receiver.wait(lambda b: len(of("quiet")) == 2, "quiet to clear")
    at_ms = parse_time_ms(of("quiet")[1]["at"])  # when the watcher received it
    assert of("quiet")[1] == body(
        "quiet", "no reading for 1s", quiet, "stale", event="cleared", since=iso_ms(since_ms),
        at=iso_ms(at_ms), value=None, message=f"reading again after {span(at_ms - since_ms)}",
        episode=f"quiet/{quiet}/{since_ms}",
    )  # fmt: skip

    # Offline, from the device's status, and online again.
    status(off, b"offline")
    receiver.wait(lambda b: len(of("off")) == 1, "off to fire")
    status(off, b"online")
    receiver.wait(lambda b: len(of("off")) == 2, "off to clear")
    fired, cleared = of("off")
    down_ms, up_ms = parse_time_ms(fired["since"]), parse_time_ms(cleared["at"])
    assert [fired, cleared] == [
        body("off", "offline", off, "offline", event="fired", since=iso_ms(down_ms),
             at=iso_ms(down_ms), value=None, message=f"offline for 0s (since {iso_ms(down_ms)})",
             episode=f"off/{off}/{down_ms}"),
        body("off", "offline", off, "offline", event="cleared", since=iso_ms(down_ms),
             at=iso_ms(up_ms), value=None, message=f"online again after {span(up_ms - down_ms)}",
             episode=f"off/{off}/{down_ms}"),
    ]  # fmt: skip

    assert len(receiver.bodies) == 10  # two each, nothing more
    assert watch.stop() == 0
    assert len(watch.out) == 10


def test_unusable_certificates_or_state_folder_are_one_line(tmp_path: Path):
    bad = tmp_path / "bad.pem"
    bad.write_text("not a certificate\n")
    rules = str(REPO / "config" / "alerts.toml")
    tls = ["--cert", str(bad), "--key", str(bad), "--ca", str(bad)]
    broker = ["--broker", f"mqtts://127.0.0.1:{free_port()}", *tls, "--no-sns"]
    result = CliRunner().invoke(
        main, ["alerts", "watch", "--rules", rules, *broker, "--state", str(tmp_path / "s.json")]
    )
    assert result.exit_code == 1
    assert result.output.startswith(f"Error: the certificate {bad}, key {bad} or CA {bad} ")
    assert result.output.endswith("give PEM files (`cloud provision` makes them)\n")
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    result = CliRunner().invoke(
        main, ["alerts", "watch", "--rules", rules, *broker, "--state", str(blocked / "s.json")]
    )
    assert (result.exit_code, result.output) == (
        1,
        f"Error: --state {blocked / 's.json'}: cannot keep the alerts' state there (File "
        "exists); give a folder this user may write\n",
    )
