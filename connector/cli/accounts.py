"""The account a command names: a configured one, or a refusal with the closest known name; and
text options that must be text (:func:`text_option`)."""

from __future__ import annotations

import click

from connector import runtime as process_runtime
from connector import unicode_text
from connector.config import Account
from connector.suggest import unknown


def known_account(account_id: str) -> Account:
    """The configured account ``account_id``; else a ClickException naming the closest known account,
    the config directory, and the files that do not load (one of them may be the account)."""
    rt = process_runtime.current()
    account = rt.account(account_id)
    if account is None:
        broken = "".join(
            f"\n  {e.file}: {e.path + ': ' if e.path else ''}{e.reason}" for e in rt.provider.errors
        )
        where = f" (in {rt.settings.config_dir})" + (f"; files that do not load:{broken}" if broken else "")
        raise click.ClickException(unknown("account", account_id, [a.id for a in rt.accounts]) + where)
    return account


def text_option(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """A click callback: the option's value when it is text. Bytes that are not UTF-8 (kept by
    Python as lone surrogates) are refused naming the option: no account, identity or note can
    hold them."""
    del ctx, param
    if value is not None and (at := unicode_text.first_byte_not_text(value)) is not None:
        raise click.BadParameter(f"is not valid UTF-8 text (byte {at} cannot be decoded)")
    return value
