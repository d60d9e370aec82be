"""Event names a rule names that the account may never receive: a name no sender of the account has
sent and no built-in template uses (a likely typo), and, above all, a name the Segment spec's
senders store under another one (a rule on `product_added` never sees Segment's "Product Added",
which is stored as `add_to_cart`). Warnings, not errors: a sender may send exactly that name.

The names an account has received are the workers' name codes (``names:<account>``, in the profile
Redis), without the property keys that share that dictionary. ``connector config validate`` and the
admin API's rule validation (the console's editor) give the same warnings.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from functools import lru_cache
from typing import Any

import redis

from connector.profiles.keys import names_key
from connector.profiles.store import PROPERTY_PREFIX
from connector.suggest import did_you_mean
from rules import compile_rules
from rules.names import SPEC_NAMES, snake_case
from rules.templates import all_templates_rules

SEEN_SHOWN = 20  # names seen listed in a warning, at most

# the snake_case form of a spec name that is stored under another name → (spec name, stored name)
_SPEC_RENAMED: dict[str, tuple[str, str]] = {
    snake_case(spec): (spec.title(), stored)
    for spec, stored in SPEC_NAMES.items()
    if snake_case(spec) != stored
}


def named_paths(
    node: Any, pick: Callable[[str, Any], tuple[str, str] | None], path: str = "rules"
) -> Iterator[tuple[str, str]]:
    """(path, name) of every entry of a rules mapping that ``pick(key, value)`` names: it gives the
    rest of the path and the name, or None to look inside the value."""
    if isinstance(node, dict):
        for key, value in node.items():
            here = f"{path}.{key}"
            found = pick(key, value)
            if found is not None:
                yield here + found[0], found[1]
            else:
                yield from named_paths(value, pick, here)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from named_paths(value, pick, f"{path}[{i}]")


def event_paths(node: Any, path: str = "rules") -> Iterator[tuple[str, str]]:
    """(path, event name) of every ``event:`` a rules mapping names."""
    return named_paths(
        node, lambda key, value: ("", value) if key == "event" and isinstance(value, str) else None, path
    )


@lru_cache(maxsize=1)
def template_events() -> frozenset[str]:
    return frozenset(compile_rules(all_templates_rules()).properties)


def seen_names(conn: redis.Redis, account_id: str) -> set[str]:
    """The event names the account has received."""
    fields = conn.hkeys(names_key(account_id))
    names = (f.decode() if isinstance(f, bytes) else str(f) for f in fields)
    return {n[2:] for n in names if n.startswith("n:") and not n.startswith("n:" + PROPERTY_PREFIX)}


def listed(names: Iterable[str], empty: str = "none yet") -> str:
    """Names for a message: sorted, at most SEEN_SHOWN of them, and how many more."""
    ordered = sorted(names)
    if not ordered:
        return empty
    shown = ordered[:SEEN_SHOWN]
    more = len(ordered) - len(shown)
    return ", ".join(shown) + (f" and {more} more" if more else "")


def warnings(rules_raw: Any, account_id: str, seen: Iterable[str]) -> list[tuple[str, str]]:
    """(path, message) for each event a rules mapping names that the account never received and no
    template uses."""
    seen = set(seen)
    known = seen | template_events()
    out = []
    for path, name in event_paths(rules_raw):
        if name == "*" or name in known:
            continue
        renamed = _SPEC_RENAMED.get(name)
        if renamed is not None:
            spec, stored = renamed
            out.append(
                (
                    path,
                    f"event `{name}` was never received by {account_id}: the Segment spec's "
                    f"`{spec}` is stored as `{stored}`, so this rule matches only a sender that sends "
                    f"`{name}` itself (did you mean `{stored}`?)",
                )
            )
            continue
        out.append(
            (
                path,
                f"event `{name}` was never received by {account_id} and no template uses it"
                f"{did_you_mean(name, known)}; names seen: {listed(seen)}",
            )
        )
    return out
