"""Key layout of the analytics (profile Redis). Every key of an account shares the hash tag
``{<account>}`` with :mod:`connector.worker.sizes`, so one script updates a person's state and the
account's counters atomically, also in Redis Cluster.

  ``an:{a}:p:<pid>``        hash: the person's last entry (``e:<segment>``) and exit
                            (``x:<segment>``) instants (epoch seconds) per segment, the revenue
                            credited to the current entry (``r:<segment>``), and the message state:
                            ``#<8 bytes of the event id>`` for every event already credited,
                            ``d:<message>`` = ``<day>|<at>|<segments at delivery>``, ``op:<message>``
                            and ``ck:<message>`` for the engagement counted, each valued with (or
                            starting with) the day it was written; dropped after 30 days by the
                            credit script
  ``an:{a}:msg:<pid>``      hash written before the message state moved into the person's hash:
                            the same fields without the day (``#<event id in 32 hex digits>``); read
                            by the credit script, never written, gone 30 days after its last write
  ``an:{a}:d:<day>``        hash: the day's counters ``<metric>:<segment>:<arm>``, the day being
                            days since 1970-01-01 UTC (13 months)
  ``an:{a}:mig:<group>:<YYYYMMDD>``  hash ``<from>><to>`` → moves that day (13 months)
  ``an:{a}:overlap``        hash ``<a>|<b>`` → ``<count> <computed at>`` (the overlap job)
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

DAY_FORMAT = "%Y%m%d"
DAILY_RETENTION = timedelta(days=396)  # 13 months, like the daily sizes
MESSAGE_RETENTION = timedelta(days=30)
PERSON_RETENTION = timedelta(days=396)


def person_key(account: str, profile_id: str) -> str:
    return f"an:{{{account}}}:p:{profile_id}"


def messages_key(account: str, profile_id: str) -> str:
    return f"an:{{{account}}}:msg:{profile_id}"


def day_prefix(account: str) -> str:
    return f"an:{{{account}}}:d:"


def day_key(account: str, moment: datetime) -> str:
    return f"{day_prefix(account)}{int(moment.timestamp()) // 86400}"


def migration_key(account: str, group: str, moment: datetime) -> str:
    return f"an:{{{account}}}:mig:{group}:{moment.astimezone(UTC).strftime(DAY_FORMAT)}"


def overlap_key(account: str) -> str:
    return f"an:{{{account}}}:overlap"


def day_starts(now: datetime, days: int) -> list[datetime]:
    """The starts of the last ``days`` days (oldest first, today last)."""
    top = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return [top - timedelta(days=n) for n in reversed(range(max(1, days)))]
