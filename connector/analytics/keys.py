"""Key layout of the analytics (profile Redis). Every key of an account shares the hash tag
``{<account>}`` with :mod:`connector.worker.sizes`, so one script updates a person's state and the
account's counters atomically, also in Redis Cluster.

  ``an:{a}:p:<pid>``        hash: per segment (by its code in ``an:{a}:seg``) the person's last
                            entry (``E<code>``) and exit (``X<code>``) instants (epoch seconds) and
                            the revenue credited to the current entry (``R<code>``); the message
                            state: ``D<message>`` = ``<period>|<at>|<segment codes at delivery>``,
                            the opens and clicks counted (packed per period in ``^<period>``),
                            and the credit marks of events without a message (8 bytes each,
                            packed per period in ``*<period>``); message state is
                            dropped 5 periods of 8 days after it was written (the credit script).
                            Fields of before (``e:``/``x:``/``r:<segment>``, ``d:``/``op:``/
                            ``ck:<message>``, ``#<8 bytes>``) are read and replaced on the next write
  ``an:{a}:seg``            hash: segment name → short code (base 36), ``#<code>`` → name, ``#``
                            the last code given; only grows (no personal data)
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

from connector.profiles.store import BASE36_LUA

DAY_FORMAT = "%Y%m%d"
DAILY_RETENTION = timedelta(days=396)  # 13 months, like the daily sizes
MESSAGE_RETENTION = timedelta(days=30)
PERSON_RETENTION = timedelta(days=396)


def person_key(account: str, profile_id: str) -> str:
    return f"an:{{{account}}}:p:{profile_id}"


def codes_key(account: str) -> str:
    return f"an:{{{account}}}:seg"


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


# Lua: the code of a segment name in the account's dictionary (``codes_key``: name -> code,
# ``#<code>`` -> name, ``#`` the last code given), given on first use; ``cache`` maps name -> code
# within one script run. The scripts that write segment codes start with it.
SEGMENT_CODE_LUA = (
    BASE36_LUA
    + """
local function segment_code(dict, cache, s)
  local c = cache[s]
  if c then return c end
  c = redis.call('HGET', dict, s)
  if not c then
    c = base36(redis.call('HINCRBY', dict, '#', 1))
    redis.call('HSET', dict, s, c, '#' .. c, s)
  end
  cache[s] = c
  return c
end
"""
)
