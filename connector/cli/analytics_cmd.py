"""``connector segments report``: what a segment did over a period (docs/analytics.md)."""

from __future__ import annotations

import json
from typing import Any

import click

from connector import clock
from connector import runtime as process_runtime
from connector.analytics import period
from connector.analytics.report import segment_report
from connector.cli.accounts import known_account
from connector.suggest import unknown


def register(cli: click.Group) -> None:
    group = cli.commands.get("segments")
    if isinstance(group, click.Group):
        group.add_command(report)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.2f}%"


def _money(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _print(data: dict[str, Any]) -> None:
    click.echo(f"{data['segment']}  size {data['size']}  entered {data['entered']}  exited {data['exited']}")
    header = (
        f"{'arm':<8}{'members':>9}{'deliv.':>9}{'open':>9}{'click':>9}{'unsub':>9}{'conv.':>9}{'rev/mbr':>10}"
    )
    click.echo(header)
    rows = [("all", data)] + [(arm, perf) for arm, perf in data["arms"].items()]
    for name, p in rows:
        click.echo(
            f"{name:<8}{p['members']:>9}{p['deliveries']:>9}{_pct(p['open_rate']):>9}{_pct(p['click_rate']):>9}"
            f"{_pct(p['unsubscribe_rate']):>9}{_pct(p['conversion_rate']):>9}{_money(p['revenue_per_member']):>10}"
        )
    for arm, c in (data.get("comparisons") or {}).items():
        d, r = c["conversion_difference"], c["revenue_per_member_difference"]
        click.echo(
            f"{arm} vs {data['baseline']}: conversion {d['estimate'] * 100:+.2f} pts "
            f"[{d['low'] * 100:+.2f}, {d['high'] * 100:+.2f}], revenue/member {r['estimate']:+.2f} "
            f"[{r['low']:+.2f}, {r['high']:+.2f}], lift {_pct(c['conversion_lift'])}"
        )
        if c["warning"]:
            click.echo(f"  warning: {c['warning']}")
    for arm, why in (data.get("not_compared") or {}).items():
        click.echo(f"{arm} not compared: {why}")


@click.command()
@click.option("--account", "account_id", required=True)
@click.option("--segment", "segment_name", default=None, help="one segment (default: every segment)")
@click.option("--since", default="30d", show_default=True, help="the period, in days (30d)")
@click.option("--json", "as_json", is_flag=True)
def report(account_id: str, segment_name: str | None, since: str, as_json: bool) -> None:
    """Size, movement and performance of segments, treated against control."""
    try:
        days = period.days(since)
    except ValueError as err:
        raise click.BadParameter(str(err), param_hint="--since") from err
    rt = process_runtime.current()
    account = known_account(account_id)
    names = account.ruleset.segment_names
    if segment_name is not None and segment_name not in names:
        raise click.ClickException(unknown(f"segment in account {account_id}", segment_name, names))
    now = clock.now()
    reports = [
        segment_report(rt.profile_redis, account_id, s, now, days)
        for s in ([segment_name] if segment_name else names)
    ]
    if as_json:
        click.echo(json.dumps(reports if segment_name is None else reports[0], indent=2))
        return
    for data in reports:
        _print(data)
        click.echo()
