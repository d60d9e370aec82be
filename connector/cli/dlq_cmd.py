"""``connector dlq list | show ID | replay | discard [--kind K] [--account A] [--filter TEXT] | resume A D``.

Names are checked before anything is done: an account filter must be a configured account or one
that has dead letters, a kind one that has dead letters, ``sync`` / ``events``, ``sync:<name>`` of a
configured destination or ``sync:<type>`` of a type configured destinations are of (it selects the
dead letters of every destination of that type, whatever its name), and ``resume`` takes a
configured destination of a configured account (or a pair that is paused now); an unknown name is
refused with the closest known one and the known ones.

A replay or discard is recorded in the audit log (``deadletters.replay``, ``deadletters.discard``),
one entry per account acted on (dead letters of no account under ``*``), as the admin API does; a
``--filter`` text is kept as a digest and its length only (:func:`connector.ops.audit.filter_digest`).
A resume is recorded too (``destination.resume``): it restarts the pushes to the ESP.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import NoReturn

import click
import redis

from connector import clock, sync
from connector import runtime as process_runtime
from connector.destinations import TYPES, destinations
from connector.ops import audit
from connector.ops import deadletter_actions as actions
from connector.suggest import unknown
from connector.sync.control import NO_SUCH_DESTINATION
from connector.sync.deadletters import DeadLetter, DeadLetters, Destinations, kinds_selected, selects

ALL = 10**9
MIN_PREFIX = 8  # the shortest beginning of an id `show` takes
FIND_MOST = 10  # ids named when a beginning is ambiguous


def _conn() -> redis.Redis:
    return process_runtime.current().queue_redis


def _configured() -> Destinations:
    """The configured destinations: account id → destination name → type."""
    return {
        account.id: {name: dest.type for name, dest in destinations(account).items()}
        for account in process_runtime.current().accounts
    }


def _select(
    dead: DeadLetters,
    kind: str | None,
    account: str | None,
    text: str | None,
    configured: Destinations,
    limit: int = ALL,
) -> Iterator[DeadLetter]:
    shown = 0
    for k in kinds_selected(dead.kinds(), kind, configured):
        for item in dead.list(k, limit=ALL):
            if account and item.account != account:
                continue
            if not selects(kind, item, configured) or not item.matches(text):
                continue
            yield item
            shown += 1
            if shown >= limit:
                return


def _check_filters(dead: DeadLetters, kind: str | None, account: str | None) -> Destinations:
    """Refuse a kind or account filter that matches nothing anyone could mean (a typo); the
    configured destinations, which the kind filter reads."""
    configured = _configured()
    if account is not None:
        stored = {item.account for item in dead.list(limit=ALL) if item.account}
        if account not in configured and account not in stored:
            raise click.BadParameter(
                unknown("account", account, [*configured, *stored]), param_hint="--account"
            )
    if kind is not None:
        kinds = dead.known_kinds(destinations=configured)
        if kind not in kinds:
            raise click.BadParameter(unknown("kind", kind, kinds), param_hint="--kind")
        _say_type(kind, account, configured)
    return configured


def _say_type(kind: str, account: str | None, configured: Destinations) -> None:
    """On stderr, which destinations a ``sync:<type>`` filter stands for when one of them is named
    otherwise (``sync:hubspot`` selecting ``acme/crm``)."""
    family, _, wanted = kind.partition(":")
    if family != "sync" or wanted not in TYPES:
        return
    found = [
        (a, name)
        for a, by_name in sorted(configured.items())
        for name, type_ in sorted(by_name.items())
        if type_ == wanted and account in (None, a)
    ]
    if any(name != wanted for _, name in found):
        listed = ", ".join(f"{a}/{name}" for a, name in found)
        click.echo(f"--kind {kind}: the dead letters of the {wanted} destinations {listed}", err=True)


def _check_destination(conn: redis.Redis, account_id: str, destination: str) -> None:
    """``resume`` takes a configured destination, or a pair paused now (e.g. one since removed)."""
    if (account_id, destination) in sync.paused(conn):
        return
    rt = process_runtime.current()
    account = rt.account(account_id)
    if account is None:
        raise click.BadParameter(
            unknown("account", account_id, [a.id for a in rt.accounts]), param_hint="ACCOUNT"
        )
    configured = destinations(account)
    if destination not in configured:
        raise click.BadParameter(
            unknown(f"destination of {account_id}", destination, configured), param_hint="DESTINATION"
        )


def _record(
    conn: redis.Redis,
    action: str,
    selection: dict[str, str | None],
    outcomes: Iterable[tuple[DeadLetter, str]],
    now: datetime,
) -> None:
    """One audit entry per account acted on, with the selection (the text filter as a digest) and
    that account's outcomes; the account filter's (or ``*``) when nothing matched."""
    per_account: dict[str, dict[str, int]] = {}
    for item, outcome in outcomes:
        counts = per_account.setdefault(item.account or audit.ALL, {})
        counts[outcome] = counts.get(outcome, 0) + 1
    if not per_account:
        per_account[selection.get("account") or audit.ALL] = {}
    actor = audit.cli_actor()
    for account, counts in sorted(per_account.items()):
        actions.record(conn, actor, action, account, dict(selection), counts, now)


def register(cli: click.Group) -> None:
    cli.add_command(dlq)


@click.group()
def dlq() -> None:
    """Dead letters: list, show, replay, discard; paused destinations (resume)."""


@dlq.command("list")
@click.option("--kind", help="events, sync, sync:<destination name>, sync:<type> (all of that type) ...")
@click.option("--account")
@click.option("--filter", "text", help="only items holding this text (any field, any case)")
@click.option("--limit", default=100, show_default=True, type=click.IntRange(min=1))
def list_(kind: str | None, account: str | None, text: str | None, limit: int) -> None:
    """Dead letters, oldest first, and destinations paused for bad credentials."""
    conn = _conn()
    configured = _check_filters(DeadLetters(conn), kind, account)
    for (a, d), info in sorted(sync.paused(conn).items()):
        if account and a != account:
            continue
        click.echo(
            f"PAUSED {a}/{d} since {info.get('at')}: {info.get('reason')} (status {info.get('status')})"
        )
    dead = DeadLetters(conn)
    count = 0
    for item in _select(dead, kind, account, text, configured, limit):
        click.echo(f"{item.id}  {item.kind:<20} {item.account or '-':<16} {item.at}  {item.reason}")
        count += 1
    stored = {k: dead.count(k) for k in dead.kinds()}  # a kind stays known once its items are gone
    totals = ", ".join(f"{k}: {n}" for k, n in stored.items() if n) or "none"
    click.echo(f"{count} shown; stored per kind: {totals}")


@dlq.command("show")
@click.argument("item_id", metavar="ID")
def show(item_id: str) -> None:
    """One dead letter with its error and payload. ID is its id, or the first 8 or more characters
    of it when no other dead letter's id begins with them."""
    dead = DeadLetters(_conn())
    item = dead.get(item_id) or _by_prefix(dead, item_id)
    click.echo(json.dumps(item.__dict__, indent=2, default=str))


def _by_prefix(dead: DeadLetters, prefix: str) -> DeadLetter:
    """The one dead letter whose id begins with ``prefix``; exit 1 saying why there is none."""
    wanted = prefix.strip().lower()
    if len(wanted) < MIN_PREFIX:
        _fail(f"no dead letter {prefix} (give its id, or at least its first {MIN_PREFIX} characters)")
    found = dead.find(wanted, most=FIND_MOST)
    if len(found) > 1:
        listed = ", ".join(found) + ("" if len(found) < FIND_MOST else ", ...")
        _fail(f"{prefix} is ambiguous: several dead letters begin with it ({listed}); give more of the id")
    item = dead.get(found[0]) if found else None
    if item is None:
        _fail(f"no dead letter {prefix} (`connector dlq list` shows their ids)")
    return item


def _fail(message: str) -> NoReturn:
    click.echo(message, err=True)
    sys.exit(1)


@dlq.command("replay")
@click.option(
    "--kind",
    help="sync, sync:<destination name>, sync:<type> (all of that type) or events "
    "(other kinds cannot be replayed)",
)
@click.option("--account")
@click.option("--filter", "text", help="only items holding this text (any field, any case)")
def replay(kind: str | None, account: str | None, text: str | None) -> None:
    """Put matching dead-lettered changes back in the sync queue, and events on their stream."""
    conn = _conn()
    dead = DeadLetters(conn)
    configured = _check_filters(dead, kind, account)
    items = list(_select(dead, kind, account, text, configured))

    def exists(account_id: str, destination: str) -> bool:
        return destination in configured.get(account_id, {})

    done = actions.Run()
    now = clock.now()
    try:
        with click.progressbar(items, label=f"replaying {len(items)}", file=sys.stderr) as bar:
            actions.run(conn, dead, actions.REPLAY, bar, now, exists, into=done)
    finally:
        _record(conn, actions.REPLAY, {"kind": kind, "account": account, "filter": text}, done.done, now)
    outcomes = done.outcomes
    summary = ", ".join(f"{k}: {v}" for k, v in sorted(outcomes.items())) or "nothing matched"
    click.echo(f"replay done: {summary}")
    gone = sorted(
        {f"{i.account}/{i.kind.partition(':')[2]}" for i, o in done.done if o == NO_SUCH_DESTINATION}
    )
    if gone:
        click.echo(
            f"kept {outcomes[NO_SUCH_DESTINATION]} dead letters of destinations no longer in their "
            f"account file ({', '.join(gone)}; renamed or removed): they can be replayed once the "
            "destination is back under that name, or discarded",
            err=True,
        )


@dlq.command("resume")
@click.argument("account")
@click.argument("destination")
def resume(account: str, destination: str) -> None:
    """Lift the pause of a destination (after fixing its credentials) and flush it. Recorded in the
    audit log (destination.resume)."""
    conn = _conn()
    _check_destination(conn, account, destination)
    now = clock.now()
    pause = sync.paused(conn).get((account, destination))
    removed = sync.resume(conn, account, destination, now)
    # the pause's instant and HTTP status, not its reason: that is the ESP's own text
    info = pause or {}
    before = {"paused": removed, "since": info.get("at"), "status": info.get("status")}
    target = f"destination:{account}/{destination}"
    audit.record(
        conn, audit.cli_actor(), "destination.resume", target, [account], before, {"paused": False}, now
    )
    click.echo(f"{account}/{destination}: {'resumed' if removed else 'was not paused; flush armed'}")


@dlq.command("discard")
@click.option("--kind", help="events, sync, sync:<destination name>, sync:<type> (all of that type) ...")
@click.option("--account")
@click.option("--filter", "text", help="only items holding this text (any field, any case)")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def discard(kind: str | None, account: str | None, text: str | None, yes: bool) -> None:
    """Delete matching dead letters for good (the same filters as replay)."""
    conn = _conn()
    dead = DeadLetters(conn)
    configured = _check_filters(dead, kind, account)
    items = list(_select(dead, kind, account, text, configured))
    selection = {"kind": kind, "account": account, "filter": text}
    if not items:
        _record(conn, actions.DISCARD, selection, [], clock.now())
        click.echo("discard done: nothing matched")
        return
    if not yes:
        click.confirm(f"discard {len(items)} dead letters for good?", abort=True, err=True)
    done = actions.Run()
    try:
        with click.progressbar(items, label=f"discarding {len(items)}", file=sys.stderr) as bar:
            actions.run(conn, dead, actions.DISCARD, bar, clock.now(), into=done)
    finally:
        _record(conn, actions.DISCARD, selection, done.done, clock.now())
    click.echo(f"discard done: {len(items)} removed")
