"""State shared by CLI commands, and the one way they fail."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NoReturn

import typer

from forgehall.settings import LoadedSettings, SettingsError, load_settings


@dataclass
class CliState:
    config_file: str | None = None

    def load(self) -> LoadedSettings:
        try:
            return load_settings(config_file=self.config_file)
        except SettingsError as exc:
            fail(str(exc), code=2)


def fail(message: str, code: int = 1) -> NoReturn:
    """Print one clear error line and exit non-zero."""
    typer.echo(f"forgehall: error: {message}", err=True)
    raise typer.Exit(code)


def state(ctx: typer.Context) -> CliState:
    obj = ctx.find_root().obj
    return obj if isinstance(obj, CliState) else CliState()
