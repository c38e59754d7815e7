"""`cloud local up | down | reset | status`: the pipeline on this machine."""

from __future__ import annotations

from pathlib import Path

import click

from cloud.cli.errors import reports_errors
from cloud.cli.output import relative, size
from cloud.cli.status import echo_local_status, status
from cloud.local import stack
from cloud.local.state import StackState, running_state, state_dir
from cloud.local.status import folder_size
from cloud.stack.deploy import DEFAULT_STACK_NAME


@click.group()
def local() -> None:
    """Run the pipeline on this machine: a table engine, Mosquitto and ingest, on loopback."""


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
        f"data in {relative(state.table_dir)})"
    )
    click.echo(f"exports  {relative(state.exports_dir)} (where `cloud export` writes by default)")
    click.echo(f"logs     {relative(state.logs_dir)}/")
    click.echo("next     device-agent --id sensor-3 --count 100 --interval 0.1")


@local.command("down")
@reports_errors
def local_down() -> None:
    """Stop what `cloud local up` started from this folder; the data stays."""
    stopped = stack.down(Path.cwd())
    state = StackState.load(Path.cwd())
    if stopped:
        click.echo(f"stopped {', '.join(stopped)}")
    else:
        click.echo(f"no local stack runs from {Path.cwd()}; nothing to stop")
    if state is not None and state.data.exists():
        kept = size(folder_size(state.data))
        click.echo(f"data kept in {relative(state.data)} ({kept}); `cloud local reset` deletes it")


@local.command("reset")
@click.option("--yes", is_flag=True, help="Do not ask first.")
@reports_errors
def local_reset(yes: bool) -> None:
    """Stop the local stack and delete its data: every reading, export and queued message.

    Certificates in certs/ stay, so devices keep their identities.
    """
    state = StackState.load(Path.cwd())
    data = state.data if state is not None else state_dir(Path.cwd())
    if not yes:
        click.confirm(
            f"delete the table, exports and broker queues in {relative(data)}?", abort=True
        )
    stopped, deleted = stack.reset(Path.cwd())
    if stopped:
        click.echo(f"stopped {', '.join(stopped)}")
    for path in deleted:
        click.echo(f"deleted {relative(path)}")
    if not deleted:
        click.echo("no data to delete")


@local.command("status")
@click.pass_context
@reports_errors
def local_status(ctx: click.Context) -> None:
    """Each part (running or not, pid, uptime, restarts) and where the data is, how big."""
    root = Path.cwd()
    if running_state(root) is not None:
        ctx.invoke(status, target="local", endpoint_url=None, stack_name=DEFAULT_STACK_NAME)
        return
    state = StackState.load(root)
    if state is None:
        raise click.ClickException(
            f"no local stack has run from {root}; `cloud local up` starts one"
        )
    click.echo(f"target   local: not running (`cloud local up` starts it from {root})")
    echo_local_status(state)
