"""The inspect commands are registered on `tamer` and documented with an example each."""

from __future__ import annotations

import inspect

import pytest

from tamer.cli import app

INSPECT_COMMANDS = ("history", "steps", "events", "sql", "plot", "report", "doctor")


@pytest.mark.parametrize("name", INSPECT_COMMANDS)
def test_command_help_ends_with_an_example(name):
    """Each inspect command is registered and its help text ends with an `Example: tamer NAME ...` line."""
    commands = {command.callback.__name__: command for command in app.registered_commands}
    assert name in commands, f"`tamer {name}` is not registered"
    lines = [line.strip() for line in inspect.getdoc(commands[name].callback).splitlines() if line.strip()]
    assert lines[-1].startswith(f"Example: tamer {name}")
