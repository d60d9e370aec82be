"""The one hand-off from the event worker to rule evaluation.

After each applied batch the worker calls :func:`evaluate_touched` once per account with every
profile the batch touched. The rules layer fills this in (load each profile with
``connector.profiles.load_profile``, evaluate, diff against the ledger); until then it does nothing.
"""

from __future__ import annotations

from datetime import datetime


def evaluate_touched(account_id: str, profile_ids: set[str], now: datetime) -> None:
    """Evaluate the rules of ``account_id`` for ``profile_ids`` as of ``now``. No-op for now."""
    del account_id, profile_ids, now
