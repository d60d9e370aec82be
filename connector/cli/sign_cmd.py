"""``connector sign``: the headers a sender would put on a body, for curl and manual tests."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import BinaryIO

import click

from connector import clock
from connector import runtime as process_runtime
from connector.config import load_accounts
from connector.dev import devenv
from connector.ingest.receivers import REGISTRY


def register(cli: click.Group) -> None:
    cli.add_command(sign)


@click.command()
@click.argument("sender", type=click.Choice(sorted(REGISTRY)))
@click.argument("body", type=click.File("rb"), default="-")
@click.option("--account", "account_id", default="demo", show_default=True)
@click.option("--url", default=None, help="URL the body is sent to (signed by HubSpot and Mandrill).")
@click.option("--curl-args", is_flag=True, help="Print as -H arguments for curl.")
def sign(sender: str, body: BinaryIO, account_id: str, url: str | None, curl_args: bool) -> None:
    """Print the signature headers SENDER would send with BODY (a file, or - for stdin)."""
    devenv.apply_dev_env()
    directory = Path(
        process_runtime.current().settings.config_dir
    )  # falls back to the sample account `connector dev` seeds
    accounts = load_accounts(directory)
    account = accounts.get(account_id)
    cfg = account.senders.get(sender) if account else None
    if cfg is None:
        click.echo(f"account {account_id!r} has no {sender} sender in {directory}", err=True)
        sys.exit(1)
    data = body.read()
    target = url or cfg.options.get("url") or f"http://127.0.0.1:8000/webhooks/{account_id}/{sender}"
    receiver = REGISTRY[sender]
    headers = receiver.sign(cfg.secrets[0].value, data, url=target, now=clock.now())
    configured = getattr(receiver, "headers_for", None)  # a sender whose header name is configurable
    if configured is not None:
        headers = configured(cfg, headers)
    for name, value in headers.items():
        click.echo(f"-H '{name}: {value}'" if curl_args else f"{name}: {value}")
