"""``connector tokens create|list|revoke``: the admin API's bearer tokens (docs/api.md)."""

from __future__ import annotations

import json

import click

from connector import clock, suggest
from connector import runtime as process_runtime
from connector.cli.accounts import text_option
from connector.ops import audit, tokens
from connector.unicode_text import printable


def register(cli: click.Group) -> None:
    cli.add_command(tokens_group)


@click.group("tokens")
def tokens_group() -> None:
    """Bearer tokens of the admin API (/api/v1): create, list, revoke."""


@tokens_group.command("create")
@click.option(
    "--account",
    "accounts",
    multiple=True,
    required=True,
    help="Account id (repeatable for admin tokens; '*' for every account, admin only).",
)
@click.option("--role", type=click.Choice(tokens.ROLES), required=True)
@click.option("--expires", default=tokens.DEFAULT_EXPIRY, show_default=True, help="90d, 12h, 2w ...")
@click.option("--note", default="", help="What the token is for (shown in lists).", callback=text_option)
def create(accounts: tuple[str, ...], role: str, expires: str, note: str) -> None:
    """Create a token. The token is printed once; only its SHA-256 is kept."""
    rt = process_runtime.current()
    now = clock.now()
    try:
        span = tokens.parse_expiry(expires)
        unknown = [a for a in accounts if a != tokens.ALL_ACCOUNTS and rt.account(a) is None]
        if unknown:
            known = [a.id for a in rt.accounts]
            raise tokens.TokenError(suggest.unknown("account", unknown[0], known))
        token, secret = tokens.create(rt.queue_redis, accounts, role, span, now, note)
    except tokens.TokenError as err:
        raise click.UsageError(str(err)) from err
    audit.record(
        rt.queue_redis, audit.cli_actor(), "token.create", token.id, token.accounts, None, token.public(), now
    )
    click.echo(f"token {token.id} ({role}, accounts {', '.join(token.accounts)}, expires {token.expires_at})")
    click.echo("shown once; keep it now:", err=True)
    click.echo(secret)


@tokens_group.command("list")
@click.option("--json", "as_json", is_flag=True)
def list_(as_json: bool) -> None:
    """Every token with its role, accounts and expiry (never the secret)."""
    found = tokens.tokens(process_runtime.current().queue_redis)
    if as_json:
        click.echo(json.dumps([t.public() for t in found], indent=2))
        return
    now = clock.now()
    for t in found:
        state = "EXPIRED" if t.expired(now) else "live"
        accounts = ",".join(t.accounts)
        note = printable(t.note)  # a note stored before they were refused may hold terminal controls
        click.echo(f"{t.id}  {t.role:<6} {state:<7} expires {t.expires_at}  {accounts}  {note}".rstrip())
    click.echo(f"{len(found)} token(s)")


@tokens_group.command("revoke")
@click.argument("token_id")
def revoke(token_id: str) -> None:
    """Revoke a token: it stops working at once."""
    rt = process_runtime.current()
    gone = tokens.revoke(rt.queue_redis, token_id)
    if gone is None:
        raise click.ClickException(f"no token {token_id}")
    now = clock.now()
    audit.record(
        rt.queue_redis, audit.cli_actor(), "token.revoke", gone.id, gone.accounts, gone.public(), None, now
    )
    click.echo(f"revoked {token_id}")
