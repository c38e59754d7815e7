"""`cloud`: the command line over the cloud package. Parsing and error reporting only."""

from __future__ import annotations

import csv
import itertools
import json
import logging
import os
import shlex
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

import click
from botocore.exceptions import BotoCoreError, ClientError

from cloud import target as targets
from cloud.aws import Endpoint
from cloud.errors import PipelineError
from cloud.identity.local_ca import certs_dir
from cloud.local import stack
from cloud.local.mosquitto import READERS
from cloud.stack.deploy import DEFAULT_STACK_NAME
from cloud.table import Row, item_count, query_readings, summarize
from cloud.timeparse import iso_ms, parse_time_ms
from device.config import MQTT_VERSIONS

F = TypeVar("F", bound=Callable[..., Any])


def reports_errors(func: F) -> F:
    """Our own errors become one line and exit 1; anything else is a bug and keeps its traceback."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except PipelineError as exc:
            raise click.ClickException(str(exc)) from None
        except (BotoCoreError, ClientError) as exc:
            raise click.ClickException(aws_error_line(exc)) from None

    return wrapper  # type: ignore[return-value]


def aws_error_line(exc: BotoCoreError | ClientError) -> str:
    """One line for an AWS call that failed where no code of ours expected it to."""
    if isinstance(exc, BotoCoreError):
        problem = targets.aws_problem(exc)
        if problem is not None:
            return problem
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        return f"AWS refused the call: {error.get('Code', '?')}: {error.get('Message', exc)}"
    return f"AWS call failed: {exc}"


class _Header:
    """A line on stderr that heads what follows (the target, progress events), printed only
    once something does follow: a command failing first prints its error alone."""

    def __init__(self, line: str) -> None:
        self._line: str | None = line

    def __call__(self, text: str | None = None) -> None:
        if self._line is not None:
            click.echo(self._line, err=True)
            self._line = None
        if text is not None:
            click.echo(text, err=True)


def target_options(func: F) -> F:
    func = click.option(
        "--endpoint-url", help="AWS endpoint (e.g. a moto server); also AWS_ENDPOINT_URL."
    )(func)
    func = click.option(
        "--target",
        type=click.Choice(targets.TARGETS),
        help="Act on the local stack or AWS [local while one runs here; also CLOUD_TARGET].",
    )(func)
    return func


@click.group(epilog="Exit codes: 0 success, 1 a failure the message explains, 2 a usage error.")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
def main(verbose: bool) -> None:
    """The cloud side of the sensor pipeline: local stack, ingest, readings."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(message)s",
    )
    # matplotlib logs "generated new fontManager" at INFO on a first run: a stray line.
    for noisy in ("botocore", "boto3", "urllib3", "paho", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # ... and "Matplotlib is building the font cache" as a WARNING when that is slow: a
    # one-time note, not a problem, that would precede a command's one error line.
    logging.getLogger("matplotlib.font_manager").setLevel(logging.ERROR)


# -- the local stack ----------------------------------------------------------------------


@main.group()
def local() -> None:
    """Run the pipeline on this machine: a table engine, Mosquitto and ingest, on loopback."""


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    raise AssertionError("unreachable")


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _relative(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


@local.command("up")
@click.option(
    "--mqtt-port", type=click.IntRange(1, 65535), help="Broker port [last one, 8883, or free]."
)
@click.option(
    "--table-port",
    type=click.IntRange(1, 65535),
    help="Table engine port [last one, 4567, or free].",
)
@click.option(
    "--plaintext-port",
    type=click.IntRange(1, 65535),
    help="Also listen without TLS on 127.0.0.1:PORT (off by default).",
)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Keep the table, exports and broker queues here [last one, or var/local].",
)
@click.option("--no-ingest", is_flag=True, help="Do not start `cloud ingest`.")
@reports_errors
def local_up(
    mqtt_port: int | None,
    table_port: int | None,
    plaintext_port: int | None,
    data_dir: Path | None,
    no_ingest: bool,
) -> None:
    """Start the local stack from this folder, or what is missing of it.

    Its parts are restarted when they die; `cloud local down` stops them and keeps the data.
    """
    result = stack.up(Path.cwd(), mqtt_port, table_port, plaintext_port, not no_ingest, data_dir)
    state = result.state
    for note in result.notes:
        click.echo(f"note     {note}")
    click.echo(f"broker   {state.broker_url} (mutual TLS, CA certs/local-ca/ca.pem)")
    if state.plaintext_port:
        click.echo(f"         mqtt://127.0.0.1:{state.plaintext_port} (plaintext, loopback only)")
    click.echo(
        f"table    {state.endpoint.url} (dynalite: table {state.table}, "
        f"data in {_relative(state.table_dir)})"
    )
    click.echo(f"exports  {_relative(state.exports_dir)} (where `cloud export` writes by default)")
    click.echo(f"logs     {_relative(state.logs_dir)}/")
    click.echo("next     device-agent --id sensor-3 --count 100 --interval 0.1")


@local.command("down")
@reports_errors
def local_down() -> None:
    """Stop what `cloud local up` started from this folder; the data stays."""
    stopped = stack.down(Path.cwd())
    state = stack.StackState.load(Path.cwd())
    if stopped:
        click.echo(f"stopped {', '.join(stopped)}")
    else:
        click.echo(f"no local stack runs from {Path.cwd()}; nothing to stop")
    if state is not None and state.data.exists():
        size = stack.folder_size(state.data)
        click.echo(
            f"data kept in {_relative(state.data)} ({_size(size)}); `cloud local reset` deletes it"
        )


@local.command("reset")
@click.option("--yes", is_flag=True, help="Do not ask first.")
@reports_errors
def local_reset(yes: bool) -> None:
    """Stop the local stack and delete its data: every reading, export and queued message.

    Certificates in certs/ stay, so devices keep their identities.
    """
    state = stack.StackState.load(Path.cwd())
    data = state.data if state is not None else stack.state_dir(Path.cwd())
    if not yes:
        click.confirm(
            f"delete the table, exports and broker queues in {_relative(data)}?", abort=True
        )
    stopped, deleted = stack.reset(Path.cwd())
    if stopped:
        click.echo(f"stopped {', '.join(stopped)}")
    for path in deleted:
        click.echo(f"deleted {_relative(path)}")
    if not deleted:
        click.echo("no data to delete")


def _echo_local_status(state: stack.StackState) -> None:
    click.echo(f"{'part':<10} {'state':<11} {'pid':>7} {'uptime':>8} {'restarts':>8}  last exit")
    for part in stack.part_views(state):
        # Recorded as running but its process is gone: the supervisor has not noticed yet.
        shown = (
            "running" if part.running else "DEAD" if part.state == "running" else part.state.upper()
        )
        pid = str(part.pid) if part.pid else "-"
        uptime = _duration(part.uptime) if part.uptime is not None else "-"
        click.echo(
            f"{part.name:<10} {shown:<11} {pid:>7} {uptime:>8} {part.restarts:>8}  "
            f"{part.last_exit or '-'}"
        )
    click.echo(f"broker   {state.broker_url}")
    click.echo(f"table    {state.endpoint.url} ({state.table})")
    for what, (path, size) in stack.data_sizes(state).items():
        click.echo(f"data     {what}: {_relative(path)} ({_size(size)})")
    click.echo(f"logs     {_relative(state.logs_dir)}/")


@main.command("status")
@click.option(
    "--stack-name",
    default=DEFAULT_STACK_NAME,
    show_default=True,
    help="aws: the stack to report on.",
)
@target_options
@reports_errors
def status(target: str | None, endpoint_url: str | None, stack_name: str) -> None:
    """Say which side commands act on, what runs where, and how many readings the table holds."""
    chosen = targets.resolve(target, endpoint_url)
    if chosen.stack is not None:
        click.echo(f"target   {chosen.name} ({chosen.why})")
        _echo_local_status(chosen.stack)
        views = {p.name: p for p in stack.part_views(chosen.stack)}
        if not views["table"].running:
            click.echo("items    unknown: the table engine is not running (it is restarted)")
            return
    else:
        from cloud.stack.status import aws_status

        # Asked before anything is printed: a failure is then its one line alone.
        info = aws_status(chosen.endpoint, stack_name)
        click.echo(f"target   {chosen.name} ({chosen.why})")
        click.echo(f"aws      {chosen.endpoint.url or 'AWS (default endpoint)'}")
        click.echo(f"stack    {stack_name}: {info.stack_status or 'not deployed (cloud deploy)'}")
        if info.broker_url:
            click.echo(f"broker   {info.broker_url} (AWS IoT Core, ATS)")
        if info.table:
            approx = "" if info.item_count_exact else " (DynamoDB's estimate, updated ~6-hourly)"
            click.echo(f"table    {info.table}: {info.item_count} item(s){approx}")
        for thing, row in sorted(info.last_readings.items()):
            last = f"{iso_ms(row.time_ms)} {row.temperature:.2f}" if row else "no readings"
            click.echo(f"device   {thing}: {last}")
        return
    try:
        count = item_count(chosen.endpoint.client("dynamodb"), chosen.table)
    except (BotoCoreError, ClientError) as exc:
        # The report above is what was asked for; the table's trouble is one more line of it.
        click.echo(f"items    unknown: {aws_error_line(exc)}")
        return
    click.echo(f"items    {chosen.table}: {count} item(s)")


@local.command("status")
@click.pass_context
@reports_errors
def local_status(ctx: click.Context) -> None:
    """Each part (running or not, pid, uptime, restarts) and where the data is, how big."""
    root = Path.cwd()
    if stack.running_state(root) is not None:
        ctx.invoke(status, target="local", endpoint_url=None, stack_name=DEFAULT_STACK_NAME)
        return
    state = stack.StackState.load(root)
    if state is None:
        raise click.ClickException(
            f"no local stack has run from {root}; `cloud local up` starts one"
        )
    click.echo(f"target   local: not running (`cloud local up` starts it from {root})")
    _echo_local_status(state)


# -- identities ---------------------------------------------------------------------------


@main.command()
@click.option(
    "--id",
    "device_ids",
    required=True,
    multiple=True,
    help="The device id, e.g. sensor-3; repeat it for several devices.",
)
@click.option("--force", is_flag=True, help="Replace an existing key and certificate.")
@click.option(
    "--stack-name",
    default=DEFAULT_STACK_NAME,
    show_default=True,
    help="aws: the deployed stack whose IoT policy the device gets.",
)
@target_options
@reports_errors
def provision(
    device_ids: tuple[str, ...],
    force: bool,
    stack_name: str,
    target: str | None,
    endpoint_url: str | None,
) -> None:
    """Make a device's key and certificate in certs/ID/ (key 0600, folder 0700).

    Locally the local CA signs it. On AWS the key is made here and never leaves this
    machine: AWS IoT signs a CSR, and the certificate is tied to the thing ID and the
    stack's IoT policy.
    """
    from device.payload import PayloadError, check_sensor_id

    for device_id in device_ids:
        try:
            check_sensor_id(device_id)
        except PayloadError as exc:
            raise click.BadParameter(str(exc), param_hint="--id") from None
    chosen = targets.resolve(target, endpoint_url, need_stack=False)
    header = _Header(f"target {chosen.name} ({chosen.why})")
    root = Path.cwd()
    if chosen.name == "local":
        # All checked before any is made: a second run does not stop half way.
        for device_id in device_ids:
            key = certs_dir(root) / device_id / "key.pem"
            if key.exists() and not force:
                raise click.ClickException(
                    f"{key} already exists; pass --force to replace it "
                    "(the old certificate stops working)"
                )
    policy = ""
    if chosen.name == "aws":
        from cloud.stack.deploy import stack_outputs

        policy = stack_outputs(chosen.endpoint, stack_name).get("IotPolicyName", "")
        if not policy:
            raise click.ClickException(
                f"stack {stack_name} has no IotPolicyName output; run `cloud deploy`"
            )
    replaced = [i for i in device_ids if (certs_dir(root) / i / "cert.pem").exists()]
    for device_id in device_ids:
        _provision_one(chosen, root, device_id, policy, force, header)
    if chosen.name == "local" and replaced:
        click.echo(f"revoked every earlier certificate of {', '.join(replaced)}")
        if chosen.stack is not None:
            pid = stack.restart_broker(root)
            click.echo(f"broker restarted with the new revocation list (pid {pid})")


def _provision_one(
    chosen: targets.Target, root: Path, device_id: str, policy: str, force: bool, header: _Header
) -> None:
    if chosen.name == "aws":
        from cloud.identity.iot import provision_device

        result = provision_device(chosen.endpoint, root, device_id, policy, force=force)
        ident, command = result.identity, result.command
        header()
        click.echo(
            f"certificate {result.certificate_id} active, "
            f"attached to thing {device_id} and policy {policy}"
        )
    else:
        ident = stack.device_identity(root, device_id, force=force)
        header()
        broker = chosen.stack.broker_url if chosen.stack else "mqtts://BROKER:8883"
        command = shlex.join(
            [
                "device-agent",
                "--id",
                device_id,
                "--broker",
                broker,
                "--cert",
                str(ident.cert),
                "--key",
                str(ident.key),
                "--ca",
                str(ident.ca),
                # The local stack's ingest confirms each reading it wrote (README, Guarantees).
                "--receipts",
            ]
        )
    click.echo(f"wrote {ident.cert}, {ident.key} (0600) and {ident.ca}")
    click.echo(f"run: {command}")


@main.command()
@click.option("--id", "device_id", required=True, help="The device id whose certificate to revoke.")
@click.option(
    "--keep", is_flag=True, help="aws: leave the certificate INACTIVE instead of deleting it."
)
@target_options
@reports_errors
def revoke(device_id: str, keep: bool, target: str | None, endpoint_url: str | None) -> None:
    """Revoke a device's certificate: on AWS deactivate, detach and delete it; locally add
    it to the local CA's revocation list and restart the broker so it takes effect."""
    chosen = targets.resolve(target, endpoint_url, need_stack=False)
    header = _Header(f"target {chosen.name} ({chosen.why})")
    root = Path.cwd()
    if chosen.name == "aws":
        from cloud.identity.iot import revoke_device_aws

        result = revoke_device_aws(chosen.endpoint, root, device_id, delete=not keep)
        header()
        what = "deactivated" if keep else "deactivated and deleted"
        click.echo(f"{device_id}: {len(result.certificate_ids)} certificate(s) {what}")
        return
    from cloud.identity.revocation import revoke_device_local

    crl = revoke_device_local(root, device_id)
    header()
    click.echo(f"{device_id}: every certificate issued for it is revoked in {crl}")
    if chosen.stack is not None:
        pid = stack.restart_broker(root)
        click.echo(f"broker restarted with the new revocation list (pid {pid})")


# -- the AWS stack --------------------------------------------------------------------------


def _aws_endpoint(endpoint_url: str | None, region: str | None) -> Endpoint:
    return Endpoint(endpoint_url or os.environ.get("AWS_ENDPOINT_URL"), region)


@main.command()
@click.option(
    "--stack-name", default=DEFAULT_STACK_NAME, show_default=True, help="CloudFormation stack name."
)
@click.option("--region", help="AWS region [AWS_REGION, or the profile's].")
@click.option(
    "--param",
    "params",
    multiple=True,
    metavar="KEY=VALUE",
    help="A template parameter; repeatable.",
)
@click.option("--endpoint-url", help="AWS endpoint (e.g. a moto server); also AWS_ENDPOINT_URL.")
@reports_errors
def deploy(
    stack_name: str, region: str | None, params: tuple[str, ...], endpoint_url: str | None
) -> None:
    """Create or update the AWS resources (one CloudFormation stack) and wait, showing progress."""
    from cloud.stack.deploy import deploy as deploy_stack

    values: dict[str, str] = {}
    for param in params:
        key, sep, value = param.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{param!r} is not KEY=VALUE", param_hint="--param")
        values[key] = value
    endpoint = _aws_endpoint(endpoint_url, region)
    header = _Header(f"target aws ({endpoint.url or 'AWS'}), stack {stack_name}")
    outputs = deploy_stack(endpoint, stack_name, values, on_event=lambda e: header(e.line()))
    header()
    for key, value in sorted(outputs.items()):
        click.echo(f"{key:<20} {value}")


@main.command()
@click.option(
    "--stack-name", default=DEFAULT_STACK_NAME, show_default=True, help="CloudFormation stack name."
)
@click.option("--region", help="AWS region [AWS_REGION, or the profile's].")
@click.option(
    "--force",
    is_flag=True,
    help="Also empty the buckets, the table's data and detach device certificates.",
)
@click.option("--endpoint-url", help="AWS endpoint (e.g. a moto server); also AWS_ENDPOINT_URL.")
@reports_errors
def destroy(stack_name: str, region: str | None, force: bool, endpoint_url: str | None) -> None:
    """Remove the stack; refuses while it still holds data unless --force."""
    from cloud.stack.deploy import DestroyRefused
    from cloud.stack.deploy import destroy as destroy_stack

    endpoint = _aws_endpoint(endpoint_url, region)
    header = _Header(f"target aws ({endpoint.url or 'AWS'}), stack {stack_name}")
    try:
        result = destroy_stack(
            endpoint, stack_name, force=force, on_event=lambda e: header(e.line())
        )
    except DestroyRefused as exc:
        raise click.ClickException(f"{exc}; pass --force to remove them too") from None
    header()
    click.echo(f"stack {result.stack_name}: {result.status}")
    for left in result.left_behind:
        click.echo(f"left behind: {left}")


# -- the rule's part ----------------------------------------------------------------------


@main.command()
@click.option(
    "--dead-letter",
    type=click.Path(path_type=Path),
    help="JSON-lines file for rejected messages [the stack's data folder/dead-letter.jsonl].",
)
@click.option(
    "--client-id",
    default=stack.INGEST_IDENTITY,
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
@target_options
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
    from cloud.ingest.service import Ingest, IngestSettings

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
        tls=stack.device_identity(root, client_id),
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


# -- reading the table --------------------------------------------------------------------


def _emit(rows: Iterable[Row], fmt: str) -> int:
    # The first row before any header: a failing query then prints its error alone.
    iterator = iter(rows)
    first = next(iterator, None)
    if first is None:
        return 0
    rows = itertools.chain([first], iterator)
    count = 0
    if fmt == "json":
        for row in rows:
            click.echo(
                json.dumps(
                    {
                        "sensor_id": row.sensor_id,
                        "time": iso_ms(row.time_ms),
                        "time_ms": row.time_ms,
                        "temperature": row.temperature,
                        "seq": row.seq,
                        **row.metrics,
                    }
                )
            )
            count += 1
    elif fmt == "csv":
        writer = csv.writer(sys.stdout)
        writer.writerow(["sensor_id", "time", "temperature", "seq"])
        for row in rows:
            writer.writerow([row.sensor_id, iso_ms(row.time_ms), row.temperature, row.seq])
            count += 1
    else:
        click.echo(f"{'time':<25} {'temperature':>11} {'seq':>8}")
        for row in rows:
            seq = "" if row.seq is None else row.seq
            click.echo(f"{iso_ms(row.time_ms):<25} {row.temperature:>11.2f} {seq:>8}")
            count += 1
    return count


@main.command()
@click.option("--id", "sensor_id", required=True, help="The sensor id.")
@click.option("--since", help="From this time: ISO 8601, epoch ms, or -1h, -7d.")
@click.option("--until", help="Up to this time (same forms).")
@click.option("--limit", type=click.IntRange(min=1), help="At most this many readings.")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "csv", "json"]),
    default="table",
    show_default=True,
)
@target_options
@reports_errors
def readings(
    sensor_id: str,
    since: str | None,
    until: str | None,
    limit: int | None,
    fmt: str,
    target: str | None,
    endpoint_url: str | None,
) -> None:
    """One sensor's readings from the table, newest first."""
    since_ms = parse_time_ms(since, "--since") if since else None
    until_ms = parse_time_ms(until, "--until") if until else None
    chosen = targets.resolve(target, endpoint_url)
    rows = query_readings(
        chosen.endpoint.client("dynamodb"), chosen.table, sensor_id, since_ms, until_ms, limit
    )
    if _emit(rows, fmt) == 0:
        click.echo(f"no readings for {sensor_id!r} in {chosen.table}", err=True)


@main.command()
@click.option("--since", help="Only readings from this time: ISO 8601, epoch ms, or -1h, -7d.")
@click.option(
    "--wait-for",
    type=click.IntRange(min=1),
    metavar="N",
    help="First wait until the table holds at least N readings (ingest may still be writing).",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0),
    default=120,
    show_default=True,
    help="Seconds --wait-for waits.",
)
@target_options
@reports_errors
def summary(
    since: str | None,
    wait_for: int | None,
    timeout: float,
    target: str | None,
    endpoint_url: str | None,
) -> None:
    """Per-sensor count, min, avg and max temperature, straight from the table."""
    since_ms = parse_time_ms(since, "--since") if since else None
    chosen = targets.resolve(target, endpoint_url)
    ddb = chosen.endpoint.client("dynamodb")
    if wait_for is not None:
        wait_for_items(ddb, chosen.table, wait_for, timeout)
    stats = summarize(ddb, chosen.table, since_ms)
    if not stats:
        raise click.ClickException(f"no readings in {chosen.table}")
    click.echo(f"{'sensor':<16} {'count':>7} {'min':>8} {'avg':>8} {'max':>8}")
    for sensor, s in stats.items():
        click.echo(
            f"{sensor:<16} {s.count:>7} {s.minimum:>8.2f} {s.average:>8.2f} {s.maximum:>8.2f}"
        )
    total = sum(s.count for s in stats.values())
    click.echo(f"{len(stats)} sensor(s), {total} reading(s)")


def wait_for_items(ddb: Any, table: str, wanted: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while (count := item_count(ddb, table)) < wanted:
        if time.monotonic() > deadline:
            raise click.ClickException(
                f"{table} holds {count} of {wanted} reading(s) after {timeout:g}s; "
                "is `cloud ingest` running? (`cloud status`, and its log)"
            )
        time.sleep(0.5)  # a Select=COUNT scan is not free: poll gently


# -- exporting the table ------------------------------------------------------------------


@main.command("export")
@click.option(
    "--to",
    "destination",
    metavar="DIR|s3://BUCKET/PREFIX",
    help="A folder, or S3 [on the local stack: its exports folder].",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["datapipeline", "parquet"]),  # cloud.export.layout.FORMATS
    default="datapipeline",
    show_default=True,
    help="datapipeline: JSON lines the tutorial's Athena table reads; parquet: typed, by day.",
)
@click.option(
    "--since",
    help="Readings from this time (ISO 8601, epoch ms, -1h, -7d) instead of what is new; "
    "on an existing export only with --full.",
)
@click.option(
    "--segments",
    type=click.IntRange(1, 1_000_000),
    default=4,
    show_default=True,
    help="Parallel scan segments, one thread each.",
)
@click.option("--full", is_flag=True, help="Export everything, replacing earlier files.")
@click.option(
    "--method",
    type=click.Choice(["scan", "native"]),
    default="scan",
    show_default=True,
    help="native: DynamoDB's own export to S3 (needs point-in-time recovery on the table).",
)
@click.option(
    "--settle",
    type=click.FloatRange(min=0),
    default=10.0,
    show_default=True,
    help="Seconds; readings received more recently wait for the next run, as their writes "
    "may still be landing. 0 once ingest has stopped.",
)
@target_options
@reports_errors
def export(
    destination: str | None,
    fmt: str,
    since: str | None,
    segments: int,
    full: bool,
    method: str,
    settle: float,
    target: str | None,
    endpoint_url: str | None,
) -> None:
    """Copy the table to a folder or S3 for SQL; by default only what is new since last time.

    Files appear whole, and a run counts only once its manifest (under _manifests/) is
    written, so a failed run can simply be run again.
    """
    from cloud.export import run as exporting

    chosen = targets.resolve(target, endpoint_url)
    spec = exporting.ExportSpec(
        destination=chosen.exports(destination, "--to"),
        fmt=fmt,
        method=method,
        since_ms=parse_time_ms(since, "--since") if since else None,
        full=full,
        segments=segments,
        settle_seconds=settle,
    )
    result = exporting.run_export(
        chosen.endpoint, chosen.table, spec, progress=exporting.terminal_progress()
    )
    click.echo(result.line())


# -- SQL over exports, and plots ----------------------------------------------------------


def _query_report_names() -> list[str]:
    from cloud.query.reports import REPORTS

    return sorted(REPORTS)


_QUERY_DATA_HELP = (
    "The export: a folder, or s3://BUCKET/PREFIX [on the local stack: its exports folder]."
)


@main.command()
@click.argument("sql", required=False)
@click.option("--data", metavar="DIR|s3://BUCKET/PREFIX", help=_QUERY_DATA_HELP)
@click.option(
    "--engine",
    type=click.Choice(["duckdb", "athena"]),
    default="duckdb",
    show_default=True,
    help="DuckDB in this process, or Athena (S3 only).",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "csv", "json"]),
    default="table",
    show_default=True,
)
@click.option(
    "--report",
    type=click.Choice(_query_report_names()),
    help="A ready-made query instead of SQL.",
)
@click.option("--since", help="Reports: from this time (ISO 8601, epoch ms, or -1h, -7d).")
@click.option("--until", help="Reports: up to this time (same forms).")
@click.option("--id", "sensor_ids", multiple=True, help="Reports: only this sensor (repeatable).")
@click.option("--workgroup", help="Athena workgroup [ATHENA_WORKGROUP, or primary].")
@click.option("--database", help="Athena database [ATHENA_DATABASE, or sensor_pipeline].")
@click.option(
    "--athena-output",
    metavar="s3://BUCKET/PREFIX/",
    help="Where Athena writes results [ATHENA_OUTPUT, or the workgroup's setting].",
)
@target_options
@reports_errors
def query(
    sql: str | None,
    data: str | None,
    engine: str,
    fmt: str,
    report: str | None,
    since: str | None,
    until: str | None,
    sensor_ids: tuple[str, ...],
    workgroup: str | None,
    database: str | None,
    athena_output: str | None,
    target: str | None,
    endpoint_url: str | None,
) -> None:
    """Run SQL (or a --report) over an export; `-` reads the SQL from standard input.

    Tables: `sensor_data` (the tutorial's: sensorid.s, currenttime.n, temperature.n) from a
    datapipeline or DynamoDB export, and `readings` (sensor_id, time, temperature, seq, ...,
    dt) from a parquet export. Reports: summary, latest, hourly, gaps, series.
    """
    from cloud.query.engines.athena import AthenaSettings
    from cloud.query.reports import Window
    from cloud.query.run import format_result, resolve_target, run_query, run_report

    if (sql is None) == (report is None):
        raise click.UsageError("give either SQL or --report NAME")
    if sql is not None and (sensor_ids or since or until):
        raise click.UsageError("--id, --since and --until go with --report")
    where = resolve_target(data, target, endpoint_url)
    athena = (
        AthenaSettings.resolve(workgroup, database, athena_output) if engine == "athena" else None
    )
    if report is not None:
        window = Window.parse(sensor_ids, since, until)
        result = run_report(
            report, where.data, window, engine, endpoint=where.endpoint, athena=athena
        )
    else:
        text = sys.stdin.read() if sql == "-" else str(sql)
        result = run_query(text, where.data, engine, endpoint=where.endpoint, athena=athena)
    for line in format_result(result, fmt):
        click.echo(line)
    click.echo(f"{len(result.rows)} row(s) from {where.data} ({engine})", err=True)


@main.command()
@click.option("--id", "sensor_ids", multiple=True, required=True, help="A sensor (repeatable).")
@click.option("--since", help="From this time: ISO 8601, epoch ms, or -1h, -7d.")
@click.option("--until", help="Up to this time (same forms).")
@click.option(
    "--out",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The PNG file to write.",
)
@click.option(
    "--data",
    metavar="DIR|s3://BUCKET/PREFIX",
    help="Plot from this export instead of the table.",
)
@click.option("--title", help="The chart's title [Temperature of <ids>].")
@target_options
@reports_errors
def plot(
    sensor_ids: tuple[str, ...],
    since: str | None,
    until: str | None,
    out: Path,
    data: str | None,
    title: str | None,
    target: str | None,
    endpoint_url: str | None,
) -> None:
    """Temperature over time for one or more sensors, as a PNG (from the table, or --data)."""
    from cloud.query.plot import render, series_from_export, series_from_table
    from cloud.query.reports import Window
    from cloud.query.run import resolve_target

    window = Window.parse(sensor_ids, since, until)
    if data is None:
        chosen = targets.resolve(target, endpoint_url)
        series = series_from_table(chosen.endpoint.client("dynamodb"), chosen.table, window)
    else:
        where = resolve_target(data, target, endpoint_url)
        series = series_from_export(where.data, window, where.endpoint)
    written = render(series, out, title)
    points = sum(len(p) for p in series.values())
    click.echo(f"wrote {written} ({points} reading(s) of {len(series)} sensor(s))")
