"""Trait names that may be typos of a computed trait: a ``trait:`` name in the rules, and a
destination's ``fields:`` key. Warnings, not errors, as for event names (:mod:`connector.event_names`);
``connector config validate`` gives both, the admin API's rule validation (the console's editor) the
rules' ones.

A ``trait: {name: ...}`` reads a computed trait of the rules, or else a trait senders set on the
profile (identify traits) under exactly that name, which is valid. The account keeps no record of
the trait names its profiles hold (each profile's traits are fields of its own hash,
:mod:`connector.profiles.store`), and scanning the profiles is no check for every validation. So a
name that is no computed trait is warned about only when it is close to one: ``lifetime_revenu``
beside ``lifetime_revenue`` (:func:`connector.suggest.closest`). ``predicted.*`` names are the
predictions' (docs/predict.md) and are not checked.

A destination's ``fields:`` key is a computed trait: the destinations write the evaluation's computed
traits only (:meth:`connector.destinations.Destination.change`), so a key that is no computed trait
of the rules is never written. It is warned about whatever its spelling, with the closest computed
trait; not in an account without rules (its segments are not checked against rules either).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from connector.event_names import listed, named_paths
from connector.suggest import closest, did_you_mean

if TYPE_CHECKING:
    from connector.destinations import Destination

PREDICTED_PREFIX = "predicted."


def trait_paths(node: Any, path: str = "rules") -> Iterator[tuple[str, str]]:
    """(path, name) of every ``trait: {name: ...}`` a rules mapping holds: a condition, or a computed
    trait that is another trait. (A ``composite`` part's ``trait:`` must be a computed trait: an
    unknown one is refused when the rules compile.)"""

    def pick(key: str, value: Any) -> tuple[str, str] | None:
        if key == "trait" and isinstance(value, dict) and isinstance(value.get("name"), str):
            return ".name", value["name"]
        return None

    return named_paths(node, pick, path)


def warnings(rules_raw: Any, account_id: str, computed: Iterable[str]) -> list[tuple[str, str]]:
    """(path, message) for each ``trait:`` name of a rules mapping that is no computed trait of the
    rules (``computed``: their trait names) but close to one."""
    known = set(computed)
    out = []
    for path, name in trait_paths(rules_raw):
        if name in known or name.startswith(PREDICTED_PREFIX):
            continue
        match = closest(name, known)
        if match is None:
            continue
        out.append(
            (
                path,
                f"trait `{name}` is not a computed trait of {account_id}'s rules (did you mean "
                f"`{match}`?), so this reads only a trait that senders set on the profile as `{name}`",
            )
        )
    return out


def field_warnings(
    dests: Mapping[str, Destination], account_id: str, computed: Collection[str]
) -> list[tuple[str, str]]:
    """(path, message) for each destination ``fields:`` key that is no computed trait of the rules
    (``computed``: their trait names). The caller leaves out an account without rules."""
    known = set(computed)
    out = []
    for name, dest in dests.items():
        for trait in dest.fields:
            if trait in known:
                continue
            out.append(
                (
                    f"destinations.{name}.fields.{trait}",
                    f"`{trait}` is not a computed trait of {account_id}'s rules{did_you_mean(trait, known)}, "
                    f"so this field is never written (destinations write computed traits only); "
                    f"computed traits: {listed(known, 'none')}",
                )
            )
    return out
