"""``connector config validate [DIR]``: the start-up check, plus what only shows at run time.

Beyond loading every file (the start-up check), it reports as errors a destination whose API-key
variable is unset (at run time that only pauses the destination), and as warnings the event names
rules read that the account has never received (the names seen are kept in Redis, ``names:<account>``)
and no built-in template uses, with the closest seen name.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any

import click
import redis

from connector import redis_conn
from connector.config import Account, Accounts, load_account_file
from connector.destinations import destinations
from connector.errors import ConfigError, env_name_shown
from connector.profiles.keys import names_key
from connector.profiles.store import PROPERTY_PREFIX
from connector.settings import config_source, redact, redis_source
from connector.suggest import did_you_mean
from rules import compile_rules
from rules.templates import all_templates_rules


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


def _event_paths(node: Any, path: str = "rules") -> Iterator[tuple[str, str]]:
    """(path, event name) of every ``event:`` a rules mapping names."""
    if isinstance(node, dict):
        for key, value in node.items():
            here = f"{path}.{key}"
            if key == "event" and isinstance(value, str):
                yield here, value
            else:
                yield from _event_paths(value, here)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _event_paths(value, f"{path}[{i}]")


@lru_cache(maxsize=1)
def template_events() -> frozenset[str]:
    return frozenset(compile_rules(all_templates_rules()).properties)


def seen_names(conn: redis.Redis, account_id: str) -> set[str]:
    """The event names the account has received (the workers' name codes, without the property
    keys that share the dictionary)."""
    fields = conn.hkeys(names_key(account_id))
    names = (f.decode() if isinstance(f, bytes) else str(f) for f in fields)
    return {n[2:] for n in names if n.startswith("n:") and not n.startswith("n:" + PROPERTY_PREFIX)}


def event_warnings(account: Account, seen: Iterable[str]) -> list[str]:
    """Rules on an event the account never received and no template uses: a likely typo."""
    seen = set(seen)
    known = seen | template_events()
    listed = ", ".join(sorted(seen)) or "none yet"
    out = []
    for path, name in _event_paths(account.rules):
        if name == "*" or name in known:
            continue
        out.append(
            f"{account.file}: {path}: event `{name}` was never received by {account.id} and no "
            f"template uses it{did_you_mean(name, known)}; names seen: {listed}"
        )
    return out


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
            seen = seen_names(conn, account.id)
        except redis.RedisError as err:
            click.echo(f"event names not checked: Redis unavailable ({type(err).__name__})", err=True)
            return
        for warning in event_warnings(account, seen):
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
    for error in errors:
        click.echo(f"invalid: {error}", err=True)
    for account in accounts:
        if any(error.startswith(f"{account.file}:") for error in errors):
            continue
        senders = ", ".join(sorted(account.senders)) or "no senders"
        click.echo(f"ok: {account.id} ({account.file}): {senders}")
    if errors:
        sys.exit(1)
