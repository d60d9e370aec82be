"""Webhook receivers, one module per sender. ``REGISTRY`` maps the route's sender name to it."""

from __future__ import annotations

from .base import Inbound, Receiver
from .hubspot import HubSpotReceiver
from .klaviyo import KlaviyoReceiver
from .mailchimp import MailchimpReceiver
from .mandrill import MandrillReceiver
from .rudderstack import RudderStackReceiver
from .segment import SegmentReceiver
from .shopify import ShopifyReceiver
from .standard_webhooks import StandardWebhooksReceiver

REGISTRY: dict[str, Receiver] = {}


def register(receiver: Receiver) -> None:
    REGISTRY[receiver.name] = receiver


for _receiver in (
    SegmentReceiver(),
    ShopifyReceiver(),
    KlaviyoReceiver(),
    HubSpotReceiver(),
    MailchimpReceiver(),
    MandrillReceiver(),
    StandardWebhooksReceiver(),
    RudderStackReceiver(),
):
    register(_receiver)

__all__ = ["REGISTRY", "Inbound", "Receiver", "register"]
