"""Holdouts and variants as the account configures them (per segment, in the destinations' segment
mappings: ``holdout``, ``holdout_salt``, ``control_tag``, ``variants``; one setting per segment for
the whole account, checked at load). See :mod:`connector.analytics.assign` for the draw.

The destinations leave control members out by themselves (:meth:`connector.destinations.Destination.change`);
:func:`filter_desired` gives the same split to any other caller.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from connector.analytics.assign import CONTROL, TREATED, variant_name
from connector.destinations import SegmentMapping, destinations


def settings(account: Any) -> dict[str, SegmentMapping]:
    """Segment → the mapping that declares its holdout or variants (segments without are absent)."""
    out: dict[str, SegmentMapping] = {}
    for dest in destinations(account).values():
        for segment, mapping in dest.segments.items():
            if (mapping.holdout or mapping.variants) and segment not in out:
                out[segment] = mapping
    return out


def split_segments(account: Any, found: Mapping[str, SegmentMapping]) -> frozenset[str]:
    """The segments a person has an arm in: a holdout or variants in a destination mapping
    (``found``: :func:`settings`), or variants in the rule (:func:`arms_of` answers for these only)."""
    rules = getattr(getattr(account, "ruleset", None), "segments", ()) or ()
    return frozenset(found) | {s.name for s in rules if s.variants}


def arms_of(
    account: Any,
    profile_id: str,
    segments: Iterable[str],
    found: Mapping[str, SegmentMapping] | None = None,
) -> dict[str, str]:
    """Segment → the person's arm (``c``, a variant name) for those of ``segments`` that have a
    holdout or variants (in a destination mapping or in the rules: the same draw); the others are
    ``t`` and left out. ``found``: :func:`settings` of the account, when the caller has it (a batch
    asks for many people)."""
    found = settings(account) if found is None else found
    by_name = getattr(getattr(account, "ruleset", None), "by_name", None) or {}
    out: dict[str, str] = {}
    for s in segments:
        arm = found[s].arm(account.id, s, profile_id) if s in found else TREATED
        rule = by_name.get(s)
        if arm == TREATED and rule is not None and rule.variants:
            arm = variant_name(rule.variant_of(account.id, profile_id))
        if s in found or arm != TREATED:
            out[s] = arm
    return out


def filter_desired(
    account: Any, segments: Iterable[str], profile_id: str
) -> tuple[frozenset[str], frozenset[str]]:
    """(treated segments, control segments) of a person: the control ones are not pushed."""
    names = frozenset(segments)
    control = frozenset(s for s, arm in arms_of(account, profile_id, names).items() if arm == CONTROL)
    return names - control, control


def arms_text(arms: Mapping[str, str]) -> str:
    """``seg=arm,...`` for the attribution script (treated segments omitted)."""
    return ",".join(f"{s}={a}" for s, a in sorted(arms.items()) if a != TREATED)
