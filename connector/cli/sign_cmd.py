"""``connector sign``: every header a sender would put on a body, for curl and manual tests.

The output is a headers file for ``curl -H @headers.txt --data-binary @body URL``: the signature,
and what the receiver also checks (Shopify's topic, webhook id and shop domain, Klaviyo's webhook
id, Standard Webhooks' message id and timestamp, HubSpot's timestamp). Ids are fresh on every call,
so each call signs a new delivery.
"""

from __future__ import annotations

import sys
import uuid
from typing import BinaryIO

import click

from connector import clock
from connector.config import SenderConfig, load_accounts
from connector.dev import devenv
from connector.errors import RequestRejected
from connector.ingest.receivers import REGISTRY
from connector.settings import config_source
from connector.suggest import unknown

SHOPIFY_DEFAULT_TOPIC = "orders/create"


def register(cli: click.Group) -> None:
    cli.add_command(sign)


def _default_url(account_id: str, sender: str) -> str:
    """The running ``connector dev``'s web process, else the default local port."""
    dev = devenv.running_dev()
    base = dev.web_url if dev is not None and dev.web_url else "http://127.0.0.1:8000"
    return f"{base}/webhooks/{account_id}/{sender}"


def _extra_headers(sender: str, cfg: SenderConfig, topic: str, headers: dict[str, str]) -> dict[str, str]:
    """What the receiver checks beyond the signature (unsigned headers a real delivery carries)."""
    extra: dict[str, str] = {}
    if sender == "shopify":
        extra["X-Shopify-Topic"] = topic
        extra["X-Shopify-Webhook-Id"] = str(uuid.uuid4())
        extra["X-Shopify-Triggered-At"] = clock.isoformat(clock.now())
        shop = cfg.options.get("shop_domain") or next(iter(cfg.options.get("shop_domains") or []), None)
        if shop:
            extra["X-Shopify-Shop-Domain"] = shop
    elif sender == "klaviyo" and "Klaviyo-Webhook-Id" not in headers:
        extra["Klaviyo-Webhook-Id"] = uuid.uuid4().hex
    return extra


def _signed(sender: str, cfg: SenderConfig, data: bytes, target: str) -> dict[str, str]:
    receiver = REGISTRY[sender]
    secret = cfg.secrets[0].value
    if sender == "standard_webhooks":
        # a fresh message id per call: each call is a new delivery, not a retry of the last one
        return receiver.sign(secret, data, url=target, now=clock.now(), msg_id=f"msg_{uuid.uuid4().hex}")  # type: ignore[call-arg]
    headers = receiver.sign(secret, data, url=target, now=clock.now())
    configured = getattr(receiver, "headers_for", None)  # a sender whose header name is configurable
    return configured(cfg, headers) if configured is not None else headers


@click.command()
@click.argument("sender", type=click.Choice(sorted(REGISTRY)))
@click.argument("body", type=click.File("rb"), default="-")
@click.option("--account", "account_id", default="demo", show_default=True)
@click.option(
    "--url",
    default=None,
    help="URL the body is sent to (HubSpot signs it; Mandrill signs the sender's configured url). "
    "Default: the running `connector dev`'s web process.",
)
@click.option(
    "--topic",
    default=SHOPIFY_DEFAULT_TOPIC,
    show_default=True,
    help="Shopify: the webhook topic (X-Shopify-Topic).",
)
@click.option("--curl-args", is_flag=True, help="Print as -H arguments for curl.")
def sign(sender: str, body: BinaryIO, account_id: str, url: str | None, topic: str, curl_args: bool) -> None:
    """Print every header SENDER would send with BODY (a file, or - for stdin): the signature and
    the headers its receiver checks (ids and timestamps fresh on each call). Mailchimp signs
    nothing: the URL to post to, with its ?secret=, goes to stderr."""
    devenv.apply_dev_env()
    directory, source = config_source()
    click.echo(f"connector: config {directory.resolve()} (from {source})", err=True)
    accounts = load_accounts(directory)
    account = accounts.get(account_id)
    if account is None:
        click.echo(unknown("account", account_id, [a.id for a in accounts]), err=True)
        sys.exit(1)
    cfg = account.senders.get(sender)
    if cfg is None:
        configured = ", ".join(sorted(account.senders)) or "none"
        click.echo(f"account {account_id!r} has no {sender} sender (it has: {configured})", err=True)
        sys.exit(1)
    data = body.read()
    target = url or cfg.options.get("url") or _default_url(account_id, sender)
    try:
        headers = _signed(sender, cfg, data, target)
    except RequestRejected as err:  # a body the sender could not have signed (Segment: an empty batch)
        name = getattr(body, "name", "-")
        where = "stdin" if name in ("-", "<stdin>") else name
        raise click.BadParameter(f"{where}: {err.message}", param_hint="BODY") from None
    headers.update(_extra_headers(sender, cfg, topic, headers))
    if sender == "mailchimp":
        receiver = REGISTRY[sender]
        posted = receiver.signed_url(cfg.secrets[0].value, target)  # type: ignore[attr-defined]
        click.echo(f"mailchimp signs nothing; post to {posted}", err=True)
    for name, value in headers.items():
        click.echo(f"-H '{name}: {value}'" if curl_args else f"{name}: {value}")
