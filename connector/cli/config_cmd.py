"""``connector config validate DIR``."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from connector.config import load_accounts
from connector.errors import ConfigError


def register(cli: click.Group) -> None:
    @cli.group()
    def config() -> None:
        """Account configuration."""

    @config.command("validate")
    @click.argument("directory", type=click.Path(path_type=Path), default="config/accounts")
    def validate(directory: Path) -> None:
        """Check every account file in DIRECTORY (the same check as start-up)."""
        try:
            accounts = load_accounts(directory)
        except ConfigError as err:
            click.echo(f"invalid: {err}", err=True)
            sys.exit(1)
        for account in accounts:
            senders = ", ".join(sorted(account.senders)) or "no senders"
            click.echo(f"ok: {account.id} ({account.file}): {senders}")
