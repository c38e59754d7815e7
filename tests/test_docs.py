"""Every command has help text and is in the README (as sqlite-utils' test_docs does), and
the README's command reference is its current --help."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from cloud.cli import main as cloud_main
from cloud.cli import reference
from device.cli import main as agent_main

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def walk(prefix: str, command: click.Command) -> Iterator[tuple[str, click.Command]]:
    yield prefix, command
    if isinstance(command, click.Group):
        for name, sub in command.commands.items():
            yield from walk(f"{prefix} {name}", sub)


COMMANDS = [*walk("cloud", cloud_main), *walk("device-agent", agent_main)]


@pytest.mark.parametrize(("name", "command"), COMMANDS, ids=[n for n, _ in COMMANDS])
def test_command_has_help_and_is_documented(name: str, command: click.Command):
    assert command.help, f"{name} has no help text"
    result = CliRunner().invoke(command, ["--help"])
    assert result.exit_code == 0 and "Usage:" in result.output
    assert name in README, f"{name} is not in README.md"


def test_the_readme_command_reference_is_current():
    # Fails when a command's help changed and `python -m cloud.cli.reference` was not run.
    assert reference.updated(README) == README, (
        "README.md's command reference is stale: run python -m cloud.cli.reference"
    )
