"""Every `poolq` command and option says what it is for in --help."""

from __future__ import annotations

import click

from app.cli import cli


def walk(command: click.Command, path: str = "poolq"):
    yield path, command
    if isinstance(command, click.Group):
        for name, sub in command.commands.items():
            yield from walk(sub, f"{path} {name}")


def test_every_command_and_option_has_a_description():
    missing = []
    for path, command in walk(cli):
        if not (command.help or command.short_help):
            missing.append(path)
        for param in command.params:
            if isinstance(param, click.Option) and not param.help:
                missing.append(f"{path} {param.opts[0]}")
    assert missing == []
