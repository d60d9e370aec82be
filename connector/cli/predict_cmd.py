"""``connector predict train|report|explain``: predictive traits of an account (docs/predict.md)."""

from __future__ import annotations

import json
import math
from typing import Any

import click

from connector import clock
from connector import runtime as process_runtime
from connector.cli.accounts import known_account, text_option


def _minimum(repeat_customers: int, history_days: int) -> Any:
    from connector.predict.train import Minimum

    return Minimum(repeat_customers=repeat_customers, history_days=history_days)


def _account(account: str) -> None:
    known_account(account)


# connector.predict.backtest.HOLDOUT_DAYS_MAX, not imported: that would load numpy for every command
HOLDOUT_DAYS_MAX = 3650


class _HoldoutDays(click.FloatRange):
    """Days above 0 and at most ``HOLDOUT_DAYS_MAX``; ``nan`` is refused too (FloatRange lets it pass,
    as no comparison with it is true)."""

    def __init__(self) -> None:
        super().__init__(min=0, max=HOLDOUT_DAYS_MAX, min_open=True)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        days = super().convert(value, param, ctx)
        if math.isnan(days):
            self.fail(f"{value!r} is not a number of days in the range 0<x<={HOLDOUT_DAYS_MAX}.", param, ctx)
        return days


MIN_OPTIONS = [
    click.option(
        "--min-repeat-customers",
        default=100,
        show_default=True,
        type=click.IntRange(min=1),
        help="Customers with a repeat order (at least 1).",
    ),
    click.option(
        "--min-days",
        default=180,
        show_default=True,
        type=click.IntRange(min=1),
        help="Days of order history (at least 1).",
    ),
]


def _with_minimum(f: Any) -> Any:
    for option in reversed(MIN_OPTIONS):
        f = option(f)
    return f


@click.group()
def predict() -> None:
    """Predictive traits: churn risk, expected orders, next order date, CLV, RFM."""


@predict.command("train")
@click.option("--account", required=True)
@_with_minimum
def train_cmd(account: str, min_repeat_customers: int, min_days: int) -> None:
    """Fit the account's models on its stored history now and store every customer's traits."""
    from connector.predict.train import train_account

    _account(account)
    rt = process_runtime.current()
    from connector.profiles import iter_profile_ids

    total = sum(1 for _ in iter_profile_ids(rt.profile_redis, account))
    with click.progressbar(length=max(total, 1), label="profiles") as bar:
        result = train_account(
            rt.profile_redis, account, clock.now(), bar.update, _minimum(min_repeat_customers, min_days)
        )
    if not result.trained:
        click.echo(f"no predictions for {account}: " + "; ".join(result.missing))
        raise SystemExit(1)
    meta = result.meta or {}
    click.echo(f"trained {meta['model_version']} on {result.customers} customers")
    click.echo(json.dumps(meta["params"], indent=2))


@predict.command("report")
@click.option("--account", required=True)
@click.option(
    "--holdout-days",
    default=90.0,
    show_default=True,
    type=_HoldoutDays(),
    help=f"Days at the end held out (above 0, at most {HOLDOUT_DAYS_MAX}).",
)
@click.option("--json", "as_json", is_flag=True)
@_with_minimum
def report_cmd(
    account: str, holdout_days: float, as_json: bool, min_repeat_customers: int, min_days: int
) -> None:
    """Backtest: fit before the last ``--holdout-days`` and measure the predictions on them."""
    from connector.predict.backtest import report

    _account(account)
    rt = process_runtime.current()
    found = report(
        rt.profile_redis, account, clock.now(), holdout_days, _minimum(min_repeat_customers, min_days)
    )
    if as_json:
        click.echo(json.dumps({"account": account, "missing": found.missing, **found.metrics}, indent=2))
    elif found.missing:
        click.echo(
            f"no prediction for {account} as of {found.cutoff:%Y-%m-%d}; missing: " + "; ".join(found.missing)
        )
    else:
        click.echo(
            f"{account}: fitted before {found.cutoff:%Y-%m-%d}, {found.customers} customers, "
            f"holdout {holdout_days:g} days"
        )
        for key, value in found.metrics.items():
            if key not in ("value_deciles", "params"):
                click.echo(f"  {key}: {value}")
        click.echo("  value by decile of prediction (predicted / actual):")
        for row in found.metrics["value_deciles"]:
            click.echo(f"    {row['decile']:>2}  {row['predicted']:>10}  {row['actual']:>10}")
    if found.missing:
        raise SystemExit(1)


@predict.command("explain")
@click.option("--account", required=True)
@click.option("--profile", "profile_id", required=True, help="Profile id.", callback=text_option)
def explain_cmd(account: str, profile_id: str) -> None:
    """A profile's predicted values with their inputs and the model version."""
    from connector.predict import explain, render_explain

    _account(account)
    found = explain(process_runtime.current().profile_redis, account, profile_id, clock.now())
    if found is None:
        click.echo(f"no prediction for profile {profile_id} (no order, or no training yet)")
        raise SystemExit(1)
    for line in render_explain(found):
        click.echo(line)


def register(cli: click.Group) -> None:
    cli.add_command(predict)
