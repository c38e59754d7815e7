"""Which side a `cloud` command acts on: the local stack, or AWS (DESIGN.md)."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, cast
from urllib.parse import urlsplit

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    NoCredentialsError,
    PartialCredentialsError,
    ProfileNotFound,
    ProxyConnectionError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError

from cloud.aws import TABLE_NAME, Endpoint
from cloud.errors import ConfigError, PipelineError, aws_code
from cloud.local.state import StackState, running_state

TARGETS = ("local", "aws")

#: What to do when boto3 finds no credentials; both sides are named, since a new user
#: with no stack running lands on AWS by default (README: the target).
NO_CREDENTIALS = (
    "no AWS credentials: set AWS_PROFILE, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
    "(or run `aws configure`); to use the local stack instead, run `cloud local up` in this "
    "folder"
)


@dataclass(frozen=True)
class Target:
    name: str  # "local" or "aws"
    endpoint: Endpoint
    table: str
    stack: StackState | None  # the running local stack, for the local target
    why: str  # how it was chosen, for `cloud status`

    def exports(self, given: str | None, option: str) -> str:
        """Where exports are written or read: `given`, else the local stack's folder.

        The local stack keeps its exports in a folder of its data (S3 there would need a
        server of its own); s3:// is for AWS, or for a moto server with --target aws.
        """
        if self.stack is None:
            if given is None:
                raise ConfigError(
                    f"{option} is missing: give a folder or s3://BUCKET/PREFIX (only the "
                    f"local stack has a default; target is {self.name}: {self.why})"
                )
            return given
        if given is None:
            return str(self.stack.exports_dir)
        if given.startswith("s3://"):
            raise ConfigError(
                f"{option} {given}: the local stack has no S3; its exports are in "
                f"{self.stack.exports_dir} (omit {option}), or give a folder; for S3 use "
                "--target aws"
            )
        return given


def resolve(
    flag: str | None,
    endpoint_url: str | None,
    root: Path | None = None,
    *,
    need_stack: bool = True,
) -> Target:
    """Flag, then CLOUD_TARGET, then local if a stack runs from this folder, else aws.

    `need_stack=False` lets a local command that only needs the local CA run without one.
    """
    root = Path.cwd() if root is None else root
    state = running_state(root)
    env = os.environ.get("CLOUD_TARGET")
    if flag:
        name, why = flag, "--target"
    elif env:
        if env not in TARGETS:
            raise ConfigError(f"CLOUD_TARGET: {env!r} is not one of local, aws")
        name, why = env, "CLOUD_TARGET"
    elif state is not None:
        name, why = "local", f"a local stack runs from {root}"
    else:
        name, why = "aws", "no local stack runs from this folder"
    table = os.environ.get("SENSOR_TABLE", TABLE_NAME)
    if name == "local":
        if state is not None:
            return Target("local", state.endpoint, state.table, state, why)
        if need_stack:
            raise ConfigError(
                f"--target local: no local stack runs from {root}; start it with `cloud local up`"
            )
        return Target("local", Endpoint(None), table, None, why)
    endpoint = Endpoint(endpoint_url or os.environ.get("AWS_ENDPOINT_URL"))
    if "SENSOR_TABLE" not in os.environ:
        table = _deployed_table(endpoint) or table
    return Target("aws", endpoint, table, None, why)


def _deployed_table(endpoint: Endpoint) -> str | None:
    """The table `cloud deploy` made (the stack's TableName output), if a stack exists."""
    from cloud.stack.deploy import DEFAULT_STACK_NAME, stack_outputs

    try:
        outputs = stack_outputs(endpoint, os.environ.get("SENSOR_STACK", DEFAULT_STACK_NAME))
    except (PipelineError, BotoCoreError, ClientError):
        return None  # no stack (or no access to CloudFormation): the default name
    return outputs.get("TableName")


def aws_problem(exc: BotoCoreError, root: Path | None = None) -> str | None:
    """One line saying what to do about an AWS call that could not be made at all (no
    credentials, nothing answering at the endpoint), or None for any other failure.

    Kept here, not in each caller, because the advice depends on where the call went: the
    local stack's table engine, an endpoint the user gave, or AWS itself.
    """
    if isinstance(exc, NoCredentialsError):
        return NO_CREDENTIALS
    if isinstance(exc, PartialCredentialsError):
        return (
            f"incomplete AWS credentials: {exc}; "
            "set both AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
        )
    if isinstance(exc, ProfileNotFound):
        return f"AWS_PROFILE: {exc}; `aws configure list-profiles` lists the profiles there are"
    if isinstance(exc, ProxyConnectionError):
        return f"cannot reach the proxy {exc.kwargs.get('proxy_url')}: check HTTPS_PROXY"
    if isinstance(exc, BotoConnectionError):
        return unreachable(str(exc.kwargs.get("endpoint_url") or ""), root)
    return None


def unreachable(url: str, root: Path | None = None) -> str:
    """Nothing answers at `url` (an endpoint URL botocore could not connect to)."""
    parts = urlsplit(url)
    base = f"{parts.scheme}://{parts.netloc}" if parts.netloc else (url or "the endpoint")
    state = running_state(Path.cwd() if root is None else root)
    if state is not None and base == state.endpoint.url:
        return (
            f"the local stack's table engine ({base}) is not answering: `cloud local status` "
            "shows it; the stack restarts it within seconds, and `cloud local up` starts "
            "what is missing"
        )
    if parts.hostname and parts.hostname.endswith(".amazonaws.com"):
        return f"cannot reach AWS at {base}: check the network connection and AWS_REGION"
    given = os.environ.get("AWS_ENDPOINT_URL", "").rstrip("/")
    source = "AWS_ENDPOINT_URL" if given == base else "--endpoint-url or AWS_ENDPOINT_URL"
    return f"nothing answers at {base} ({source}): start that server, or fix the address"


F = TypeVar("F", bound=Callable[..., Any])


def aws_errors(what: str, error: Callable[[str, str | None], PipelineError]) -> Callable[[F], F]:
    """AWS's errors as the project's own, so the CLI prints one line: a ClientError
    becomes `error` (with AWS's code), missing credentials a ConfigError saying what to set."""

    def decorate(func: F) -> F:
        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return func(*args, **kwargs)
            except ClientError as exc:
                raise error(f"{what} failed: {exc}", aws_code(exc)) from None
            except NoCredentialsError:
                raise ConfigError(NO_CREDENTIALS) from None
            except BotoCoreError as exc:
                raise error(f"{what} failed: {aws_problem(exc) or exc}", None) from None

        return cast(F, wrapper)

    return decorate
