"""``connector explain``, ``connector segments history``, ``connector rules test|publish``."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import click

import rules
from connector import clock, predict, rules_store
from connector import runtime as process_runtime
from connector.cli.accounts import known_account
from connector.cli.profiles_cmd import _find, _person_options, _redis_errors
from connector.cli.rules_cmd import check_rules_file
from connector.clock import isoformat
from connector.config import Account
from connector.errors import MalformedPayload
from connector.ops import audit
from connector.profiles import load_profile
from connector.suggest import did_you_mean
from connector.worker import due
from connector.worker.ledger import Ledger
from connector.worker.publish import DryRun, dry_run, profiles_from_events, progress, publish, stored_profiles

SHOWN_PEOPLE = 10


def register(cli: click.Group) -> None:
    cli.add_command(explain)
    cli.add_command(segments)
    group = cli.commands.get("rules")
    if isinstance(group, click.Group):
        group.add_command(rules_test)
        group.add_command(rules_publish)


def _account(account_id: str) -> Account:
    return known_account(account_id)


@click.command()
@_person_options
@click.option("--segment", "segment_names", multiple=True, help="Only this segment (repeatable).")
@click.option("--json", "as_json", is_flag=True)
@_redis_errors
def explain(
    account_id: str,
    email: str | None,
    user_id: str | None,
    anonymous_id: str | None,
    profile_id: str | None,
    segment_names: tuple[str, ...],
    as_json: bool,
) -> None:
    """Per segment: in or out and why, the events that counted, and when it next changes."""
    account = _account(account_id)
    rt = process_runtime.current()
    conn = rt.profile_redis
    pid = _find(conn, account_id, email, user_id, anonymous_id, profile_id)
    now = clock.now()
    profile = load_profile(conn, account_id, pid, now)
    if profile is None:
        raise click.ClickException("that profile no longer exists (erased or merged)")
    # as the worker sees it: with its predicted traits
    profile = predict.with_predictions(
        profile, predict.predicted_traits(conn, account_id, [pid], now).get(pid)
    )
    predicted = predict.explain(conn, account_id, pid, now)
    unknown = [s for s in segment_names if s not in account.ruleset.segment_names]
    if unknown:
        raise click.UsageError(
            f"unknown segment `{unknown[0]}`{did_you_mean(unknown[0], account.ruleset.segment_names)}; "
            f"known: {', '.join(account.ruleset.segment_names)}"
        )
    evaluation = rules.evaluate(profile, account.ruleset, now, explain=True)
    wanted = list(segment_names) or list(account.ruleset.segment_names)
    if as_json:
        out = {
            "profile_id": pid,
            "now": isoformat(now),
            "next_due": isoformat(evaluation.next_due) if evaluation.next_due else None,
            "traits": dict(evaluation.traits),
            "segments": {
                name: {
                    "member": evaluation.explanations[name].member,
                    "reasons": list(evaluation.explanations[name].reasons),
                    "next_change": _iso(evaluation.explanations[name].next_change),
                    "detail": evaluation.explanations[name].detail,
                }
                for name in wanted
                if name in evaluation.explanations
            },
            "predictions": predicted,
        }
        click.echo(json.dumps(out, indent=2, default=str))
        return
    click.echo(f"profile {pid} at {isoformat(now)}")
    click.echo(rules.render_evaluation(evaluation, wanted))
    if predicted is not None:
        click.echo("\n".join(predict.render_explain(predicted)))
    scheduled = due.due_at(rt.queue_redis, account_id, pid)
    click.echo(f"next re-evaluation scheduled: {isoformat(scheduled) if scheduled else 'none'}")


def _iso(value: Any) -> str | None:
    return isoformat(value) if value is not None else None


@click.group()
def segments() -> None:
    """Segment memberships."""


@segments.command("history")
@_person_options
@click.option("--json", "as_json", is_flag=True)
@_redis_errors
def history(
    account_id: str,
    email: str | None,
    user_id: str | None,
    anonymous_id: str | None,
    profile_id: str | None,
    as_json: bool,
) -> None:
    """The audit trail of a person's segment entries, exits and computed-trait changes."""
    _account(account_id)
    conn = process_runtime.current().profile_redis
    pid = _find(conn, account_id, email, user_id, anonymous_id, profile_id)
    ledger = Ledger(conn)
    entries = ledger.history(account_id, pid)
    state = ledger.state(account_id, pid)
    if as_json:
        current = (
            {"version": state.version, "segments": sorted(state.segments), "traits": state.traits}
            if state
            else None
        )
        click.echo(
            json.dumps({"profile_id": pid, "current": current, "history": entries}, indent=2, default=str)
        )
        return
    if state is None:
        click.echo(f"profile {pid}: never evaluated")
        return
    click.echo(
        f"profile {pid}: version {state.version}, in {', '.join(sorted(state.segments)) or 'no segment'}"
    )
    for entry in entries:
        parts = [f"+{s}" for s in entry["entered"]] + [f"-{s}" for s in entry["exited"]]
        parts += [f"{k}={v}" for k, v in sorted(entry["traits"].items())]
        click.echo(f"  v{entry['version']:<4} {entry['at']}  {' '.join(parts)}")
    listed = {entry["version"] for entry in entries}
    if any(v not in listed for v in range(max(1, state.version - 99), state.version + 1)):
        # a version is also taken when whom the ESPs address changes (an email) or profiles merge,
        # to send the same state again; the history keeps changes of segments and traits only
        click.echo(
            "  (versions not listed changed no segment and no computed trait: the person's email "
            "changed, or profiles merged, and the same state was sent again)"
        )


def _print_dry_run(report: DryRun, show: int) -> None:
    click.echo(f"{report.profiles} profiles evaluated with the current and the new rules")
    if not report.segments:
        click.echo("no one would enter or exit any segment")
    for name in sorted(report.segments):
        delta = report.segments[name]
        click.echo(f"{name}: +{len(delta.entering)} entering, -{len(delta.exiting)} exiting")
        for label, people in (("enter", delta.entering), ("exit", delta.exiting)):
            for who in people[:show]:
                click.echo(f"    {label}: {who}")
            if len(people) > show:
                click.echo(f"    ... and {len(people) - show} more")


@click.command("test")
@click.option("--account", "account_id", required=True)
@click.option("--rules", "rules_file", required=True, type=click.Path(exists=True, path_type=Path))
@click.option(
    "--events",
    "events_file",
    type=click.Path(exists=True, path_type=Path),
    default=None,
    help="JSON lines of events to evaluate instead of the stored profiles.",
)
@click.option("--show", default=SHOWN_PEOPLE, show_default=True, help="People listed per segment.")
@_redis_errors
def rules_test(account_id: str, rules_file: Path, events_file: Path | None, show: int) -> None:
    """Dry run: who would enter and exit each segment with NEW rules. Pushes nothing."""
    account = _account(account_id)
    try:
        candidate = check_rules_file(rules_file)
    except rules.RulesError as err:
        click.echo(f"{rules_file}: {err.path + ': ' if err.path else ''}{err.reason}", err=True)
        sys.exit(1)
    try:  # as a publish through the API or the console would check them
        rules_store.check_destinations(account, candidate)
    except rules_store.InvalidRules as err:
        click.echo(f"{rules_file}: cannot be published for {account_id}: {err.path}: {err.reason}", err=True)
        sys.exit(1)
    now = clock.now()
    if events_file is not None:
        try:
            profiles = profiles_from_events(events_file, account, now)
        except MalformedPayload as err:
            click.echo(str(err), err=True)
            sys.exit(1)
        report = dry_run(account.ruleset, candidate, profiles, now)
    else:
        conn = process_runtime.current().profile_redis
        report = dry_run(account.ruleset, candidate, stored_profiles(conn, account_id, now), now)
    _print_dry_run(report, show)


def _rules_in_force(rt: process_runtime.Runtime, account: Account) -> dict[str, Any]:
    """Where the rules being published come from, as the audit log names them (as the admin API)."""
    state = rt.provider.rules_in_force(account.id)
    return {
        "source": state.source if state is not None else "file",
        "version": state.version if state is not None else None,
        "rules_digest": rules_store.digest(account.rules),
    }


@click.command("publish")
@click.option("--account", "account_id", required=True)
@click.option("--wait/--no-wait", default=True, show_default=True, help="Show progress until done.")
@_redis_errors
def rules_publish(account_id: str, wait: bool) -> None:
    """Re-evaluate every profile of ACCOUNT with the rules now in its file; push only differences.
    Recorded in the audit log (rules.publish)."""
    account = _account(account_id)
    rt = process_runtime.current()
    conn, queue_conn = rt.profile_redis, rt.queue_redis
    now = clock.now()
    in_force = _rules_in_force(rt, account)
    key, total = publish(account, conn, queue_conn, now)
    after = {**in_force, "progress": key.rsplit(":", 1)[-1], "profiles": total}
    audit.record(
        queue_conn,
        audit.cli_actor(),
        "rules.publish",
        f"rules:{account_id}",
        [account_id],
        in_force,
        after,
        now,
    )
    click.echo(f"re-evaluating {total} profiles of {account_id} in the background ({key})")
    if not wait or total == 0:
        return
    with click.progressbar(length=total, label="re-evaluated", file=sys.stderr) as bar:
        shown = 0
        while shown < total:
            done, _ = progress(queue_conn, key)
            bar.update(done - shown)
            shown = done
            if shown < total:
                time.sleep(0.5)
    click.echo("done: the destinations receive only the differences")
