"""Where the applied state of a destination's contacts is kept (queue Redis): small hashes, each a
listpack, that grow one at a time with the destination (linear hashing).

A single hash with a field per contact is a hashtable past 128 entries: about 60 bytes of overhead
per field on top of the field and its value. Spread over buckets of about 40 to 80 contacts, each
hash stays a listpack (Redis' defaults: at most 128 entries, each field and value at most 64
bytes), where an entry costs its bytes plus two or three.

* ``sync:{a}:{d}:applied:<n>`` the buckets: field the packed profile id (:func:`pack_pid`: the
  usual 16 hex digits as the signed 64-bit integer of the same bits, 8 bytes in a listpack), value
  the compact applied state (:class:`connector.sync.keys.Applied`);
* ``sync:{a}:{d}:applied:lh`` the state ``"<level> <split> <entries> <o>"``: there are
  ``2^level + split`` buckets; a contact is in bucket ``h mod 2^level``, or ``h mod 2^(level+1)``
  when that is below ``split``, ``h`` being the packed id's last 9 decimal digits (the id's bits
  are random: uniform enough for up to 2^29 buckets) or, for an id of another form, the first 32
  bits of the SHA-1 of the packed id (:func:`entry_hash`); when the entries pass :data:`CAP` per
  bucket, bucket ``split`` is split (its entries of ``h mod 2^(level+1) = split + 2^level`` move to
  that new bucket) in the script that wrote the entry, and ``split`` moves on (at ``2^level`` the
  level goes up, ``split`` back to 0); ``o`` is 1 while the hash of before may hold entries;
* ``sync:{a}:{d}:applied`` the hash of before (field the profile id as it is): still read; a
  contact's next write moves it into its bucket. It also keeps the rare value longer than 64 bytes
  (a ledger of many tags), which would turn a whole bucket into a hashtable.

The scripts compute the bucket themselves, so a split in between cannot misplace a write (cheaply:
string operations, no SHA-1 for the usual ids); every script of the sync runs on the queue Redis,
which is one server (its scripts already touch keys of several slots).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from typing import Any

import redis

from connector.buckets import SPLITTING, pack_pid
from connector.sync.keys import run_script

CAP = 40  # entries per bucket on average before a split: buckets hold 40 to 80, under 128
STATE_SUFFIX = ":lh"

# Lua helpers the scripts that read or write the applied state start with. ``base`` is the key
# of the hash of before (``sync:{a}:{d}:applied``), ``pid`` the profile id, ``m`` its packed form.
# The state ``"<level> <split> <entries> <o>"``: ``o`` is 1 while the hash of before may hold
# entries (it is looked in only then; 0 once it is gone).
_LOOKUP = (
    SPLITTING
    + f"""
local function ap_state(base)
  local v = redis.call('GET', base .. '{STATE_SUFFIX}')
  if not v then return 0, 0, 0, 1, true end
  local L, s, n, o = string.match(v, '^(%d+) (%d+) (%d+) (%d)$')
  return tonumber(L), tonumber(s), tonumber(n), tonumber(o), false
end
local function ap_hash(m)
  local digits = string.match(m, '^%-?(%d+)$')
  if digits then return tonumber(string.sub(digits, -9)) end
  return tonumber(string.sub(redis.sha1hex(m), 1, 8), 16)
end
local function ap_bucket(base, m, L, s) return lh_name(base .. ':', lh_bucket(ap_hash(m), L, s)) end
-- the contact's value (false: none) and where: f.inside (its bucket), f.before (the hash of before)
local function ap_find(base, pid, m)
  local f = {{}}
  f.L, f.s, f.n, f.o, f.fresh = ap_state(base)
  f.bucket = ap_bucket(base, m, f.L, f.s)
  f.v = redis.call('HGET', f.bucket, m)
  f.inside = f.v ~= false
  f.before = false
  if not f.v and f.o == 1 then
    f.v = redis.call('HGET', base, pid)
    f.before = f.v ~= false
  end
  return f
end
local function ap_get(base, pid, m) return ap_find(base, pid, m).v end
"""
)

_SAVE = f"""
local function ap_save(base, L, s, n, o)
  redis.call('SET', base .. '{STATE_SUFFIX}', string.format('%d %d %d %d', L, s, math.max(n, 0), o))
end
"""

# LOOKUP: ap_find, ap_get; WRITE: and ap_put (which splits); DELETE: ap_del.
LOOKUP = _LOOKUP
WRITE = (
    _LOOKUP
    + _SAVE
    + f"""
local AP_CAP = {CAP}
-- write the value of the contact found by ap_find
local function ap_put(base, pid, m, f, value)
  local L, s, n, o = f.L, f.s, f.n, f.o
  if #value > 64 or #m > 64 then  -- kept in the hash of before: a bucket stays compact
    redis.call('HSET', base, pid, value)
    if f.inside then
      redis.call('HDEL', f.bucket, m)
      n = n - 1
    end
    ap_save(base, L, s, n, 1)
    return
  end
  redis.call('HSET', f.bucket, m, value)
  if f.before then
    redis.call('HDEL', base, pid)
    if redis.call('EXISTS', base) == 0 then o = 0 end
  elseif f.fresh then
    o = redis.call('EXISTS', base)
  end
  if not f.inside then
    n = n + 1
    while n > AP_CAP * (2 ^ L + s) do L, s = lh_split(base .. ':', 'h', L, s, ap_hash) end
  end
  if n ~= f.n or o ~= f.o or f.fresh then ap_save(base, L, s, n, o) end
end
"""
)
DELETE = (
    _LOOKUP
    + _SAVE
    + """
local function ap_del(base, pid, m)
  local L, s, n, o, fresh = ap_state(base)
  local gone = redis.call('HDEL', ap_bucket(base, m, L, s), m)
  redis.call('HDEL', base, pid)  -- whatever the state says: an erasure leaves nothing
  if gone > 0 then ap_save(base, L, s, n - gone, o) end
end
"""
)

# KEYS: the hash of before. ARGV: pairs of profile id and packed id. The stored values (false: none).
_READ = (
    LOOKUP
    + """
local L, s, _, o = ap_state(KEYS[1])
local out = {}
for i = 1, #ARGV, 2 do
  local v = redis.call('HGET', ap_bucket(KEYS[1], ARGV[i + 1], L, s), ARGV[i + 1])
  if not v and o == 1 then v = redis.call('HGET', KEYS[1], ARGV[i]) end
  out[#out + 1] = v
end
return out
"""
)

# KEYS: the hash of before of each destination. ARGV: pairs of profile id and packed id.
_FORGET = (
    DELETE
    + """
for _, base in ipairs(KEYS) do
  for i = 1, #ARGV, 2 do ap_del(base, ARGV[i], ARGV[i + 1]) end
end
return 0
"""
)

_INTLIKE = re.compile(r"-?[0-9]+")


def entry_hash(packed: str) -> int:
    """The bucket hash of a packed id (the scripts' ``ap_hash``)."""
    digits = packed.lstrip("-")
    if _INTLIKE.fullmatch(packed):
        return int(digits[-9:])
    return int(hashlib.sha1(packed.encode()).hexdigest()[:8], 16)  # a bucket hash, not a secret


def read(conn: redis.Redis | Any, base: str, profile_ids: Sequence[str]) -> Any:
    """The stored values of these contacts (None: none), in one script call; on a pipeline, queued."""
    args: list[str] = []
    for pid in profile_ids:
        args += [pid, pack_pid(pid)]
    return run_script(conn, _READ, [base], args)


def forget(pipe: redis.Redis | Any, bases: Sequence[str], profile_ids: Sequence[str]) -> None:
    """Queue on ``pipe`` the removal of these contacts' applied state from every base given."""
    args: list[str] = []
    for pid in profile_ids:
        args += [pid, pack_pid(pid)]
    if bases and args:
        run_script(pipe, _FORGET, list(bases), args)
