"""Settings from the environment plus command-line overrides, errors as usage errors."""

from __future__ import annotations

import click

from app.config import Settings, SettingsError, parse_models

MODEL_HELP = "NAME=SOURCE[?revision=R&dtype=D&task=T], repeatable; SOURCE is a local directory or a hub id."


def settings_from_env(models: tuple[str, ...] = (), **overrides) -> Settings:
    try:
        settings = Settings.from_env(**{k: v for k, v in overrides.items() if v is not None})
        if models:
            settings = settings.with_models(parse_models(models))
    except SettingsError as exc:
        raise click.UsageError(str(exc)) from None
    return settings


def hold_home(settings: Settings, command: str) -> None:
    """An embedded process (SQLite under POOLQ_HOME) is the only poolq on its home, unless
    `poolq up` started it and holds the home for it. On its own it also needs a broker:
    the embedded one exists only while `poolq up` runs, so say so instead of retrying forever."""
    from app.embedded.home_lock import HomeInUse, HomeLock, supervised_by_parent

    if supervised_by_parent():
        return
    if settings.embedded_database:
        try:
            HomeLock(settings.home, command).acquire()  # held until this process exits
        except HomeInUse as exc:
            raise click.ClickException(str(exc)) from None
    if settings.embedded_broker:
        raise click.ClickException(
            f"`poolq {command}` on its own needs a broker: set POOLQ_BROKER_URL (or REDIS_URL) to a Redis. "
            "The embedded Redis runs only inside `poolq up`, which starts its own worker and beat.")
