"""`cloud`: the command line over the cloud package. Parsing and error reporting only."""

from __future__ import annotations

import csv
import json
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

import click

from cloud import target as targets
from cloud.errors import PipelineError
from cloud.local import stack
from cloud.table import Row, item_count, query_readings, summarize
from cloud.timeparse import iso_ms, parse_time_ms

F = TypeVar("F", bound=Callable[..., Any])


def reports_errors(func: F) -> F:
    """Our own errors become one line and exit 1; anything else is a bug and keeps its traceback."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except PipelineError as exc:
            raise click.ClickException(str(exc)) from None

    return wrapper  # type: ignore[return-value]


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
    for noisy in ("botocore", "boto3", "urllib3", "paho"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


# -- the local stack ----------------------------------------------------------------------


@main.group()
def local() -> None:
    """Run the pipeline on this machine: Mosquitto, moto's server and ingest, on loopback."""


@local.command("up")
@click.option(
    "--mqtt-port", type=click.IntRange(1, 65535), help="Broker port [8883, or a free one]."
)
@click.option(
    "--moto-port", type=click.IntRange(1, 65535), help="moto server port [5000, or a free one]."
)
@click.option(
    "--plaintext-port",
    type=click.IntRange(1, 65535),
    help="Also listen without TLS on 127.0.0.1:PORT (off by default).",
)
@click.option("--no-ingest", is_flag=True, help="Do not start `cloud ingest`.")
@reports_errors
def local_up(
    mqtt_port: int | None, moto_port: int | None, plaintext_port: int | None, no_ingest: bool
) -> None:
    """Start the local stack from this folder; `cloud local down` stops it."""
    state = stack.up(Path.cwd(), mqtt_port, moto_port, plaintext_port, with_ingest=not no_ingest)
    click.echo(f"broker   {state.broker_url} (mutual TLS, CA certs/local-ca/ca.pem)")
    if state.plaintext_port:
        click.echo(f"         mqtt://127.0.0.1:{state.plaintext_port} (plaintext, loopback only)")
    click.echo(f"aws      {state.endpoint.url} (moto: table {state.table}, bucket {state.bucket})")
    for name, path in state.logs.items():
        click.echo(f"log      {name}: {path}")
    click.echo("next     device-agent --id sensor-3 --count 100 --interval 0.1")


@local.command("down")
@reports_errors
def local_down() -> None:
    """Stop exactly what `cloud local up` started from this folder."""
    stopped = stack.down(Path.cwd())
    if stopped:
        click.echo(f"stopped {', '.join(stopped)}")
    else:
        click.echo(f"no local stack runs from {Path.cwd()}; nothing to stop")


@main.command("status")
@target_options
@reports_errors
def status(target: str | None, endpoint_url: str | None) -> None:
    """Say which side commands act on, what runs where, and how many readings the table holds."""
    chosen = targets.resolve(target, endpoint_url)
    click.echo(f"target   {chosen.name} ({chosen.why})")
    if chosen.stack is not None:
        alive = stack.process_status(chosen.stack)
        for name, pid in chosen.stack.pids.items():
            click.echo(f"{name:<8} {'running' if alive.get(name) else 'STOPPED'} (pid {pid})")
        click.echo(f"broker   {chosen.stack.broker_url}")
        click.echo(f"aws      {chosen.endpoint.url}")
    else:
        click.echo(f"aws      {chosen.endpoint.url or 'AWS (default endpoint)'}")
    count = item_count(chosen.endpoint.client("dynamodb"), chosen.table)
    click.echo(f"table    {chosen.table}: {count} item(s)")


@local.command("status")
@click.pass_context
def local_status(ctx: click.Context) -> None:
    """The same as `cloud status --target local`."""
    ctx.invoke(status, target="local", endpoint_url=None)


# -- identities ---------------------------------------------------------------------------


@main.command()
@click.option("--id", "device_id", required=True, help="The device id, e.g. sensor-3.")
@click.option("--force", is_flag=True, help="Replace an existing key and certificate.")
@reports_errors
def provision(device_id: str, force: bool) -> None:
    """Make a device's key and certificate (local CA) under certs/ID/."""
    from device.payload import PayloadError, check_sensor_id

    try:
        check_sensor_id(device_id)
    except PayloadError as exc:
        raise click.BadParameter(str(exc), param_hint="--id") from None
    folder = stack.certs_dir(Path.cwd()) / device_id
    if (folder / "key.pem").exists() and not force:
        raise click.ClickException(
            f"{folder / 'key.pem'} already exists; pass --force to replace it "
            "(the old certificate stops working)"
        )
    ident = stack.device_identity(Path.cwd(), device_id, force=force)
    click.echo(f"wrote {ident.cert}, {ident.key} (0600) and {ident.ca}")
    state = stack.running_state(Path.cwd())
    broker = state.broker_url if state else "mqtts://BROKER:8883"
    click.echo(
        f"run: device-agent --id {device_id} --broker {broker} "
        f"--cert {ident.cert} --key {ident.key} --ca {ident.ca}"
    )


# -- the rule's part ----------------------------------------------------------------------


@main.command()
@click.option(
    "--dead-letter",
    type=click.Path(path_type=Path),
    help="JSON-lines file for rejected messages [var/local/dead-letter.jsonl].",
)
@click.option(
    "--client-id",
    default="cloud-ingest",
    show_default=True,
    help="MQTT client id (its session survives restarts).",
)
@click.option(
    "--share-group",
    default="ingest",
    show_default=True,
    help="MQTT 5 shared subscription group, so several ingest processes split the load.",
)
@click.option("--no-share-group", is_flag=True, help="Subscribe plainly instead.")
@click.option(
    "--ready-file",
    type=click.Path(path_type=Path),
    help="Create this file once subscribed (for scripts that wait for ingest).",
)
@target_options
@reports_errors
def ingest(
    dead_letter: Path | None,
    client_id: str,
    share_group: str,
    no_share_group: bool,
    ready_file: Path | None,
    target: str | None,
    endpoint_url: str | None,
) -> None:
    """Write each reading from the broker into the table, as the AWS IoT rule does.

    Each message is acknowledged only after its item is written, so a crash loses nothing.
    Several processes with different --client-id share the load; each must come back after
    a restart, since the broker keeps its share of messages for it.
    """
    from cloud.ingest import Ingest, IngestSettings

    chosen = targets.resolve(target or "local", endpoint_url)
    if chosen.stack is None:
        raise click.ClickException(
            "on AWS the IoT topic rule does this; `cloud ingest` runs against the local stack"
        )
    root = Path(chosen.stack.root)
    settings = IngestSettings(
        host="127.0.0.1",
        port=chosen.stack.mqtt_port,
        tls=stack.device_identity(root, stack.INGEST_IDENTITY),
        endpoint=chosen.endpoint,
        table=chosen.table,
        dead_letter=dead_letter or stack.state_dir(root) / "dead-letter.jsonl",
        client_id=client_id,
        share_group=None if no_share_group else share_group,
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
    required=True,
    metavar="DIR|s3://BUCKET/PREFIX",
    help="A folder, or S3 (on --target local, the local stack's S3).",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["datapipeline", "parquet"]),  # cloud.layout.FORMATS
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
    destination: str,
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
    from cloud import export as exporting

    spec = exporting.ExportSpec(
        destination=destination,
        fmt=fmt,
        method=method,
        since_ms=parse_time_ms(since, "--since") if since else None,
        full=full,
        segments=segments,
        settle_seconds=settle,
    )
    chosen = targets.resolve(target, endpoint_url)
    result = exporting.run_export(
        chosen.endpoint, chosen.table, spec, progress=exporting.terminal_progress()
    )
    click.echo(result.line())


# -- SQL over exports, and plots ----------------------------------------------------------


def _query_report_names() -> list[str]:
    from cloud.reports import REPORTS

    return sorted(REPORTS)


_QUERY_DATA_HELP = (
    "The export: a folder, or s3://BUCKET/PREFIX [on the local stack: its exports bucket]."
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
    from cloud.engines.athena import AthenaSettings
    from cloud.query import format_result, resolve_target, run_query, run_report
    from cloud.reports import Window

    if (sql is None) == (report is None):
        raise click.UsageError("give either SQL or --report NAME")
    if sql is not None and (sensor_ids or since or until):
        raise click.UsageError("--id, --since and --until go with --report")
    where = resolve_target(data, target, endpoint_url)
    athena = (
        AthenaSettings.resolve(workgroup, database, athena_output, where.default_athena_output)
        if engine == "athena"
        else None
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
    from cloud.plot import render, series_from_export, series_from_table
    from cloud.query import resolve_target
    from cloud.reports import Window

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
