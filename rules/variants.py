"""A/B variants of a segment's thresholds and windows, and the deterministic draw of each person's
variant (and of a holdout's control group).

A segment declares variants by giving a list where a window or a threshold goes (``within: [24h,
48h]``, ``gte: [3, 5]``, or a template parameter ``window: [24h, 48h]``): variant ``i`` is the
segment with the ``i``-th value of every such list (all lists of one segment have the same length,
2 to 8). Each person is evaluated with one variant, ``variant_index(account, segment, profile_id,
n)``; the destinations map the same index to the variant's tags or lists (names ``a``, ``b`` ...).

A person's bucket for a segment is a number in [0, 10000) from SHA-256 of (account, segment,
person, salt). A member is in the control group when the bucket is below the holdout percentage
times 100, so raising the percentage only moves people from treated to control. The variant comes
from a second hash (``variant:`` as the salt), independent of the control draw, so the variants
split the treated members evenly; the holdout's salt redraws the control group only.

Pure (stdlib only): the rules, the destinations and the analytics all use these definitions.
"""

from __future__ import annotations

import hashlib
import string
from collections.abc import Mapping
from typing import Any

from .errors import RulesError

BUCKETS = 10_000
MAX_VARIANTS = 8
NAMES = tuple(string.ascii_lowercase)  # variant 0 is "a", 1 is "b", ...
# where a list of values declares variants (elsewhere a list is a list: in, not_in, between ...)
KEYS = frozenset({"within", "older_than", "first_within", "gt", "gte", "lt", "lte"})


def bucket(account: str, segment: str, profile_id: str, salt: str = "") -> int:
    """The person's bucket for the segment, in [0, 10000)."""
    digest = hashlib.sha256(f"{account}\x1f{segment}\x1f{profile_id}\x1f{salt}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % BUCKETS


def is_control(account: str, segment: str, profile_id: str, percent: float, salt: str = "") -> bool:
    """Whether the person is in the segment's control group for a holdout of ``percent`` %."""
    if percent <= 0:
        return False
    return bucket(account, segment, profile_id, salt) < round(percent * BUCKETS / 100)


def variant_index(account: str, segment: str, profile_id: str, count: int) -> int:
    """Which of ``count`` variants the person gets (0 when there are none)."""
    if count <= 1:
        return 0
    return bucket(account, segment, profile_id, "variant:") % count


def _lists(node: Any, path: str, out: list[tuple[str, int]]) -> None:
    if isinstance(node, Mapping):
        for key, value in node.items():
            here = f"{path}.{key}"
            if key in KEYS and isinstance(value, list):
                out.append((here, len(value)))
            else:
                _lists(value, here, out)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            _lists(value, f"{path}[{i}]", out)


def count(when: Any, path: str = "when") -> int:
    """How many variants a segment's (raw) ``when`` declares: 1 without lists of values; a
    RulesError naming the list when the lists differ in length or hold fewer than 2 or more than 8."""
    found: list[tuple[str, int]] = []
    _lists(when, path, found)
    if not found:
        return 1
    first_path, n = found[0]
    for where, length in found:
        if not 2 <= length <= MAX_VARIANTS:
            raise RulesError(where, f"variants: a list of 2 to {MAX_VARIANTS} values, not {length}")
        if length != n:
            raise RulesError(
                where, f"variants: {length} values, but {first_path} has {n} (one value per variant)"
            )
    return n


def pick(node: Any, index: int) -> Any:
    """The raw ``when`` of variant ``index``: each list of variant values replaced by its value."""
    if isinstance(node, Mapping):
        return {
            k: (v[index] if k in KEYS and isinstance(v, list) else pick(v, index)) for k, v in node.items()
        }
    if isinstance(node, list):
        return [pick(v, index) for v in node]
    return node


__all__ = ["BUCKETS", "KEYS", "NAMES", "bucket", "count", "is_control", "pick", "variant_index"]
