"""Event names: each sender's names mapped to the product's snake_case names (what the receivers
store, and the only names a rule can match: see :class:`rules.schema.EventName`).

Unknown names are kept (snake_cased), never rejected.
"""

from __future__ import annotations

import re
import unicodedata

# Segment / RudderStack e-commerce and email spec names, lower-cased.
SPEC_NAMES: dict[str, str] = {
    "product viewed": "product_viewed",
    "product clicked": "product_clicked",
    "product added": "add_to_cart",
    "product removed": "remove_from_cart",
    "cart viewed": "cart_viewed",
    "checkout started": "checkout_started",
    "checkout step completed": "checkout_step_completed",
    "payment info entered": "payment_info_entered",
    "order completed": "order_completed",
    "order updated": "order_updated",
    "order refunded": "order_refunded",
    "order cancelled": "order_cancelled",
    "products searched": "products_searched",
    "product list viewed": "product_list_viewed",
    "email opened": "email_opened",
    "email link clicked": "email_clicked",
    "email clicked": "email_clicked",
    "email delivered": "email_delivered",
    "email bounced": "email_bounced",
    "email marked as spam": "email_marked_spam",
    "unsubscribed": "unsubscribed",
    "subscribed": "subscribed",
    "signed up": "signed_up",
    "audience entered": "audience_entered",
    "audience exited": "audience_exited",
}

_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_NON_WORD = re.compile(r"[\W_]+")  # what is no letter or digit, of any script


def snake_case(name: str) -> str:
    """``Order Completed`` → ``order_completed``; ``addToCart`` → ``add_to_cart``; letters of any
    script are kept (``Größe gewählt`` → ``größe_gewählt``, ``購入完了`` as it is), composed (NFC),
    lower-cased. A name with no letter or digit is ``unnamed``."""
    text = name.strip()
    if not text.isascii():
        text = unicodedata.normalize("NFC", text)
    spaced = _CAMEL.sub("_", text)
    return _NON_WORD.sub("_", spaced).strip("_").lower() or "unnamed"


def canonical(name: str) -> str:
    """The product's name for a sender's event name; unknown names are kept, snake_cased."""
    mapped = SPEC_NAMES.get(name.strip().lower())
    return mapped if mapped is not None else snake_case(name)
