"""``connector import --account A FILE``: history from Segment / RudderStack JSON lines or Shopify CSV
exports, with a progress bar on stderr and a report of rejected lines (docs/import.md).

An import with ``--push`` is recorded in the audit log (``import.push``): it queues the resulting
segment changes for every destination at once, as a rules publish does. The entry holds the counts
of the report, nothing of the file (neither its name nor its lines). Without ``--push`` nothing
leaves the connector and the events are stored as a sender's would be: not recorded.
"""

from __future__ import annotations

import json
import sys
from datetime import datetime
from pathlib import Path

import click
import redis

from connector import clock
from connector import runtime as process_runtime
from connector.cli.accounts import known_account
from connector.errors import ConnectorError
from connector.ops import audit
from connector.worker.importer import (
    FORMATS,
    ImportFileError,
    ImportStopped,
    Report,
    detect_format,
    import_file,
)


def register(cli: click.Group) -> None:
    cli.add_command(import_cmd)


@click.command("import")
@click.option("--account", "account_id", required=True)
@click.option("--format", "fmt", type=click.Choice(FORMATS), help="Default: detected from the file.")
@click.option("--dry-run", is_flag=True, help="Parse and validate only; store nothing.")
@click.option("--push", is_flag=True, help="Send the resulting segment changes to the destinations.")
@click.option(
    "--show-rejected",
    default=20,
    show_default=True,
    type=click.IntRange(min=0),
    help="Rejected lines listed in the report.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON (every kept rejection).")
@click.option("--no-progress", is_flag=True, help="No progress bar on stderr.")
@click.argument("path", metavar="FILE", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def import_cmd(
    account_id: str,
    fmt: str | None,
    dry_run: bool,
    push: bool,
    show_rejected: int,
    as_json: bool,
    no_progress: bool,
    path: Path,
) -> None:
    """Import history from FILE into an account's profiles, as if the events had arrived live.

    FILE: JSON lines of Segment or RudderStack messages (track, identify, page, screen, group, alias),
    or a Shopify customers or orders CSV export. Importing a file twice changes nothing.
    """
    rt = process_runtime.current()
    account = known_account(account_id)
    now = clock.now()
    report: Report | None = None
    try:
        fmt = fmt or detect_format(path)
        with click.progressbar(
            length=path.stat().st_size,
            label=f"importing {path.name} ({fmt})",
            file=sys.stderr,
            hidden=no_progress,
        ) as bar:
            report = import_file(
                path,
                account,
                now,
                rt.profile_redis,
                rt.queue_redis,
                fmt=fmt,
                dry_run=dry_run,
                push=push,
                progress=bar.update,
            )
    except ImportStopped as err:  # part-way: what came before was imported and evaluated
        if err.report.records:
            if as_json:
                shown = {**err.report.as_dict(), "stopped": str(err)}
                click.echo(json.dumps(shown, indent=2, sort_keys=True))
            else:
                _print(err.report, show_rejected)
            raise click.ClickException(
                f"{err}; the {err.report.events} events read before it were imported and their profiles "
                "evaluated: import the repaired file again and only what is missing is added"
            ) from err
        raise click.ClickException(str(err)) from err
    except ImportFileError as err:
        raise click.ClickException(str(err)) from err
    except ConnectorError as err:  # a batch not applied after the redirects: safe to rerun
        raise click.ClickException(f"{err}; run the import again (it is idempotent)") from err
    except redis.RedisError as err:
        raise click.ClickException(f"profile store unavailable: {type(err).__name__}") from err
    finally:
        if push and not dry_run:
            _record_push(rt.queue_redis, account_id, report, now)
    if as_json:
        click.echo(json.dumps(report.as_dict(), indent=2, sort_keys=True))
    else:
        _print(report, show_rejected)
    if report.rejected_total and not report.events:
        sys.exit(1)


def _record_push(conn: redis.Redis, account_id: str, report: Report | None, now: datetime) -> None:
    """``import.push``: the report's counts, or ``finished: false`` for an import that stopped on an
    error (the changes of profiles evaluated by then may be queued). When that import's error is
    already on its way, a failing audit write is said on stderr instead of hiding it."""
    after: dict[str, object] = {"finished": report is not None}
    if report is not None:
        after.update(
            format=report.format,
            events=report.events,
            applied=report.applied,
            profiles=report.profiles,
            changed=report.changed,
        )
    try:
        audit.record(
            conn, audit.cli_actor(), "import.push", f"import:{account_id}", [account_id], None, after, now
        )
    except redis.RedisError as err:
        if report is not None:
            name = type(err).__name__
            raise click.ClickException(f"imported, but not recorded in the audit log: {name}") from err
        click.echo(f"not recorded in the audit log: {type(err).__name__}", err=True)


def _print(report: Report, show_rejected: int) -> None:
    word = "would import" if report.dry_run else "imported"
    click.echo(f"{report.format}: {report.records} records read, {report.events} valid events ({word})")
    for name, count in sorted(report.by_name.items(), key=lambda kv: (-kv[1], kv[0])):
        click.echo(f"  {name}: {count}")
    if not report.dry_run:
        click.echo(
            f"history events stored {report.applied}, already there {report.duplicates}; "
            f"{report.profiles} profiles evaluated, {report.changed} changed"
        )
        if report.rejected_by_store:
            click.echo(f"refused when stored: {report.rejected_by_store} (connector events rejected)")
        if report.expired:
            click.echo(f"older than the account's retention (max_age_days), not stored: {report.expired}")
        click.echo(f"segment changes: {_pushed(report)}")
    click.echo(f"rejected: {report.rejected_total}")
    for item in report.rejected[:show_rejected]:
        click.echo(f"  line {item.line}: {item.reason}")
    hidden = report.rejected_total - min(show_rejected, len(report.rejected))
    if hidden > 0:
        click.echo(f"  ... {hidden} more (--json lists up to 10,000)")


def _pushed(report: Report) -> str:
    """What became of the segment changes: only profiles whose result changed are queued."""
    if not report.pushed:
        return "not sent to the destinations (--push)"
    if not report.changed:
        return "nothing queued (no profile changed)"
    plural = "" if report.changed == 1 else "s"
    return f"queued for the destinations (the {report.changed} changed profile{plural})"
