"""`cloud alerts watch | test`: the rules of config/alerts.toml over the live stream, or
over a past time range of the table (cloud.alerts does the work)."""

from __future__ import annotations

import logging
import re
import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

import click

from cloud import target as targets
from cloud.alerts.rules import DEFAULT_PATH, load_rules
from cloud.cli import options
from cloud.cli.errors import reports_errors
from cloud.table import query_readings
from cloud.target import Target
from cloud.timeparse import iso_ms, parse_time_ms

if TYPE_CHECKING:
    from cloud.live.stream import Stream

# The engine, the notifiers and the MQTT client are imported by the commands that use them:
# every other `cloud` command would pay for them at start (about 0.1 s).

log = logging.getLogger(__name__)

#: The watcher identity of the local stack's broker (cloud.local.mosquitto.WATCHERS).
WATCHER = "alerts"

rules_option = click.option(
    "--rules",
    "rules_path",
    type=click.Path(path_type=Path, dir_okay=False),
    default=DEFAULT_PATH,
    show_default=True,
    envvar="CLOUD_ALERTS_RULES",
    help="The rules file [also CLOUD_ALERTS_RULES].",
)
format_option = click.option(
    "--format",
    "fmt",
    type=click.Choice(("text", "json")),
    default="text",
    show_default=True,
    help="A line per notification, or its JSON (the webhook's body) per line.",
)


@click.group()
def alerts() -> None:
    """Alerts on the fleet: thresholds, rates of change, staleness, seq gaps, offline."""


@alerts.command()
@rules_option
@click.option(
    "--state",
    "state_path",
    type=click.Path(path_type=Path, dir_okay=False),
    # CLOUD_ALERTS_STATE is read by default_state_path, the dashboard's default too.
    help="Where active episodes are kept across restarts [CLOUD_ALERTS_STATE, else the local "
    "stack's data folder, else var/alerts/aws-state.json].",
)
@click.option(
    "--webhook",
    "webhooks",
    multiple=True,
    metavar="URL",
    help="POST each notification's JSON here (repeat for more).",
)
@click.option(
    "--sns/--no-sns",
    default=None,
    help="Publish to the stack's SNS topic (AlertsTopicArn) [on by default on AWS].",
)
@click.option("--sns-topic", metavar="ARN", help="Publish to this SNS topic instead.")
@options.stack_name("The deployed stack whose SNS topic gets the alerts (AWS).")
@click.option(
    "--broker",
    metavar="mqtts://HOST:PORT",
    help="Read the live stream from this broker (with --cert, --key, --ca) instead of the "
    "local stack's.",
)
@click.option("--cert", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@click.option("--key", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@click.option("--ca", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@click.option(
    "--client-id", default="cloud-alerts", show_default=True, help="MQTT client id (--broker)."
)
@format_option
@options.target_options
@reports_errors
def watch(
    rules_path: Path,
    state_path: Path | None,
    webhooks: tuple[str, ...],
    sns: bool | None,
    sns_topic: str | None,
    stack_name: str,
    broker: str | None,
    cert: Path | None,
    key: Path | None,
    ca: Path | None,
    client_id: str,
    fmt: str,
    target: str | None,
    endpoint_url: str | None,
) -> None:
    """Evaluate the rules on the live stream until stopped (Ctrl-C, SIGTERM).

    Each episode is announced once when it fires and once when it clears, on stdout, to
    every --webhook and, on AWS, to the stack's SNS topic. Episodes are kept in --state: a
    restarted watcher does not announce them again.
    """
    from cloud.alerts.notify import Stdout, remote_notifiers
    from cloud.alerts.state import default_state_path
    from cloud.alerts.watch import Watcher, state_lock
    from cloud.identity.local_ca import Identity
    from cloud.live.stream import open_broker, open_live

    rules = load_rules(rules_path)
    given = broker is not None
    if given != (cert is not None and key is not None and ca is not None) or (
        not given and (cert or key or ca)
    ):
        raise click.UsageError("--broker goes with --cert, --key and --ca (all four)")
    if sns and sns_topic:
        raise click.UsageError("--sns uses the stack's topic; --sns-topic names another")
    chosen: Target | None = None

    def side() -> Target:
        nonlocal chosen
        if chosen is None:
            chosen = targets.resolve(target, endpoint_url)
        return chosen

    remotes = remote_notifiers(side, webhooks, sns, sns_topic, stack_name)
    if state_path is None:
        state_path = default_state_path(side())
    with state_lock(state_path):
        watcher = Watcher(rules, state_path, Stdout(sys.stdout, fmt), remotes)
        stream: Stream
        if broker is not None:
            assert cert is not None and key is not None and ca is not None
            stream = open_broker(
                broker,
                Identity(cert, key, ca),
                client_id,
                watcher.on_event,
                watcher.on_state,
                persistent=True,
            )
            where = broker
        else:
            stream = open_live(side(), WATCHER, watcher.on_event, watcher.on_state, True)
            where = "the local stack's broker" if side().stack else "AWS IoT Core"
        sinks = ", ".join(["stdout", *(f"{r.name}" for r in remotes)])
        log.info(
            "watching %s (%d rule(s)) on %s; notifying %s; state in %s",
            rules_path,
            len(rules.rules),
            where,
            sinks,
            state_path,
        )
        stop = threading.Event()

        def stopping(signum: int, frame: FrameType | None) -> None:
            stop.set()

        signal.signal(signal.SIGTERM, stopping)
        signal.signal(signal.SIGINT, stopping)
        watcher.run(stream, stop)


_DURATION = re.compile(r"^\d+(?:\.\d+)?[smhdw]$")


def _past(text: str, option: str) -> int:
    """A time; a bare duration (`2h`) means that long ago, as `-2h` does."""
    return parse_time_ms(f"-{text}" if _DURATION.match(text.strip()) else text, option)


@alerts.command("test")
@rules_option
@click.option(
    "--since",
    default="-1h",
    show_default=True,
    help="From this time: ISO 8601, epoch ms, or 2h / -2h ago.",
)
@options.until("Up to this time (same forms) [now].")
@click.option(
    "--id",
    "sensor_ids",
    multiple=True,
    metavar="ID",
    help="Only this sensor (repeat for more) [every sensor with readings in the range, and "
    "those the rules name].",
)
@format_option
@options.target_options
@reports_errors
def test(
    rules_path: Path,
    since: str,
    until: str | None,
    sensor_ids: tuple[str, ...],
    fmt: str,
    target: str | None,
    endpoint_url: str | None,
) -> None:
    """Which rules would have fired and cleared over a past time range of the table."""
    from cloud.alerts.notify import Stdout
    from cloud.alerts.replay import replay, sensors_to_replay

    rules = load_rules(rules_path)
    since_ms = _past(since, "--since")
    until_ms = _past(until, "--until") if until else parse_time_ms("-0s")
    if until_ms <= since_ms:
        raise click.UsageError("--until must be later than --since")
    chosen = targets.resolve(target, endpoint_url)
    ddb = chosen.endpoint.client("dynamodb")
    sensors = list(sensor_ids) or sensors_to_replay(rules, ddb, chosen.table, since_ms, until_ms)
    series = [
        query_readings(ddb, chosen.table, s, since_ms, until_ms, newest_first=False)
        for s in sensors
    ]
    result = replay(rules, series, sensors, since_ms, until_ms)
    out = Stdout(sys.stdout, fmt)
    for note in result.notifications:
        out.write(note.to_json())
    fired = sum(n.event == "fired" for n in result.notifications)
    cleared = len(result.notifications) - fired
    click.echo(
        f"{fired} fired, {cleared} cleared, {len(result.active)} still active at "
        f"{iso_ms(until_ms)} ({result.readings} reading(s) of {len(sensors)} sensor(s) "
        f"from {iso_ms(since_ms)})",
        err=True,
    )
    for episode in result.active:
        click.echo(f"  active: {episode.rule} {episode.sensor_id}: {episode.message}", err=True)
    if result.skipped:
        click.echo(
            f"not replayed (the table keeps no statuses): {', '.join(result.skipped)}", err=True
        )
