"""``connector profiles show|export|delete|exports``: inspect, export and erase a person's profile."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import click
import redis

from connector import clock, sync
from connector import runtime as process_runtime
from connector.cli.accounts import known_account, text_option
from connector.clock import isoformat
from connector.config import Account
from connector.destinations import destinations
from connector.ops import audit
from connector.profiles import erasure, identity
from connector.worker.access import kept_beyond_profile
from connector.worker.erasure import erase_person
from connector.worker.ledger import Ledger

RECENT_EVENTS = 20


def register(cli: click.Group) -> None:
    cli.add_command(profiles)


def _person_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed(
        [
            click.option("--account", "account_id", required=True, help="Account id.", callback=text_option),
            click.option("--email", default=None, callback=text_option),
            click.option("--user-id", default=None, callback=text_option),
            click.option("--anonymous-id", default=None, callback=text_option),
            click.option("--profile-id", default=None, help="The profile id itself.", callback=text_option),
        ]
    ):
        fn = option(fn)
    return fn


def _account(account_id: str) -> Account:
    return known_account(account_id)


def _connections(account_id: str) -> tuple[redis.Redis, redis.Redis]:
    _account(account_id)
    rt = process_runtime.current()
    return rt.profile_redis, rt.queue_redis


def _find(
    conn: redis.Redis,
    account_id: str,
    email: str | None,
    user_id: str | None,
    anonymous_id: str | None,
    profile_id: str | None,
) -> str:
    given = [(k, v) for k, v in (("email", email), ("user_id", user_id), ("anonymous_id", anonymous_id)) if v]
    if profile_id:
        return profile_id
    if len(given) != 1:
        raise click.UsageError("give exactly one of --email, --user-id, --anonymous-id, --profile-id")
    kind, raw = given[0]
    value = identity.clean_value(kind, raw, frozenset())
    pid = identity.lookup(conn, account_id, kind, value) if value else None
    if pid is None:
        raise click.ClickException(f"no profile with that {kind.replace('_', ' ')} in account {account_id}")
    return pid


def _redis_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except redis.RedisError as err:
            raise click.ClickException(f"profile store unavailable: {type(err).__name__}") from err

    wrapper.__name__ = fn.__name__
    wrapper.__doc__ = fn.__doc__
    return wrapper


@click.group()
def profiles() -> None:
    """Behavioral profiles: show, export, erase."""


@profiles.command("show")
@_person_options
@click.option("--events", "recent", default=RECENT_EVENTS, show_default=True, help="How many recent events.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@_redis_errors
def show(
    account_id: str,
    email: str | None,
    user_id: str | None,
    anonymous_id: str | None,
    profile_id: str | None,
    recent: int,
    as_json: bool,
) -> None:
    """The profile, its identities and its recent events."""
    conn, _ = _connections(account_id)
    pid = _find(conn, account_id, email, user_id, anonymous_id, profile_id)
    document = erasure.export_profile(conn, account_id, pid)
    if document is None:
        raise click.ClickException(f"profile {pid} does not exist (erased or merged)")
    total = len(document["events"])
    document["events"] = document["events"][-recent:] if recent > 0 else []
    document["event_count"] = total
    if as_json:
        click.echo(json.dumps(document, indent=2, sort_keys=True))
        return
    click.echo(f"profile {pid} (account {account_id})")
    click.echo("identities:")
    for kind, values in document["identities"].items():
        click.echo(f"  {kind}: {', '.join(values)}")
    click.echo("traits:" if document["traits"] else "traits: none")
    for name, value in sorted(document["traits"].items()):
        click.echo(f"  {name} = {json.dumps(value)}  (set {document['trait_updated_at'].get(name, '?')})")
    click.echo("first / last seen:" if document["first_seen"] else "first / last seen: none")
    for name in sorted(document["first_seen"]):
        click.echo(f"  {name}: {document['first_seen'][name]} / {document['last_seen'].get(name, '?')}")
    shown = len(document["events"])
    click.echo(f"events: {total} stored, latest {shown}:")
    for item in reversed(document["events"]):
        props = json.dumps(item["properties"], sort_keys=True) if item["properties"] else ""
        click.echo(f"  {item['occurred_at']}  {item['name']}  {props}".rstrip())


@profiles.command("export")
@_person_options
@_redis_errors
def export(
    account_id: str, email: str | None, user_id: str | None, anonymous_id: str | None, profile_id: str | None
) -> None:
    """Everything kept about the person, as JSON (an access request): the profile (identities,
    traits, events), segment memberships and computed traits, the segment history, and per
    destination what was sent there (applied version; tags, lists and fields the connector owns).
    Recorded in the audit log (person.export) with a digest, no identifier."""
    conn, queue_conn = _connections(account_id)
    account = _account(account_id)
    pid = _find(conn, account_id, email, user_id, anonymous_id, profile_id)
    document = erasure.export_profile(conn, account_id, pid)
    if document is None:
        raise click.ClickException(f"profile {pid} does not exist (erased or merged)")
    document.update(kept_beyond_profile(conn, queue_conn, account, pid))
    digest = erasure.profile_digest(account_id, pid)
    audit.person_exported(queue_conn, audit.cli_actor(), account_id, digest, clock.now())
    click.echo(json.dumps(document, indent=2, sort_keys=True, default=str))


@profiles.command("delete")
@_person_options
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@_redis_errors
def delete(
    account_id: str,
    email: str | None,
    user_id: str | None,
    anonymous_id: str | None,
    profile_id: str | None,
    yes: bool,
) -> None:
    """Erase the person from everything the connector keeps, and from every destination (asks
    first unless --yes); reports the ESP erasures it queued. The erasure is logged, and recorded in
    the audit log (person.erase), with a digest, no identifier."""
    conn, queue_conn = _connections(account_id)
    account = _account(account_id)
    pid = _find(conn, account_id, email, user_id, anonymous_id, profile_id)
    targets = sorted(destinations(account))
    if not yes:
        where = f" and ask {', '.join(targets)} to erase them" if targets else ""
        click.confirm(f"erase profile {pid} of account {account_id}{where}?", abort=True, err=True)
    now = clock.now()
    state = Ledger(conn).state(account_id, pid)
    if not erase_person(conn, queue_conn, account, pid, now, "cli"):
        raise click.ClickException(f"profile {pid} does not exist (erased or merged)")
    digest = erasure.profile_digest(account_id, pid)
    audit.person_erased(
        queue_conn, audit.cli_actor(), account_id, digest, state.segments if state else (), now
    )
    click.echo(f"erased profile {pid} at {isoformat(now)}")
    queued = [name for name in targets if _erasure_waits(queue_conn, account_id, name, pid)]
    if queued:
        click.echo(f"ESP erasures queued: {', '.join(queued)} (outcome: `connector dlq list`, sync:erasures)")
    else:
        click.echo("ESP erasures queued: none (no destination, or the person had no email address)")


def _erasure_waits(queue_conn: redis.Redis, account_id: str, destination: str, pid: str) -> bool:
    change = sync.pending(queue_conn, account_id, destination).get(pid)
    return change is not None and change.erase


@profiles.command("exports")
@click.option("--account", "account_id", required=True)
@click.option("--limit", default=20, show_default=True, type=click.IntRange(min=1, max=10_000))
@_redis_errors
def exports(account_id: str, limit: int) -> None:
    """Exports produced for data requests (customers/data_request), newest first, as JSON. Handing
    them out is recorded in the audit log (exports.read) with how many, nothing of what they hold."""
    conn, queue_conn = _connections(account_id)
    found = erasure.stored_exports(conn, account_id, limit)
    after = {"exports": len(found), "limit": limit}
    audit.record(
        queue_conn,
        audit.cli_actor(),
        "exports.read",
        f"exports:{account_id}",
        [account_id],
        None,
        after,
        clock.now(),
    )
    click.echo(json.dumps(found, indent=2, sort_keys=True))


@profiles.command("migrate-index")
@click.option("--account", "account_id", help="One account (or --all).")
@click.option("--all", "every", is_flag=True, help="Every account of the configuration, one after another.")
@_redis_errors
def migrate_index(account_id: str | None, every: bool) -> None:
    """Move the identity index of the earlier layout (one key per identity) into its buckets; safe
    while the workers run, and to run again (docs/deploy.md, upgrades)."""
    if bool(account_id) == every:
        raise click.UsageError("give exactly one of --account A and --all")
    ids = [account_id] if account_id else [a.id for a in process_runtime.current().accounts]
    for one in ids:
        conn, _ = _connections(one)
        moved = identity.migrate_index(conn, one)
        click.echo(f"identity index of {one}: {moved} identities moved; none of the earlier layout left")
