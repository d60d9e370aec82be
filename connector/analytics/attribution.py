"""Engagement and conversions credited to segments, the same whatever order the events arrive in.

The rule (docs/analytics.md):

* ``email_delivered``, ``email_opened``, ``email_clicked``: credited to the segments the person
  was in when the message was delivered (the delivery's ``occurred_at`` against the person's entry
  and exit instants), on the delivery's day. Events name their message by ``message_id`` (or
  ``campaign_id``); an open that arrives before its delivery is remembered and credited when the
  delivery comes. Opens and clicks count once per message. Without a message id, each event is
  credited to the segments at its own instant.
* ``unsubscribed``: the segments at its instant, on its day.
* ``order_completed``: credited to each segment the person entered within the account's conversion
  window (``analytics.conversion_days``, 7 by default) before the order (also when they left it
  since: a cart abandoner leaves that segment by ordering), on the entry's day: one conversion per
  entry, the revenue of every such order.

Membership at an instant uses the person's last entry and exit per segment
(:func:`connector.analytics.movement.record_diff`); segments the ledger holds now without a
recorded entry count as held since before. Every event is credited once (its id is remembered 30
days), so a batch delivered twice changes nothing. Counters per day, metric, segment and arm
(``dl`` deliveries, ``op`` opens, ``ck`` clicks, ``un`` unsubscribes, ``cv`` conversions, ``rv``
revenue in cents, ``rq`` the sum of squares of the revenue per entry, for Welch's interval).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

import redis

from connector import clock
from connector.analytics.holdout import arms_of, arms_text, settings
from connector.analytics.keys import (
    DAILY_RETENTION,
    PERSON_RETENTION,
    day_prefix,
    messages_key,
    person_key,
)
from connector.analytics.settings import conversion_days
from connector.event import Event

ENGAGEMENT = {"email_delivered": "dl", "email_opened": "op", "email_clicked": "ck"}
KINDS = (*ENGAGEMENT, "unsubscribed", "order_completed")
DEFAULT_CONVERSION_DAYS = 7
MESSAGE_PROPERTIES = ("message_id", "campaign_id", "flow_message_id")
PERIOD_DAYS = 8
PERIODS = 12

# KEYS: person hash, the messages hash of before (read only). ARGV: kind (dl/op/ck/un/order), the
# event's credit mark (:func:`credit_mark`), at (epoch s), message id, revenue (cents), window (s),
# day key prefix, arms "seg=arm,...", current segments "seg,...", :data:`PERIODS`, day ttl, the event id
# in full (marks written before the short form), the current period (:func:`period`), the person
# hash's ttl.
#
# The person hash holds, besides the entry and exit instants (e:, x:, r:), the message state: the
# credit marks (#<8 bytes>), the deliveries (d:<message> = "<period>|<at>|<segments>") and the
# opens and clicks counted (op:<message>, ck:<message>), each valued with (or starting with) the
# period it was written in; each run of the script drops those of 5 or more periods ago.
_CREDIT = """
local PERIODS = tonumber(ARGV[10])
local person, old = KEYS[1], KEYS[2]
local kind, at, mid = ARGV[1], tonumber(ARGV[3]), ARGV[4]
local period = tonumber(ARGV[13])
local legacy = redis.call('EXISTS', old) == 1
local function before(field) return legacy and redis.call('HEXISTS', old, field) == 1 end
local mark = '#' .. ARGV[2]
if before(mark) or before('#' .. ARGV[12]) then return 0 end
if redis.call('HSETNX', person, mark, period) == 0 then return 0 end
local state = redis.call('HGETALL', person)
local e, x, r, stale = {}, {}, {}, {}
for i = 1, #state, 2 do
  local f, v = state[i], state[i + 1]
  local p, s = string.sub(f, 1, 2), string.sub(f, 3)
  if p == 'e:' then e[s] = tonumber(v)
  elseif p == 'x:' then x[s] = tonumber(v)
  elseif p == 'r:' then r[s] = tonumber(v)
  else
    local written = tonumber(string.match(v, '^%d+'))
    if written and (period - written) % PERIODS >= 5 then stale[#stale + 1] = f end
  end
end
if #stale > 0 then redis.call('HDEL', person, unpack(stale)) end
redis.call('EXPIRE', person, ARGV[14])
local arms = {}
for s, a in string.gmatch(ARGV[8], '([^,=]+)=([^,]+)') do arms[s] = a end
local function credit(t, metric, segs, by, float)
  local key = ARGV[7] .. math.floor(t / 86400)
  for _, s in ipairs(segs) do
    local field = metric .. ':' .. s .. ':' .. (arms[s] or 't')
    if float then redis.call('HINCRBYFLOAT', key, field, by) else redis.call('HINCRBY', key, field, by) end
  end
  redis.call('EXPIRE', key, ARGV[11])
end
local function members_at(t)
  local out = {}
  for s, entered in pairs(e) do
    local left = x[s]
    if entered <= t and (left == nil or left < entered or left > t) then table.insert(out, s) end
  end
  for s in string.gmatch(ARGV[9], '[^,]+') do
    if e[s] == nil then table.insert(out, s) end
  end
  table.sort(out)
  return out
end
local function seen(field) return redis.call('HEXISTS', person, field) == 1 or before(field) end
if kind == 'un' or ((kind == 'dl' or kind == 'op' or kind == 'ck') and mid == '') then
  credit(at, kind, members_at(at), 1)
  return 1
end
if kind == 'dl' then
  if seen('d:' .. mid) then return 0 end
  local segs = members_at(at)
  redis.call('HSET', person, 'd:' .. mid, period .. '|' .. at .. '|' .. table.concat(segs, ','))
  credit(at, 'dl', segs, 1)
  for _, flag in ipairs({'op', 'ck'}) do
    if seen(flag .. ':' .. mid) then credit(at, flag, segs, 1) end
  end
  return 1
end
if kind == 'op' or kind == 'ck' then
  if seen(kind .. ':' .. mid) then return 0 end
  redis.call('HSET', person, kind .. ':' .. mid, period)
  local dat, list
  local d = redis.call('HGET', person, 'd:' .. mid)
  if d then
    dat, list = string.match(d, '^%d+|([^|]*)|(.*)$')
  else
    d = redis.call('HGET', old, 'd:' .. mid)
    if d then dat, list = string.match(d, '^([^|]*)|(.*)$') end
  end
  if d then
    local segs = {}
    for s in string.gmatch(list, '[^,]+') do table.insert(segs, s) end
    credit(tonumber(dat), kind, segs, 1)
  end
  return 1
end
-- an order: every segment entered within the window before it
local revenue, window = tonumber(ARGV[5]), tonumber(ARGV[6])
for s, entered in pairs(e) do
  if entered <= at and at - entered <= window then
    local prev = r[s]
    if prev == nil then credit(entered, 'cv', {s}, 1); prev = 0 end
    local now = prev + revenue
    redis.call('HSET', person, 'r:' .. s, now)
    credit(entered, 'rv', {s}, revenue)
    credit(entered, 'rq', {s}, (now * now - prev * prev) / 10000, true)
  end
end
return 1
"""


def period(moment: datetime) -> int:
    """The 8-day period of ``moment``, counted modulo :data:`PERIODS`: the value of the message
    state written then (0 to 11, which Redis stores in an entry's header byte). State of 5 or more
    periods back is dropped, so it is kept 33 to 47 days (``keys.MESSAGE_RETENTION``: at least 30);
    a person without any credit for 96 days or more keeps theirs up to one more cycle."""
    return int(moment.timestamp()) // 86400 // PERIOD_DAYS % PERIODS


def credit_mark(event_id: str) -> bytes:
    """The field suffix that marks an event as credited: the first 8 bytes of its id, raw (9-byte
    fields instead of 33; 64 bits keep two events of one person apart). Marks and message state
    written before they moved into the person's hash (``an:{a}:msg:<pid>``, marks ``#`` and the 32
    hex digits) are still honoured: the script reads that hash too, and it expires 30 days after its
    last write (``keys.MESSAGE_RETENTION``)."""
    return bytes.fromhex(event_id[:16].ljust(16, "0"))


def kind_of(event: Event) -> str | None:
    if event.name in ENGAGEMENT:
        return ENGAGEMENT[event.name]
    if event.name == "unsubscribed":
        return "un"
    if event.name == "order_completed":
        return "order"
    return None


def message_of(event: Event) -> str:
    for name in MESSAGE_PROPERTIES:
        value = event.properties.get(name)
        if value not in (None, ""):
            return str(value).replace("|", "_").replace(",", "_")
    return ""


def cents(event: Event) -> int:
    """The order's revenue in cents (``revenue``, else ``total``/``value``); 0 when absent."""
    for name in ("revenue", "total", "value"):
        value = event.properties.get(name)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return round(value * 100)
    return 0


def record(
    pipe: redis.Redis | Any,
    account: str,
    profile_id: str,
    events: Sequence[Event],
    current: Iterable[str],
    arms: Mapping[str, str],
    *,
    conversion_days: int = DEFAULT_CONVERSION_DAYS,
    now: datetime | None = None,
) -> int:
    """Queue on ``pipe`` (profile Redis) the credit of one person's applied events (the others are
    ignored); ``current``: the segments the ledger holds for them now; ``arms``: their arm per
    segment with a holdout or variants; ``now``: when (the message state written then is kept at
    least 30 days, see :func:`period`; the clock's instant by default). The number of events queued."""
    keys = [person_key(account, profile_id), messages_key(account, profile_id)]
    written = period(now or clock.now())
    held = ",".join(sorted(current))
    script = pipe.register_script(_CREDIT) if hasattr(pipe, "register_script") else None
    queued = 0
    for event in events:
        kind = kind_of(event)
        if kind is None or script is None:
            continue
        args = [
            kind,
            credit_mark(event.event_id),
            int(event.occurred_at.timestamp()),
            message_of(event),
            cents(event) if kind == "order" else 0,
            int(timedelta(days=conversion_days).total_seconds()),
            day_prefix(account),
            arms_text(arms),
            held,
            PERIODS,
            int(DAILY_RETENTION.total_seconds()) + 86400,
            event.event_id,
            written,
            int(PERSON_RETENTION.total_seconds()),
        ]
        script(keys=keys, args=args, client=pipe)
        queued += 1
    return queued


def record_batch(
    conn: redis.Redis,
    account: Any,
    events: Sequence[Event],
    memberships: Mapping[str, Iterable[str]],
    profile_of: Mapping[str, str],
    now: datetime,
) -> int:
    """The worker's hook: credit a batch of applied events of one account (``profile_of``: event id
    → the profile it was applied to; ``memberships``: profile → segments in the ledger now)."""
    by_profile: dict[str, list[Event]] = {}
    for event in events:
        pid = profile_of.get(event.event_id)
        if pid is not None and kind_of(event) is not None:
            by_profile.setdefault(pid, []).append(event)
    pipe = conn.pipeline(transaction=False)
    queued = 0
    days = conversion_days(account)
    found = settings(account)
    split = tuple(s for s in _all_segments(account) if s in found)  # with a holdout or variants
    for pid, batch in by_profile.items():
        held = list(memberships.get(pid, ()))
        arms = arms_of(account, pid, split) if split else {}
        queued += record(pipe, account.id, pid, batch, held, arms, conversion_days=days, now=now)
    pipe.execute()
    return queued


def _all_segments(account: Any) -> tuple[str, ...]:
    return tuple(account.ruleset.segment_names)
