"""`cloud config set | show` and `cloud devices`: the fleet's desired configs, what the
devices reported, their health and status (cloud.fleet does the work)."""

from __future__ import annotations

import json

import click
from botocore.exceptions import BotoCoreError

from cloud import target as targets
from cloud.cli import options
from cloud.cli.errors import aws_error_line, reports_errors
from cloud.cli.output import echo_rows
from cloud.errors import ConfigError, TableError
from cloud.fleet import config as fleet_config
from cloud.fleet.connect import known_devices, open_store, policy_things
from cloud.fleet.devices import COLUMNS, fleet, newest_reading, now_ms
from cloud.fleet.settings import parse_settings
from cloud.fleet.store import RetainedStore
from cloud.table import Row
from cloud.target import Target
from device.config import REMOTE_SETTINGS
from device.errors import PayloadError
from device.payload import check_sensor_id

CONFIG_COLUMNS = (
    "sensor_id",
    "desired_version",
    "reported_version",
    "state",
    "desired",
    "applied",
    "overridden",
    "error",
)

ids_option = click.option(
    "--id", "sensor_ids", multiple=True, metavar="ID", help="A device id (repeat for more)."
)
all_option = click.option(
    "--all",
    "every",
    is_flag=True,
    help="Every device known: ids seen on retained status, health or config topics, and on "
    "AWS the things of the stack's policy.",
)


def _chosen_ids(sensor_ids: tuple[str, ...], every: bool) -> None:
    if bool(sensor_ids) == every:
        raise click.UsageError("give --id ID (one or more) or --all")
    for sensor_id in sensor_ids:
        try:
            check_sensor_id(sensor_id)
        except PayloadError as exc:
            raise click.BadParameter(str(exc), param_hint="--id") from None


def _ids(
    store: RetainedStore, chosen: Target, given: tuple[str, ...], every: bool, stack_name: str
) -> list[str]:
    if not every:
        return list(given)
    ids = sorted(known_devices(store, chosen, stack_name))
    if not ids:
        raise ConfigError(f"--all: no device is known on {chosen.name} yet")
    return ids


@click.group("config")
def config() -> None:
    """Devices' remote configuration: the desired settings, and what each device applied."""


@config.command(
    "set",
    help="Merge KEY=VALUE settings into each device's desired config and publish it "
    "(retained, the next version); the device applies it without a restart and reports "
    f"back.\n\nSettings: {', '.join(REMOTE_SETTINGS)}. A flag given to the device agent wins "
    "over them (`config show` lists it as overridden).",
)
@ids_option
@all_option
@click.argument("settings", nargs=-1, required=True, metavar="KEY=VALUE...")
@options.stack_name("aws, with --all: the stack whose policy's things are devices too.")
@options.target_options
@reports_errors
def set_(
    sensor_ids: tuple[str, ...],
    every: bool,
    settings: tuple[str, ...],
    stack_name: str,
    target: str | None,
    endpoint_url: str | None,
) -> None:
    _chosen_ids(sensor_ids, every)
    try:
        values = parse_settings(settings)
    except ConfigError as exc:
        raise click.BadParameter(str(exc), param_hint="KEY=VALUE") from None
    chosen = targets.resolve(target, endpoint_url)
    store = open_store(chosen)
    try:
        ids = _ids(store, chosen, sensor_ids, every, stack_name)
        made = fleet_config.set_config(store, ids, values)
    finally:
        store.close()
    for sensor_id, desired in zip(sorted(set(ids)), made, strict=True):
        click.echo(
            f"{sensor_id}: desired version {desired.version} {json.dumps(dict(desired.settings))}"
        )


@config.command("show")
@ids_option
@all_option
@options.output_format
@options.stack_name("aws, with --all: the stack whose policy's things are devices too.")
@options.target_options
@reports_errors
def show(
    sensor_ids: tuple[str, ...],
    every: bool,
    fmt: str,
    stack_name: str,
    target: str | None,
    endpoint_url: str | None,
) -> None:
    """Each device's desired config beside what it reported: version, status, the settings
    applied, the error of a refused one, the settings its own flags override, and whether
    the two are in sync (in sync, pending, refused, no desired, or unreadable)."""
    _chosen_ids(sensor_ids, every)
    chosen = targets.resolve(target, endpoint_url)
    store = open_store(chosen)
    try:
        views = fleet_config.config_views(store, _ids(store, chosen, sensor_ids, every, stack_name))
    finally:
        store.close()
    rows = []
    for view in views:
        reported = view.reported
        rows.append(
            (
                view.sensor_id,
                view.desired.version if view.desired else None,
                reported.version if reported else None,
                view.state,
                dict(view.desired.settings) if view.desired else None,
                dict(reported.applied) if reported else None,
                list(reported.overridden) if reported else None,
                reported.error if reported else view.unreadable,
            )
        )
    echo_rows(CONFIG_COLUMNS, rows, fmt)


@click.command("devices")
@options.output_format
@options.stack_name("aws: the stack whose policy's things are listed too.")
@options.target_options
@reports_errors
def devices(fmt: str, stack_name: str, target: str | None, endpoint_url: str | None) -> None:
    """Every device: online or offline, last seen, its newest reading and that reading's age,
    its last health (outbox, oldest unsent, dropped, reconnects, clock), the config version
    it applied and whether that is the desired one. Offline and stale devices come first."""
    chosen = targets.resolve(target, endpoint_url)
    ddb = chosen.endpoint.client("dynamodb")
    problems: list[str] = []

    def newest(sensor_id: str) -> Row | None:
        # The fleet is the report asked for: a table that cannot be read is one more line
        # of it (as in `cloud status`), not the end of it.
        if problems:
            return None
        try:
            return newest_reading(ddb, chosen.table, sensor_id)
        except TableError as exc:
            problems.append(str(exc))
        except BotoCoreError as exc:
            problems.append(aws_error_line(exc))
        return None

    store = open_store(chosen)
    try:
        views = fleet(store, newest, policy_things(chosen, stack_name))
    finally:
        store.close()
    now = now_ms()
    echo_rows(COLUMNS, (v.values(now) for v in views), fmt)
    for problem in problems:
        click.echo(f"readings unknown: {problem}", err=True)
