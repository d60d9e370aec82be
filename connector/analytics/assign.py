"""Deterministic assignment of a segment's members to a holdout (control) group or an A/B variant.

A person's bucket for a segment is a number in [0, 10000) from SHA-256 of (account, segment,
person, salt). A member is in the control group when the bucket is below the holdout percentage
times 100, so raising the percentage only moves people from treated to control (and lowering it
only back). The variant of a treated member comes from a second hash (with ``variant:`` before the
salt), independent of the control draw, so the variants split the treated members evenly.

Pure (stdlib only): the destinations (which leave control members out) and the rules (which
evaluate a member's variant) both call it.
"""

from __future__ import annotations

import hashlib
import string

BUCKETS = 10_000
CONTROL = "c"
TREATED = "t"
VARIANT_NAMES = tuple(string.ascii_lowercase)  # variant 0 is "a", 1 is "b", ...


def bucket(account: str, segment: str, profile_id: str, salt: str = "") -> int:
    """The person's bucket for the segment, in [0, 10000)."""
    digest = hashlib.sha256(f"{account}\x1f{segment}\x1f{profile_id}\x1f{salt}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % BUCKETS


def is_control(account: str, segment: str, profile_id: str, percent: float, salt: str = "") -> bool:
    """Whether the person is in the segment's control group for a holdout of ``percent`` %."""
    if percent <= 0:
        return False
    return bucket(account, segment, profile_id, salt) < round(percent * BUCKETS / 100)


def variant_index(account: str, segment: str, profile_id: str, count: int, salt: str = "") -> int:
    """Which of ``count`` variants the person gets (0 when there are none)."""
    if count <= 1:
        return 0
    return bucket(account, segment, profile_id, f"variant:{salt}") % count


def variant_name(index: int) -> str:
    return VARIANT_NAMES[index]
