"""Key layout of the profile store (profile Redis).

Every key is namespaced by account. The keys of one profile share the hash tag ``{acct:pid}``
so that a profile's keys live in one Redis Cluster slot and one Lua script can update them
atomically. The identity index and the per-account logs are separate keys.

  ``p:{acct:pid}``        hash: identities (``i:<kind code>:<value>``), ``uid``, traits (``t:<name>``
                          with their ordering key ``o:<name>``), lifetime first/last occurrence per
                          event name (``f:<code>`` / ``l:<code>``), tombstones (``m`` merged into,
                          ``x`` erased), ``k`` ids of the latest identify/alias events
                          (for erasing their dedupe markers), ``in`` / ``tn`` how many identities
                          / traits it holds (each capped)
  ``h:{acct:pid}``        string: the packed event history (see :mod:`.store`; a sorted set, score =
                          occurred_at in whole seconds, before the packed form)
  ``ix:{acct:ix}``        hash: the identity index's state (``b`` its buckets' level, split
                          pointer and size; ``o`` 0 once no key of the earlier layout is left)
  ``ix:{acct:ix}:<n>``    hash, bucket ``n`` of the identity index: ``<kind code><digest>`` (13
                          bytes: no personal data) → packed profile id (:mod:`connector.buckets`)
  ``ix:acct:<k>:<digest>`` string: identity → profile id, the earlier layout (read while ``o`` is
                          not 0, moved into the buckets when met)
  ``names:acct``          hash: event name ↔ short code used inside the history
  ``lock:acct``           the account's identity lock (resolution, merges and erasures)
  ``rej:acct``            stream: latest rejected events with their reason (capped)
  ``erasures:acct``       stream: erasure log (opaque profile id, time, source; no personal data)
  ``conflicts:acct``      stream: identity conflicts that were not merged (profile ids only)
"""

from __future__ import annotations

import hashlib

# Identity kinds and their one-letter codes in index keys.
KIND_CODES: dict[str, str] = {
    "user_id": "u",
    "email": "e",
    "shopify_customer_id": "s",
    "klaviyo_profile_id": "k",
    "hubspot_contact_id": "h",
    "mailchimp_member_id": "m",
    # a Shopify cart's token: a cart webhook without a customer carries only it. Not linked from the
    # checkout or order made from the cart: anyone at the shop's checkout can type any address with
    # a cart, so the token would join customers (a device's identity, kept on its own profile)
    "shopify_cart_token": "c",
    "anonymous_id": "a",
}
KNOWN_KINDS = tuple(k for k in KIND_CODES if k != "anonymous_id")
ANONYMOUS_KINDS = ("anonymous_id",)


def profile_key(account: str, pid: str) -> str:
    return f"p:{{{account}:{pid}}}"


def history_key(account: str, pid: str) -> str:
    return f"h:{{{account}:{pid}}}"


def identity_digest(value: str) -> bytes:
    return hashlib.blake2b(value.encode(), digest_size=12).digest()


def identity_key(account: str, kind: str, value: str) -> str:
    """The identity's key in the earlier layout of the index (one string key per identity)."""
    return f"ix:{account}:{KIND_CODES[kind]}:{identity_digest(value).hex()}"


def legacy_identity_match(account: str) -> str:
    return f"ix:{account}:*"


def index_key(account: str) -> str:
    """The identity index's state; its buckets are ``<this>:<n>`` (one hash tag, one slot)."""
    return f"ix:{{{account}:ix}}"


def index_field(kind: str, value: str) -> bytes:
    """An identity's field in its index bucket: the kind's code and the value's digest."""
    return KIND_CODES[kind].encode() + identity_digest(value)


def index_field_of_legacy_key(key: bytes | str) -> bytes | None:
    """The bucket field of a key of the earlier layout (``ix:acct:<code>:<hex digest>``)."""
    text = key.decode() if isinstance(key, bytes) else key
    parts = text.rsplit(":", 2)
    if len(parts) != 3:
        return None
    code, digest = parts[1], parts[2]
    if code not in _KINDS_BY_CODE or len(digest) != 24:
        return None
    try:
        return code.encode() + bytes.fromhex(digest)
    except ValueError:
        return None


_KINDS_BY_CODE = {code: kind for kind, code in KIND_CODES.items()}


def identity_field(kind: str, value: str) -> str:
    return f"i:{KIND_CODES[kind]}:{value}"


def parse_identity_field(field: str) -> tuple[str, str] | None:
    """``i:<code>:<value>`` → (kind, value); None for other fields."""
    if not field.startswith("i:"):
        return None
    code, _, value = field[2:].partition(":")
    kind = _KINDS_BY_CODE.get(code)
    return (kind, value) if kind else None


def names_key(account: str) -> str:
    return f"names:{account}"


# How the generation (``#gen``) of a names dictionary made by a version that keeps the identity index
# in buckets begins (those of before are 32 hex digits): such an account never had keys of the
# index's earlier layout, so an index made for it starts with ``o`` 0.
GENERATION_PREFIX = "b:"


def made_with_buckets(generation: bytes | str | None) -> bool:
    """Whether a names dictionary's generation (None: no dictionary) rules out the index's earlier
    layout for the account."""
    if generation is None:
        return True
    text = generation.decode() if isinstance(generation, bytes) else generation
    return text.startswith(GENERATION_PREFIX)


def lock_key(account: str) -> str:
    return f"lock:{account}"


def rejected_key(account: str) -> str:
    return f"rej:{account}"


def erasures_key(account: str) -> str:
    return f"erasures:{account}"


def conflicts_key(account: str) -> str:
    return f"conflicts:{account}"


def profile_match(account: str) -> str:
    return f"p:{{{account}:*}}"


def pid_from_profile_key(key: bytes | str) -> str:
    text = key.decode() if isinstance(key, bytes) else key
    return text[text.index(":", text.index("{")) + 1 : -1]
