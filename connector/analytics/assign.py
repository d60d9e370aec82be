"""Deterministic assignment of a segment's members to a holdout (control) group or an A/B variant.

The draw is defined once, in :mod:`rules.variants` (the rules evaluate each person with their
variant; the destinations map the same variant to its tags or lists; the analytics count by it):
this module names the arms.
"""

from __future__ import annotations

from rules.variants import BUCKETS, NAMES, bucket, is_control, variant_index

CONTROL = "c"
TREATED = "t"
VARIANT_NAMES = NAMES  # variant 0 is "a", 1 is "b", ...


def variant_name(index: int) -> str:
    return VARIANT_NAMES[index]


__all__ = [
    "BUCKETS",
    "CONTROL",
    "TREATED",
    "VARIANT_NAMES",
    "bucket",
    "is_control",
    "variant_index",
    "variant_name",
]
