"""`cloud ingest`: the AWS IoT rule's part on the local stack, MQTT into the table."""

from __future__ import annotations

import signal
import threading
from pathlib import Path

import click

from cloud import target as targets
from cloud.cli import options
from cloud.cli.errors import reports_errors
from cloud.local.identities import INGEST_IDENTITY, device_identity
from cloud.local.mosquitto import READERS
from device.config import MQTT_VERSIONS


@click.command()
@click.option(
    "--dead-letter",
    type=click.Path(path_type=Path),
    help="JSON-lines file for rejected messages [the stack's data folder/dead-letter.jsonl].",
)
@click.option(
    "--client-id",
    default=INGEST_IDENTITY,
    show_default=True,
    help="The identity (certificate and MQTT client id; its session survives restarts): "
    "ingest, or ingest-2 .. ingest-9 for more instances sharing the load.",
)
@click.option(
    "--share-group",
    help="Join this MQTT 5 shared subscription group, so several ingest processes split the "
    "load. Off by default: Mosquitto 2.0 forgets shared subscriptions when it restarts, "
    "and readings sent before ingest is back would be dropped.",
)
@click.option(
    "--ready-file",
    type=click.Path(path_type=Path),
    help="Create this file once subscribed (for scripts that wait for ingest).",
)
@click.option(
    "--mqtt-version",
    type=click.Choice(MQTT_VERSIONS),
    default="auto",
    show_default=True,
    help="MQTT protocol (auto: 5, or 3.1.1 if the broker speaks only that).",
)
@click.option(
    "--writers",
    type=int,
    help="BatchWriteItem calls to keep in flight, 1 to 10 [4]; acks and receipts still "
    "follow the order the readings came in.",
)
@options.target_options
@reports_errors
def ingest(
    dead_letter: Path | None,
    client_id: str,
    share_group: str | None,
    ready_file: Path | None,
    mqtt_version: str,
    writers: int | None,
    target: str | None,
    endpoint_url: str | None,
) -> None:
    """Write each reading from the broker into the table, as the AWS IoT rule does.

    Each message is acknowledged only after its item is written, so a crash loses nothing.
    Several processes with different --client-id share the load; each must come back after
    a restart, since the broker keeps its share of messages for it.
    """
    from cloud.ingest.service import Ingest
    from cloud.ingest.settings import IngestSettings

    chosen = targets.resolve(target or "local", endpoint_url)
    if chosen.stack is None:
        raise click.ClickException(
            "on AWS the IoT topic rule does this; `cloud ingest` runs against the local stack"
        )
    if client_id not in READERS:
        raise click.BadParameter(
            f"{client_id!r}: the broker lets only {READERS[0]}, {READERS[1]} .. {READERS[-1]} "
            "read every device's readings",
            param_hint="--client-id",
        )
    root = Path(chosen.stack.root)
    settings = IngestSettings(
        host="127.0.0.1",
        port=chosen.stack.mqtt_port,
        # The broker names a client by its certificate: one identity per instance.
        tls=device_identity(root, client_id),
        endpoint=chosen.endpoint,
        table=chosen.table,
        dead_letter=dead_letter or chosen.stack.dead_letter,
        client_id=client_id,
        share_group=share_group,
        mqtt_version=mqtt_version,
        writers=IngestSettings.writers if writers is None else writers,
    )
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    bridge = Ingest(settings)
    if ready_file is not None:
        ready_file.unlink(missing_ok=True)

        def mark_ready() -> None:
            bridge.ready.wait()
            ready_file.touch()

        threading.Thread(target=mark_ready, daemon=True).start()
    try:
        bridge.run(stop)
    finally:
        # The tally also when it stops on an error: it says what was written.
        click.echo(bridge.stats.line())
