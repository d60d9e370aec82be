"""A person's marketing consent from their traits when no consent event is known: Shopify's current
`email_marketing_consent` object as well as its deprecated `accepts_marketing` boolean."""

from __future__ import annotations

from typing import Any

import pytest

from connector.worker.evaluation import consent_of
from rules import Profile


@pytest.mark.parametrize(
    ("traits", "consent"),
    [
        ({"email_marketing_consent": {"state": "subscribed", "opt_in_level": "single_opt_in"}}, "subscribed"),
        ({"email_marketing_consent": {"state": "unsubscribed"}}, "unsubscribed"),
        ({"email_marketing_consent": {"state": "not_subscribed"}}, "unknown"),
        ({"email_marketing_consent": {"state": "pending", "opt_in_level": "confirmed_opt_in"}}, "unknown"),
        # the current object wins over the deprecated boolean sent beside it
        ({"email_marketing_consent": {"state": "subscribed"}, "accepts_marketing": False}, "subscribed"),
        ({"email_marketing_consent": {"consent_updated_at": None}, "accepts_marketing": True}, "subscribed"),
        ({"accepts_marketing": True}, "subscribed"),
        ({"accepts_marketing": False}, "unsubscribed"),
        ({}, "unknown"),
    ],
)
def test_consent_from_shopify_s_consent_object_and_boolean(traits: dict[str, Any], consent: str) -> None:
    assert consent_of(Profile("acme", "p1", traits=traits)) == consent
