"""``connector config validate [DIR]``: the start-up check, plus what only shows at run time.

Beyond loading every file (the start-up check), it reports as errors a destination whose API-key
variable is unset (at run time that only pauses the destination), and as warnings the event names
rules read that the account has never received (the names seen are kept in Redis, ``names:<account>``)
and no built-in template uses, with the closest seen name; ``trait:`` names close to a computed trait
they are not, and destination ``fields:`` keys that are no computed trait (:mod:`connector.trait_names`).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from pathlib import Path

import click
import redis

from connector import event_names, redis_conn, trait_names
from connector.config import Account, Accounts, load_account_file
from connector.destinations import destinations
from connector.errors import ConfigError, env_name_shown
from connector.settings import config_source, redact, redis_source


def register(cli: click.Group) -> None:
    cli.add_command(config)


@click.group()
def config() -> None:
    """Account configuration."""


def _unset_keys(account: Account) -> list[str]:
    return [
        f"{account.file}: destinations.{name}.api_key_env: environment variable "
        f"{env_name_shown(dest.api_key_env)} is not set"
        for name, dest in destinations(account).items()
        if not os.environ.get(dest.api_key_env)
    ]


def event_warnings(account: Account, seen: Iterable[str]) -> list[str]:
    """Rules on an event the account never received and no template uses (connector.event_names)."""
    return [
        f"{account.file}: {path}: {message}"
        for path, message in event_names.warnings(account.rules, account.id, seen)
    ]


def trait_warnings(account: Account) -> list[str]:
    """``trait:`` names that look like a computed trait they are not, and ``fields:`` keys that are
    no computed trait (connector.trait_names)."""
    computed = account.ruleset.trait_names
    found = trait_names.warnings(account.rules, account.id, computed)
    if account.ruleset.segment_names or computed:  # a file without rules is not checked against them
        found += trait_names.field_warnings(destinations(account), account.id, computed)
    return [f"{account.file}: {path}: {message}" for path, message in found]


def _redis() -> tuple[redis.Redis | None, str]:
    try:
        url, source = redis_source()
    except ConfigError as err:
        return None, f"event names not checked: {err.reason}"
    return redis_conn.connection(url), f"event names checked against {redact(url)} (from {source})"


def _load(files: list[Path]) -> tuple[list[Account], list[str]]:
    accounts, errors = [], []
    for path in files:
        try:
            accounts.append(load_account_file(path))
        except ConfigError as err:
            errors.append(f"{err}")
    return accounts, errors


def _warn_event_names(accounts: list[Account]) -> None:
    conn, note = _redis()
    click.echo(note, err=True)
    for account in accounts if conn is not None else []:
        try:
            seen = event_names.seen_names(conn, account.id)
        except redis.RedisError as err:
            click.echo(f"event names not checked: Redis unavailable ({type(err).__name__})", err=True)
            return
        for warning in event_warnings(account, seen):
            click.echo(f"WARNING {warning}", err=True)


def _warn_trait_names(accounts: list[Account]) -> None:
    for account in accounts:
        for warning in trait_warnings(account):
            click.echo(f"WARNING {warning}", err=True)


@config.command("validate")
@click.argument("directory", type=click.Path(path_type=Path), required=False)
def validate(directory: Path | None) -> None:
    """Check every account file in DIRECTORY (default: the config directory the processes use)."""
    source = "argument"
    if directory is None:
        directory, source = config_source()
    click.echo(f"config {directory.resolve()} (from {source})", err=True)
    if not directory.is_dir():
        click.echo(f"invalid: {directory}: config directory does not exist", err=True)
        sys.exit(1)
    files = sorted(p for p in directory.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())
    if not files:
        click.echo(f"invalid: {directory} holds no accounts (no .yaml files)", err=True)
        sys.exit(1)
    accounts, errors = _load(files)
    if not errors:
        try:
            Accounts(accounts)  # across files: one id per account, one write key per account
        except ConfigError as err:
            errors.append(str(err))
    for account in accounts:
        errors.extend(_unset_keys(account))
    _warn_event_names(accounts)
    _warn_trait_names(accounts)
    for error in errors:
        click.echo(f"invalid: {error}", err=True)
    for account in accounts:
        if any(error.startswith(f"{account.file}:") for error in errors):
            continue
        senders = ", ".join(sorted(account.senders)) or "no senders"
        click.echo(f"ok: {account.id} ({account.file}): {senders}")
    if errors:
        sys.exit(1)
