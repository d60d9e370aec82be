"""``connector events rejected``: the latest events that were not stored, with the reason."""

from __future__ import annotations

import json

import click
import redis

from connector import runtime as process_runtime
from connector.cli.accounts import known_account
from connector.profiles import rejected

# The stream keeps about ``rejected.KEPT`` events, so any larger --limit shows them all; Redis would
# refuse a count beyond its 64-bit range, so no more than this is asked for.
LIMIT_SENT_MAX = 1_000_000


def register(cli: click.Group) -> None:
    cli.add_command(events)


@click.group()
def events() -> None:
    """Stored events."""


@events.command("rejected")
@click.option("--account", "account_id", required=True)
@click.option(
    "--limit", default=20, show_default=True, type=click.IntRange(min=1), help="How many (at least 1)."
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON (one document).")
def rejected_cmd(account_id: str, limit: int, as_json: bool) -> None:
    """Events that had no usable identity (or could not be stored), newest first."""
    known_account(account_id)
    conn = process_runtime.current().profile_redis
    try:
        items = rejected.latest(conn, account_id, min(limit, LIMIT_SENT_MAX))
        total = rejected.count(conn, account_id)
    except redis.RedisError as err:
        raise click.ClickException(f"profile store unavailable: {type(err).__name__}") from err
    if as_json:
        click.echo(json.dumps([item.__dict__ for item in items], indent=2, sort_keys=True))
        return
    click.echo(f"{total} rejected events kept for {account_id}; latest {len(items)}:")
    for item in items:
        event = item.event
        click.echo(f"  {item.at}  {event.get('source')}  {event.get('name')}  {item.reason}")
