"""How a `cloud` command fails: our own errors as one line and exit 1, never a traceback."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

import click
from botocore.exceptions import BotoCoreError, ClientError

from cloud import target as targets
from cloud.errors import PipelineError, aws_code, aws_message

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
        return f"AWS refused the call: {aws_code(exc) or '?'}: {aws_message(exc)}"
    return f"AWS call failed: {exc}"
