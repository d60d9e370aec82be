"""Webhook receivers, one module per sender. ``REGISTRY`` maps the route's sender name to it."""

from __future__ import annotations

from connector.ingest.receivers.base import Inbound, Receiver
from connector.ingest.receivers.hubspot import HubSpotReceiver
from connector.ingest.receivers.klaviyo import KlaviyoReceiver
from connector.ingest.receivers.mailchimp import MailchimpReceiver
from connector.ingest.receivers.mandrill import MandrillReceiver
from connector.ingest.receivers.rudderstack import RudderStackReceiver
from connector.ingest.receivers.segment import SegmentReceiver
from connector.ingest.receivers.shopify import ShopifyReceiver
from connector.ingest.receivers.standard_webhooks import StandardWebhooksReceiver

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
