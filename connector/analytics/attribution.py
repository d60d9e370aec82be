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
  entry, the revenue of every such order. Strictly before: an entry is recorded at the instant the
  worker evaluated the person (whole seconds), which is never before the order that caused it, so
  the order that put a person in a segment (a first order into ``vip`` or a first-time buyer stage)
  is not a conversion of that segment.

Membership at an instant uses the person's last entry and exit per segment
(:func:`connector.analytics.movement.record_diff`); segments the ledger holds now without a
recorded entry count as held since before. Every event is credited once (a message's delivery, open
and click by the message's own field, other events by a mark of their id once they credited
something; both kept at least 30 days), so a batch delivered twice changes nothing. Counters per
day, metric, segment and arm (``dl`` deliveries, ``op`` opens, ``ck`` clicks, ``un`` unsubscribes,
``cv`` conversions, ``rv`` revenue in cents, ``rq`` the sum of squares of the revenue per entry, for
Welch's interval).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

import redis

from connector import clock
from connector.analytics.holdout import arms_of, arms_text, settings, split_segments
from connector.analytics.keys import (
    DAILY_RETENTION,
    PERSON_RETENTION,
    SEGMENT_CODE_LUA,
    codes_key,
    day_prefix,
    messages_key,
    person_key,
)
from connector.analytics.settings import conversion_days
from connector.event import Event
from connector.profiles.batched import Batched
from connector.redis_conn import queued_script
from rules.values import number

ENGAGEMENT = {"email_delivered": "dl", "email_opened": "op", "email_clicked": "ck"}
KINDS = (*ENGAGEMENT, "unsubscribed", "order_completed")
DEFAULT_CONVERSION_DAYS = 7
MESSAGE_PROPERTIES = ("message_id", "campaign_id", "flow_message_id")
PERIOD_DAYS = 8
PERIODS = 12
MAX_CENTS = 10**14  # 10^12 in any currency: the ingest refuses larger amounts

# KEYS: person hash, the messages hash of before (read only), the account's segment codes
# (:func:`connector.analytics.keys.codes_key`). ARGV: kind (dl/op/ck/un/order), the event's credit
# mark (:func:`credit_mark`), at (epoch s), the message's key (:func:`message_key`; "" for an order,
# an unsubscribe or engagement without a message id), revenue (cents), window (s), day key prefix,
# arms "seg=arm,...", current segments "seg,...", :data:`PERIODS`, day ttl, the event id in full
# (marks of the messages hash of before), the current period (:func:`period`), the person hash's
# ttl, the message id verbatim (the fields of before).
#
# The person hash (docs/analytics.md, "What is kept per person"): E<code>, X<code>, R<code> the
# last entry and exit instants and the revenue credited to the entry, per segment code; the
# message state: D<message key> = "<period>|<at>|<segment codes at delivery>", the opens and
# clicks counted, packed per period in "^<period>" (a byte: the key's length, +16 for a click; then
# the message key; 64 bytes a field at most, then "^<period>+" ...), and the credit marks of the
# events that carry no message (orders, unsubscribes, engagement without a message id) and
# credited something: 8 bytes each, packed in "*<period>" (7 a field at most, then "*<period>+"
# ...). Message state (D, ^, *, and d:/op:/ck:<id>, #<8 bytes> of before) of 5 or more periods
# ago is gone for every purpose (docs/analytics.md, "When message state is gone"): no run reads it,
# and every run deletes it first, also one that then refuses its event. Fields of the layout of
# before (e:/x:/r:<name>, d:/op:/ck:<id>, #<8 bytes>) are read; the segment ones are rewritten with
# codes by the first run that finds them, the message ones age out with their period.
_CREDIT_BODY = """
local PERIODS = tonumber(ARGV[10])
local person, old, dict = KEYS[1], KEYS[2], KEYS[3]
local kind, at, mk, mid = ARGV[1], tonumber(ARGV[3]), ARGV[4], ARGV[15]
local mark, period = ARGV[2], tonumber(ARGV[13])
local legacy = redis.call('EXISTS', old) == 1
local function before(field) return legacy and redis.call('HEXISTS', old, field) == 1 end
-- state written 5 or more periods ago is gone for every purpose: not read, and deleted below; state
-- one period ahead is current (a worker whose clock passed a period's end first wrote it)
local function aged(written)
  local age = (period - written) % PERIODS
  return age >= 5 and age < PERIODS - 1
end
local state = redis.call('HGETALL', person)
local h, e, x, r, packs, flags, counted, stale, earlier = {}, {}, {}, {}, {}, {}, {}, {}, {}
local entered_in = {}  -- segment code -> the arm its last entry was made in (when recorded)
local dup = false
for i = 1, #state, 2 do
  local f, v = state[i], state[i + 1]
  local c, gone = string.sub(f, 1, 1), false
  if c == 'E' then
    local t, arm = string.match(v, '^(%d+)(%a*)$')
    e[string.sub(f, 2)] = tonumber(t)
    if arm ~= nil and arm ~= '' then entered_in[string.sub(f, 2)] = arm end
  elseif c == 'X' then x[string.sub(f, 2)] = tonumber(v)
  elseif c == 'R' then r[string.sub(f, 2)] = tonumber(v)
  elseif c == '*' then
    gone = aged(tonumber(string.match(f, '^%*(%d+)')))
    if not gone then
      for j = 1, #v, 8 do if string.sub(v, j, j + 7) == mark then dup = true end end
      packs[f] = v
    end
  elseif c == '^' then
    gone = aged(tonumber(string.match(f, '^%^(%d+)')))
    if not gone then
      flags[f] = v
      local j = 1
      while j <= #v do
        local b = string.byte(v, j)
        counted[(b >= 16 and 'C' or 'O') .. string.sub(v, j + 1, j + b % 16)] = true
        j = j + 1 + b % 16
      end
    end
  else
    local p = string.sub(f, 1, 2)
    if p == 'e:' or p == 'x:' or p == 'r:' then
      earlier[#earlier + 1] = f
    else
      -- D<message>, and the message fields and marks of before (d:/op:/ck:<id>, #<8 bytes>)
      local written = tonumber(string.match(v, '^%d+'))
      gone = written ~= nil and aged(written)
    end
  end
  if gone then stale[#stale + 1] = f else h[f] = v end
end
if #stale > 0 then redis.call('HDEL', person, unpack(stale)) end
if dup or h['#' .. mark] or before('#' .. mark) or before('#' .. ARGV[12]) then return 0 end
local function seen(flag, short)
  local found = short == 'D' and h['D' .. mk] ~= nil or counted[short .. mk]
  return found or h[flag .. ':' .. mid] ~= nil or before(flag .. ':' .. mid)
end
if mk ~= '' then
  if kind == 'dl' and seen('d', 'D') then return 0 end
  if (kind == 'op' or kind == 'ck') and seen(kind, kind == 'op' and 'O' or 'C') then return 0 end
end
-- segment codes (an:{a}:seg: name -> code, '#<code>' -> name, '#' the last code given)
local code, name = {}, {}
local function code_of(s)
  local c = segment_code(dict, code, s)
  name[c] = s
  return c
end
local function names_of(codes)
  local ask = {}
  for _, c in ipairs(codes) do if not name[c] then ask[#ask + 1] = '#' .. c end end
  if #ask > 0 then
    local got = redis.call('HMGET', dict, unpack(ask))
    for k, f in ipairs(ask) do
      if got[k] then name[string.sub(f, 2)] = got[k]; code[got[k]] = string.sub(f, 2) end
    end
  end
  local out = {}
  for _, c in ipairs(codes) do if name[c] then out[#out + 1] = name[c] end end
  return out
end
-- the layout of before: e:<name>, x:<name>, r:<name> move to E/X/R<code>. One written since
-- (by an entry or an exit) is newer and kept; an entry since also ends the revenue of before.
if #earlier > 0 then
  local maps, moved = {e = e, x = x, r = r}, {}
  for _, f in ipairs(earlier) do
    local c = code_of(string.sub(f, 3))
    local into = maps[string.sub(f, 1, 1)]
    if into[c] == nil and not (into == r and h['E' .. c]) then
      into[c] = tonumber(h[f])
      moved[#moved + 1] = string.upper(string.sub(f, 1, 1)) .. c
      moved[#moved + 1] = h[f]
    end
  end
  if #moved > 0 then redis.call('HSET', person, unpack(moved)) end
  redis.call('HDEL', person, unpack(earlier))
end
redis.call('EXPIRE', person, ARGV[14])
-- an event without a message is marked once it credited something (one that credited nothing
-- cannot be credited twice): 8 bytes in its period's field, at most 7 a field
local function remember()
  local f = '*' .. period
  while packs[f] and #packs[f] > 48 do f = f .. '+' end
  redis.call('HSET', person, f, (packs[f] or '') .. mark)
end
local arms = {}
for s, a in string.gmatch(ARGV[8], '([^,=]+)=([^,]+)') do arms[s] = a end
-- each segment's credit goes to the arm its entry was made in (a holdout added or changed since
-- moves no credit between arms); an entry recorded before arms were kept: the person's arm now
local function credit(t, metric, segs, by, float)
  local key = ARGV[7] .. math.floor(t / 86400)
  for _, s in ipairs(segs) do
    local c = code[s]
    local field = metric .. ':' .. s .. ':' .. ((c and entered_in[c]) or arms[s] or 't')
    if float then redis.call('HINCRBYFLOAT', key, field, by) else redis.call('HINCRBY', key, field, by) end
  end
  redis.call('EXPIRE', key, ARGV[11])
end
local function members_at(t)
  local codes = {}
  for c, entered in pairs(e) do
    local left = x[c]
    if entered <= t and (left == nil or left < entered or left > t) then codes[#codes + 1] = c end
  end
  local out = names_of(codes)
  local held = {}
  for s in string.gmatch(ARGV[9], '[^,]+') do held[#held + 1] = s end
  if #held > 0 then
    local got = redis.call('HMGET', dict, unpack(held))
    for k, s in ipairs(held) do
      if got[k] then code[s], name[got[k]] = got[k], s end
      if not (got[k] and e[got[k]]) then out[#out + 1] = s end
    end
  end
  table.sort(out)
  return out
end
if kind == 'un' or (kind ~= 'order' and mk == '') then
  local segs = members_at(at)
  if #segs > 0 then remember() end
  credit(at, kind, segs, 1)
  return 1
end
if kind == 'dl' then
  local segs = members_at(at)
  local codes = {}
  for k, s in ipairs(segs) do codes[k] = code_of(s) end
  redis.call('HSET', person, 'D' .. mk, period .. '|' .. at .. '|' .. table.concat(codes, ','))
  credit(at, 'dl', segs, 1)
  if seen('op', 'O') then credit(at, 'op', segs, 1) end
  if seen('ck', 'C') then credit(at, 'ck', segs, 1) end
  return 1
end
if kind == 'op' or kind == 'ck' then
  -- the opens and clicks of a period in one field: a byte (the key's length, +16 for a click),
  -- then the message key; at most 64 bytes a field, then "^<period>+" ...
  local f = '^' .. period
  while flags[f] and #flags[f] + 1 + #mk > 64 do f = f .. '+' end
  redis.call('HSET', person, f, (flags[f] or '') .. string.char(#mk + (kind == 'ck' and 16 or 0)) .. mk)
  local d, segs = h['D' .. mk], {}
  if d then
    local dat, list = string.match(d, '^%d+|([^|]*)|(.*)$')
    local codes = {}
    for c in string.gmatch(list, '[^,]+') do codes[#codes + 1] = c end
    credit(tonumber(dat), kind, names_of(codes), 1)
    return 1
  end
  local dat, list
  d = h['d:' .. mid]
  if d then
    dat, list = string.match(d, '^%d+|([^|]*)|(.*)$')
  elseif legacy then
    d = redis.call('HGET', old, 'd:' .. mid)
    if d then dat, list = string.match(d, '^([^|]*)|(.*)$') end
  end
  if d then
    for s in string.gmatch(list, '[^,]+') do segs[#segs + 1] = s end
    credit(tonumber(dat), kind, segs, 1)
  end
  return 1
end
-- an order: every segment entered within the window before it
local revenue, window, marked = tonumber(ARGV[5]), tonumber(ARGV[6]), false
for c, entered in pairs(e) do
  if entered < at and at - entered <= window then
    local s = names_of({c})[1]
    if s then
      if not marked then remember(); marked = true end
      local prev = r[c]
      if prev == nil then credit(entered, 'cv', {s}, 1); prev = 0 end
      local now = prev + revenue
      redis.call('HSET', person, 'R' .. c, now)
      credit(entered, 'rv', {s}, revenue)
      credit(entered, 'rq', {s}, (now * now - prev * prev) / 10000, true)
    end
  end
end
return 1
"""
_CREDIT = SEGMENT_CODE_LUA + _CREDIT_BODY
# the worker's path: the credits of a batch, many per script call (:func:`record_batch`)
_CREDIT_MANY = Batched(_CREDIT_BODY, SEGMENT_CODE_LUA, isolated=True)  # a bad person holds no one back


def period(moment: datetime) -> int:
    """The 8-day period of ``moment``, counted modulo :data:`PERIODS`: the value of the message
    state written then (0 to 11, which Redis stores in an entry's header byte). State of 5 or more
    periods back is gone for every purpose (not read, and deleted by the person's next credit), so
    it counts for more than 32 and at most 40 days (``keys.MESSAGE_RETENTION``: at least 30). State
    written one period ahead of a credit's (two workers' clocks either side of a period's end) is
    current for it; so state no credit met 5 to 10 periods after it was written reads as current
    again 11 to 16 periods after (the count wraps), until a credit finds it 5 to 10 periods back."""
    return int(moment.timestamp()) // 86400 // PERIOD_DAYS % PERIODS


def credit_mark(event_id: str) -> bytes:
    """The credit mark of an event: the first 8 bytes of its id, raw (64 bits keep two events of
    one person apart). Only events that carry no message are marked (orders, unsubscribes,
    engagement without a message id; 8 bytes each in the period's field): a delivery, an open or a
    click is counted once per message by the message's own field, which also stops it being
    counted twice. Marks written before are honoured: one field per event (``#`` and the 8 bytes)
    in the person's hash, and ``#`` and the 32 hex digits in the messages hash of before
    (``an:{a}:msg:<pid>``, read by the script, never written, gone 30 days after its last write:
    ``keys.MESSAGE_RETENTION``)."""
    return bytes.fromhex(event_id[:16].ljust(16, "0"))


def message_key(message: str) -> bytes:
    """How the person's hash names a message: its id when it is 7 bytes or shorter, else the first
    8 bytes of its SHA-1 (the lengths keep the two forms apart; 64 bits keep the messages of one
    person apart). Fields stay short whatever the ESP's ids look like."""
    raw = message.encode()
    return raw if len(raw) <= 7 else hashlib.sha1(raw).digest()[:8]


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
    """The order's revenue in cents (``revenue``, else ``total``/``value``); 0 when absent. A number
    sent as text (``"55.00"``) counts as the number, as it does in the rules' sums
    (:func:`rules.values.number`), so a report's revenue and ``lifetime_revenue`` agree."""
    for name in ("revenue", "total", "value"):
        value = number(event.properties.get(name))
        if value is not None:
            # an amount no order has (refused at ingest since) is no revenue, never a failed batch
            return round(value * 100) if -MAX_CENTS <= value * 100 <= MAX_CENTS else 0
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
    if not hasattr(pipe, "register_script"):
        return 0
    calls = _calls(account, profile_id, events, current, arms, conversion_days, period(now or clock.now()))
    script = queued_script(pipe, _CREDIT)
    for keys, args in calls:
        script(keys=keys, args=args, client=pipe)
    return len(calls)


def _calls(
    account: str,
    profile_id: str,
    events: Sequence[Event],
    current: Iterable[str],
    arms: Mapping[str, str],
    conversion_days: int,
    written: int,
) -> list[tuple[list[str], list[Any]]]:
    """The credit script's keys and arguments for each of one person's events that credits
    something (:func:`kind_of`), in order; ``written``: the current :func:`period`."""
    keys = [person_key(account, profile_id), messages_key(account, profile_id), codes_key(account)]
    held = ",".join(sorted(current))
    calls: list[tuple[list[str], list[Any]]] = []
    for event in events:
        kind = kind_of(event)
        if kind is None:
            continue
        message = message_of(event) if kind in ENGAGEMENT.values() else ""
        args = [
            kind,
            credit_mark(event.event_id),
            int(event.occurred_at.timestamp()),
            message_key(message) if message else b"",
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
            message,
        ]
        calls.append((keys, args))
    return calls


def record_batch(
    conn: redis.Redis,
    account: Any,
    events: Sequence[Event],
    memberships: Mapping[str, Iterable[str]],
    profile_of: Mapping[str, str],
    now: datetime,
) -> int:
    """The worker's hook: credit a batch of applied events of one account (``profile_of``: event id
    → the profile it was applied to; ``memberships``: profile → segments in the ledger now); the
    credits of the whole batch in one round trip, many per script call (each as :func:`record`
    would run it, in the same order). A credit that fails (a person's analytics state it cannot
    read) does not stop the others; the first error is raised once all have run, and the batch is
    retried: the credits already made are not made twice (their marks and message fields)."""
    by_profile: dict[str, list[Event]] = {}
    for event in events:
        pid = profile_of.get(event.event_id)
        if pid is not None and kind_of(event) is not None:
            by_profile.setdefault(pid, []).append(event)
    days = conversion_days(account)
    found = settings(account)
    split = split_segments(account, found)
    written = period(now)
    calls: list[tuple[list[str], list[Any]]] = []
    for pid, batch in by_profile.items():
        held = list(memberships.get(pid, ()))
        arms = arms_of(account, pid, split, found) if split else {}
        calls.extend(_calls(account.id, pid, batch, held, arms, days, written))
    _CREDIT_MANY.run(conn, calls)
    return len(calls)
