"""Webhook receivers, one module per sender. ``REGISTRY`` maps the route's sender name to it."""

from __future__ import annotations

from .base import Inbound, Receiver
from .segment import SegmentReceiver

REGISTRY: dict[str, Receiver] = {}


def register(receiver: Receiver) -> None:
    REGISTRY[receiver.name] = receiver


register(SegmentReceiver())

__all__ = ["REGISTRY", "Inbound", "Receiver", "register"]
