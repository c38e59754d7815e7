"""Options more than one `cloud` command takes, each declared once so their help agrees."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import click

from cloud import target as targets
from cloud.cli.output import OUTPUT_FORMATS
from cloud.stack.deploy import DEFAULT_STACK_NAME

F = TypeVar("F", bound=Callable[..., Any])

endpoint_url = click.option(
    "--endpoint-url", help="AWS endpoint (e.g. a moto server); also AWS_ENDPOINT_URL."
)
region = click.option("--region", help="AWS region [AWS_REGION, or the profile's].")
target = click.option(
    "--target",
    type=click.Choice(targets.TARGETS),
    help="Act on the local stack or AWS [local while one runs here; also CLOUD_TARGET].",
)


def target_options(func: F) -> F:
    """--target and --endpoint-url: every command that may act on either side."""
    return target(endpoint_url(func))


def stack_name(help: str) -> Callable[[F], F]:
    return click.option("--stack-name", default=DEFAULT_STACK_NAME, show_default=True, help=help)


def output_format(func: F) -> F:
    """--format for commands that print rows (cloud.cli.output writes them)."""
    return click.option(
        "--format",
        "fmt",
        type=click.Choice(OUTPUT_FORMATS),
        default="table",
        show_default=True,
        help="An aligned table, CSV with a header, or one JSON object per line.",
    )(func)


def choice_format(choices: Sequence[str], default: str, help: str) -> Callable[[F], F]:
    """--format naming something other than printed rows (an export's layout)."""
    return click.option(
        "--format",
        "fmt",
        type=click.Choice(choices),
        default=default,
        show_default=True,
        help=help,
    )


def since(help: str = "From this time: ISO 8601, epoch ms, or -1h, -7d.") -> Callable[[F], F]:
    return click.option("--since", help=help)


def until(help: str = "Up to this time (same forms).") -> Callable[[F], F]:
    return click.option("--until", help=help)


def data(help: str) -> Callable[[F], F]:
    return click.option("--data", metavar="DIR|s3://BUCKET/PREFIX", help=help)
