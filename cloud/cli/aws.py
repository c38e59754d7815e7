"""`cloud deploy | destroy`: the CloudFormation stack that holds the AWS side."""

from __future__ import annotations

import os

import click

from cloud.aws import Endpoint
from cloud.cli import options
from cloud.cli.errors import reports_errors
from cloud.cli.output import Header


def _aws_endpoint(endpoint_url: str | None, region: str | None) -> Endpoint:
    return Endpoint(endpoint_url or os.environ.get("AWS_ENDPOINT_URL"), region)


@click.command()
@options.stack_name("CloudFormation stack name.")
@options.region
@click.option(
    "--param",
    "params",
    multiple=True,
    metavar="KEY=VALUE",
    help="A template parameter; repeatable.",
)
@options.endpoint_url
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
    header = Header(f"target aws ({endpoint.url or 'AWS'}), stack {stack_name}")
    outputs = deploy_stack(endpoint, stack_name, values, on_event=lambda e: header(e.line()))
    header()
    for key, value in sorted(outputs.items()):
        click.echo(f"{key:<20} {value}")


@click.command()
@options.stack_name("CloudFormation stack name.")
@options.region
@click.option(
    "--force",
    is_flag=True,
    help="Also empty the buckets, the table's data and detach device certificates.",
)
@options.endpoint_url
@reports_errors
def destroy(stack_name: str, region: str | None, force: bool, endpoint_url: str | None) -> None:
    """Remove the stack; refuses while it still holds data unless --force."""
    from cloud.errors import DestroyRefused
    from cloud.stack.deploy import destroy as destroy_stack

    endpoint = _aws_endpoint(endpoint_url, region)
    header = Header(f"target aws ({endpoint.url or 'AWS'}), stack {stack_name}")
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
