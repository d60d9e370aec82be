"""``connector config validate [DIR]``: the start-up check, plus what only shows at run time.

Beyond loading every file (the start-up check), it reports as errors a destination whose API-key
variable is unset (at run time that only pauses the destination), and as warnings the event names
rules read that the account has never received (the names seen are kept in Redis, ``names:<account>``)
and no built-in template uses, with the closest seen name; ``trait:`` names close to a computed trait
they are not, and destination ``fields:`` keys that are no computed trait (:mod:`connector.trait_names`).

With ``--esps`` it also asks each enabled destination's ESP, with read requests only, whether every
list, static segment, audience, tag and field/property its mappings name exists
(:mod:`connector.esp_check`); ``--account`` limits that to one account, ``--json`` prints one JSON
document. Exit codes: 0 valid (and, with ``--esps``, every object there or created on first use), 1
an invalid file or a missing or unusable object, 3 nothing missing but some object could not be
checked (credentials refused, the ESP unreachable), 2 a usage error.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import click
import redis

from adapters.base import CREATED
from connector import esp_check, event_names, redis_conn, trait_names
from connector.config import Account, Accounts, load_account_file
from connector.destinations import destinations
from connector.errors import ConfigError, env_name_shown
from connector.settings import config_source, redact, redis_source
from connector.suggest import unknown


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
@click.option(
    "--esps",
    is_flag=True,
    help="Also ask each enabled destination's ESP (read requests only) whether every list, tag and "
    "field the mappings name exists. Exit 1: a file is invalid or an object is missing; 3: some could "
    "not be checked (credentials refused, ESP unreachable).",
)
@click.option("--account", "account_id", help="With --esps: check only this account's destinations.")
@click.option("--json", "as_json", is_flag=True, help="Print the outcome as one JSON document.")
def validate(directory: Path | None, esps: bool, account_id: str | None, as_json: bool) -> None:
    """Check every account file in DIRECTORY (default: the config directory the processes use)."""
    try:
        _validate(directory, esps, account_id, as_json)
    except click.UsageError as err:  # with --json, stdout still holds one document saying why
        if as_json:
            click.echo(json.dumps({"valid": False, "usage_error": err.format_message(), "exit_code": 2}))
        raise
    except _NothingToCheck as err:
        click.echo(f"invalid: {err}", err=True)
        if as_json:
            doc = {"valid": False, "errors": [str(err)], "exit_code": esp_check.EXIT_INVALID}
            click.echo(json.dumps(doc, indent=2))
        sys.exit(esp_check.EXIT_INVALID)


class _NothingToCheck(Exception):
    """The directory is missing or holds no account file."""


def _validate(directory: Path | None, esps: bool, account_id: str | None, as_json: bool) -> None:
    if account_id is not None and not esps:
        raise click.BadParameter(
            "selects the account whose ESPs --esps checks: add --esps", param_hint="--account"
        )
    source = "argument"
    if directory is None:
        directory, source = config_source()
    click.echo(f"config {directory.resolve()} (from {source})", err=True)
    accounts, errors = _validate_files(directory)
    _warn_event_names(accounts)
    _warn_trait_names(accounts)
    for error in errors:
        click.echo(f"invalid: {error}", err=True)
    valid = [a for a in accounts if not any(e.startswith(f"{a.file}:") for e in errors)]
    checked: list[esp_check.MappingCheck] = []
    notes: list[str] = []
    if esps:
        checked, notes = _check_esps(_chosen(accounts, account_id))
    code = esp_check.EXIT_INVALID if errors else esp_check.exit_code(checked)
    if as_json:
        doc = _document(directory, accounts, valid, errors, esps, checked, notes)
        click.echo(json.dumps({**doc, "exit_code": code}, indent=2))
    else:
        for account in valid:
            senders = ", ".join(sorted(account.senders)) or "no senders"
            click.echo(f"ok: {account.id} ({account.file}): {senders}")
        if esps:
            _print_checks(checked, notes)
    sys.exit(code)


def _validate_files(directory: Path) -> tuple[list[Account], list[str]]:
    """The loaded accounts and the errors (the start-up check, and unset API-key variables); a
    missing or empty directory ends the command (exit 1)."""
    if not directory.is_dir():
        raise _NothingToCheck(f"{directory}: config directory does not exist")
    files = sorted(p for p in directory.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())
    if not files:
        raise _NothingToCheck(f"{directory} holds no accounts (no .yaml files)")
    accounts, errors = _load(files)
    if not errors:
        try:
            Accounts(accounts)  # across files: one id per account, one write key per account
        except ConfigError as err:
            errors.append(str(err))
    for account in accounts:
        errors.extend(_unset_keys(account))
    return accounts, errors


def _chosen(accounts: list[Account], account_id: str | None) -> list[Account]:
    if account_id is None:
        return accounts
    chosen = [a for a in accounts if a.id == account_id]
    if not chosen:
        known = [a.id for a in accounts]
        raise click.BadParameter(
            unknown("account", account_id, known) + " (an account whose file is invalid cannot be checked)",
            param_hint="--account",
        )
    return chosen


def _check_esps(accounts: list[Account]) -> tuple[list[esp_check.MappingCheck], list[str]]:
    checked: list[esp_check.MappingCheck] = []
    notes: list[str] = []
    for account in accounts:
        results, said = esp_check.check_account(account)
        checked += results
        notes += said
    return checked, notes


def _print_checks(checked: list[esp_check.MappingCheck], notes: list[str]) -> None:
    """One line per mapping, the notes, and the counts (stdout)."""
    for result in checked:
        click.echo(result.line())
    for note in notes:
        click.echo(f"note: {note}")
    found = esp_check.counts(checked)
    summary = ", ".join(f"{esp_check.LABELS.get(k, k)}: {n}" for k, n in sorted(found.items()))
    click.echo(f"esps: {len(checked)} mappings checked" + (f" ({summary})" if summary else ""))
    if found.get(CREATED):
        click.echo(
            "(`ok, not yet`: not at the ESP yet, created on first use by the ESP or the connector: "
            "not an error)"
        )


def _document(
    directory: Path,
    accounts: list[Account],
    valid: list[Account],
    errors: list[str],
    esps: bool,
    checked: list[esp_check.MappingCheck],
    notes: list[str],
) -> dict[str, Any]:
    ok = {a.id for a in valid}
    doc: dict[str, Any] = {
        "config": str(directory.resolve()),
        "valid": not errors,
        "errors": errors,
        "accounts": [{"id": a.id, "file": a.file, "ok": a.id in ok} for a in accounts],
    }
    if esps:
        doc["esps"] = {
            "results": [r.to_dict() for r in checked],
            "notes": notes,
            "counts": esp_check.counts(checked),
        }
    return doc
