"""Behavioral profiles: identity resolution, the profile store, retention, erasure and export.

The interface other parts use (see docs/profiles.md):

* :func:`load_profile` ``(conn, account_id, profile_id, now) -> rules.model.Profile | None``
* :func:`iter_profile_ids` ``(conn, account_id)``: every live profile id of an account
* :func:`lookup` ``(conn, account_id, kind, value)``: profile id of an identity
* :func:`erasures_since` ``(conn, account_id, since=..., after=...)``: the erasure log
* :func:`erase_profile`: the profile store's part of an erasure (the whole erasure is
  :func:`connector.worker.erasure.erase_person`)
* :func:`set_property_filter`: narrow the event properties kept in the history
"""

from __future__ import annotations

from connector.profiles.erasure import (
    Erasure,
    erase_profile,
    erasures_since,
    export_profile,
)
from connector.profiles.identity import lookup
from connector.profiles.properties import set_property_filter
from connector.profiles.store import iter_profile_ids, load_profile

__all__ = [
    "Erasure",
    "erase_profile",
    "erasures_since",
    "export_profile",
    "iter_profile_ids",
    "load_profile",
    "lookup",
    "set_property_filter",
]
