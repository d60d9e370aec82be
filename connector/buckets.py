"""Many small entries kept in few compact Redis keys: linear hashing over buckets.

Redis stores a small hash as a listpack (up to ``hash-max-listpack-entries``, 128 by default, each
field and value at most 64 bytes) and a small set of integers as an intset (up to
``set-max-intset-entries``, 512): a dozen bytes an entry instead of the ~70-100 bytes of a key or
of a hashtable member of its own. A structure (the identity index of an account, the members of a
segment) is therefore spread over buckets, each one key, and grows one bucket at a time so that a
bucket stays well under those limits at any size (linear hashing):

* an entry's hash ``h`` is 32 bits of its stored field's digest (identity index), or a member's
  last 9 decimal digits (a packed profile id; the first 32 bits of its SHA-1 for other forms),
  computed alike in the scripts and here (:func:`field_hash`, :func:`member_hash`);
* the structure's state is its level ``L``, split pointer ``s`` and entry count ``n``; it has
  ``2^L + s`` buckets, numbered from 0, and an entry is in bucket ``h mod 2^L``, or
  ``h mod 2^(L+1)`` when that is below ``s`` (the buckets already split at this level);
* when ``n`` passes ``cap`` entries per bucket, bucket ``s`` is split: its entries whose
  ``h mod 2^(L+1)`` is ``s + 2^L`` move to that new bucket, and ``s`` moves on (at ``2^L``, the
  level goes up and ``s`` back to 0). Each split moves about ``cap`` entries, in the script that
  wrote the entry that passed the threshold, atomically with it.

Buckets are never merged back when entries go (they are emptied, and an empty key is gone). A
bucket holds on average between ``cap`` and ``2 cap`` entries (the unsplit ones twice as many as
the split ones), so ``cap`` leaves room for chance: a bucket past the server's limits becomes a
hashtable (correct, just less compact) and is rebuilt compact when it is next split.

Every key a script touches is declared (Redis Cluster: while the slot is being moved to another
node, Redis checks the declared keys and answers ASK or TRYAGAIN; a key a script only named itself
would be read as absent on the node that imports the slot, or written on the wrong node). So the
caller computes the bucket names from the state ``(L, s)`` it last saw (cached per process per
structure: :func:`known`), declares the state key and those buckets, and passes the ``L s`` it
assumed; the script checks them (not ``n``) and that every bucket it computes was declared, and
otherwise changes nothing and replies ``retry`` with the current ``L s``; :func:`run` then tries
again (a bounded number of times, else :class:`StateMoving`, a TRYAGAIN: retryable). A write that
passes the threshold replies ``split``; :func:`grow` then splits, one bucket per call, each call
declaring the state, the bucket split and the new one (:data:`SPLIT`). All of a structure's keys
share one hash tag: one Redis Cluster slot.

Profile ids are stored packed (:func:`pack_pid`): the usual 16-hex-digit id as the decimal signed
64-bit integer of the same bits, which Redis keeps as an 8-byte integer in a listpack or intset.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Callable, Iterable
from typing import Any

from connector.errors import StateMoving
from connector.redis_conn import cached_script

# Linear hashing itself, whatever the entries' hash: an entry's bucket, a bucket's name, and one
# split (``hash``: the structure's hash of a field or member). The sync's applied state
# (connector/sync/applied.py) starts its scripts with it too, with a hash of its own.
SPLITTING: str = """
local function lh_bucket(h, L, s)
  local b = h % (2 ^ L)
  if b < s then b = h % (2 ^ (L + 1)) end
  return b
end
local function lh_name(prefix, b) return prefix .. b end  -- integral numbers print as integers
local function lh_chunks(cmd, key, list)
  local done = 0
  for from = 1, #list, 1000 do
    done = done + redis.call(cmd, key, unpack(list, from, math.min(from + 999, #list)))
  end
  return done
end
local function lh_split(prefix, kind, L, s, hash)
  local src, dst = lh_name(prefix, s), lh_name(prefix, s + 2 ^ L)
  local mod = 2 ^ (L + 1)
  local stay, go = {}, {}
  if kind == 'h' then
    local all = redis.call('HGETALL', src)
    for i = 1, #all, 2 do
      local into = (hash(all[i]) % mod == s) and stay or go
      into[#into + 1] = all[i]
      into[#into + 1] = all[i + 1]
    end
  else
    for _, m in ipairs(redis.call('SMEMBERS', src)) do
      local into = (hash(m) % mod == s) and stay or go
      into[#into + 1] = m
    end
  end
  -- rewritten whole: a bucket that had grown past the compact encoding is compact again
  redis.call('DEL', src)
  local add = kind == 'h' and 'HSET' or 'SADD'
  if #stay > 0 then lh_chunks(add, src, stay) end
  if #go > 0 then lh_chunks(add, dst, go) end
  s = s + 1
  if s == 2 ^ L then L, s = L + 1, 0 end
  return L, s
end
"""

# The Lua helpers the bucketed scripts start with. ``kind`` is 'h' (hash buckets) or 's' (sets).
LUA: str = (
    """
-- an identity field (a kind code and a digest): 32 bits of the digest
local function lh_hash_field(f)
  local a, b, c, d = string.byte(f, 2, 5)
  return ((a * 256 + b) * 256 + c) * 256 + d
end
-- a member (a packed profile id): its last 9 decimal digits when it has 10 or more, else the first
-- 32 bits of its SHA-1
local function lh_hash_member(m)
  if #m >= 10 and string.find(m, '^%-?%d+$') then return tonumber(string.sub(m, -9)) end
  return tonumber(string.sub(redis.sha1hex(m), 1, 8), 16)
end
local function lh_hash_of(kind) return kind == 'h' and lh_hash_field or lh_hash_member end
"""
    + SPLITTING
    + """
local function lh_unpack(packed)
  if not packed then return 0, 0, 0 end
  local L, s, n = string.match(packed, '^(%d+) (%d+) (%-?%d+)$')
  return tonumber(L), tonumber(s), tonumber(n)
end
local function lh_pack(L, s, n)
  return string.format('%d %d %d', L, s, math.max(n, 0))
end
-- profile ids packed as pack_pid / unpack_pid do, exact in Lua's doubles: the 64 bits in two
-- 32-bit halves, 2^32 = 429496 * 10^4 + 7296 for the decimal digits
local function lh_decimal(hi, lo)
  local t = hi * 7296 + lo
  local top = hi * 429496 + math.floor(t / 10000)
  local low = t % 10000
  if top == 0 then return string.format('%d', low) end
  return string.format('%.0f', top) .. string.format('%04d', low)
end
local function lh_pack_pid(pid)
  if #pid == 16 and not string.find(pid, '[^0-9a-f]') then
    local hi, lo = tonumber(string.sub(pid, 1, 8), 16), tonumber(string.sub(pid, 9, 16), 16)
    if hi < 2147483648 then return lh_decimal(hi, lo) end
    hi, lo = 4294967295 - hi, 4294967296 - lo  -- the magnitude of the negative: 2^64 - bits
    if lo == 4294967296 then hi, lo = hi + 1, 0 end
    return '-' .. lh_decimal(hi, lo)
  end
  if string.sub(pid, 1, 1) == '=' or string.find(pid, '^%-?%d+$') then return '=' .. pid end
  return pid
end
local function lh_unpack_pid(m)
  if string.sub(m, 1, 1) == '=' then return string.sub(m, 2) end
  if not string.find(m, '^%-?%d+$') then return m end
  local neg = string.sub(m, 1, 1) == '-'
  local digits = neg and string.sub(m, 2) or m
  local head = #digits > 4 and tonumber(string.sub(digits, 1, #digits - 4)) or 0
  local tail = tonumber(string.sub(digits, -4))
  local hh = math.floor(head / 4294967296)
  local part = (head - hh * 4294967296) * 10000 + tail
  local carry = math.floor(part / 4294967296)
  local hi, lo = (hh * 10000 + carry) % 4294967296, part - carry * 4294967296
  if neg and (hi > 0 or lo > 0) then
    hi, lo = 4294967295 - hi, 4294967296 - lo
    if lo == 4294967296 then hi, lo = hi + 1, 0 end
  end
  return string.format('%08x%08x', hi, lo)
end
local function lh_grow(prefix, kind, cap, L, s, n)
  while n > cap * (2 ^ L + s) do L, s = lh_split(prefix, kind, L, s, lh_hash_of(kind)) end
  return L, s
end
-- the keys the call declared from KEYS[first] on: a script touches no other key
local function lh_declared(first)
  local d = {}
  for i = first, #KEYS do d[KEYS[i]] = true end
  return d
end
local function lh_due(cap, L, s, n) return n > cap * (2 ^ L + s) end
"""
)

# KEYS: a structure's state (a hash), its bucket ``s``, its bucket ``s + 2^L``. ARGV: the state's
# field, kind, cap, the buckets' key prefix, the L and s assumed. One split when one is due.
# Reply: 'retry' / 'split' (another is due) / 'ok' (none is due, or the structure is gone: an
# erasure deleted it), then the state's L and s.
SPLIT: str = (
    LUA
    + """
local packed = redis.call('HGET', KEYS[1], ARGV[1])
local L, s, n = lh_unpack(packed)
if not packed then return {'ok', L, s} end
if L ~= tonumber(ARGV[5]) or s ~= tonumber(ARGV[6]) then return {'retry', L, s} end
local cap = tonumber(ARGV[3])
if not lh_due(cap, L, s, n) then return {'ok', L, s} end
if KEYS[2] ~= lh_name(ARGV[4], s) or KEYS[3] ~= lh_name(ARGV[4], s + 2 ^ L) then return {'retry', L, s} end
L, s = lh_split(ARGV[4], ARGV[2], L, s, lh_hash_of(ARGV[2]))
redis.call('HSET', KEYS[1], ARGV[1], lh_pack(L, s, n))
return {lh_due(cap, L, s, n) and 'split' or 'ok', L, s}
"""
)


TRIES = 12  # script calls per operation while the state keeps changing under it
BACKOFF_SECONDS = 0.0005  # the pause after the second call answered retry, doubled after each next
BACKOFF_MOST = 0.02  # the longest pause: the calls ride out another worker's splits (about 0.13 s)
SPLITS_PER_WRITE = 64  # splits one write goes on with (the next write goes on with the rest)
_KNOWN: dict[tuple[str, str], tuple[int, int]] = {}
_KNOWN_MOST = 100_000


def known(key: str, field: str) -> tuple[int, int]:
    """The (L, s) of the structure ``field`` of state hash ``key`` last seen by this process
    ((0, 0) before any: the script corrects it)."""
    return _KNOWN.get((key, field), (0, 0))


def learn(key: str, field: str, level: int, split: int) -> None:
    if len(_KNOWN) >= _KNOWN_MOST:
        _KNOWN.clear()
    _KNOWN[(key, field)] = (level, split)


def forget_known() -> None:
    _KNOWN.clear()


def name(prefix: str, number: int) -> str:
    return f"{prefix}{number}"


def names(prefix: str, hashes: Iterable[int], level: int, split: int) -> list[str]:
    """The bucket keys of these entry hashes under (L, s), each once, in a stable order."""
    return [name(prefix, b) for b in sorted({bucket_of(h, level, split) for h in hashes})]


def text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def run(
    script: Any, key: str, field: str, make: Callable[[int, int], tuple[list[str], list[Any]]]
) -> tuple[str, int, int, list[Any]]:
    """Call a bucket script with the keys and arguments ``make(L, s)`` builds from the state last
    seen, again with the current one while the script answers ``retry`` (bounded). Returns the tag
    ('ok' or 'split'), the state's L and s, and the rest of the reply."""
    level, split = known(key, field)
    for attempt in range(TRIES):
        keys, args = make(level, split)
        tag, level, split, *rest = script(keys=keys, args=args)
        level, split = int(level), int(split)
        learn(key, field, level, split)
        if text(tag) != "retry":
            return text(tag), level, split, rest
        back_off(attempt)
    raise StateMoving(f"the buckets of {key} {field} changed under every attempt")


def back_off(attempt: int) -> None:
    """After the ``attempt``-th call (from 0) answered retry: the first goes again at once (it
    assumed a stale state, and the reply carried the current one); later ones pause, doubling from
    :data:`BACKOFF_SECONDS` up to :data:`BACKOFF_MOST`, so that another worker's run of splits
    (:func:`grow`, up to :data:`SPLITS_PER_WRITE` calls) ends before the next try."""
    if attempt > 0:
        time.sleep(min(BACKOFF_SECONDS * (1 << (attempt - 1)), BACKOFF_MOST))


def grow(conn: Any, key: str, field: str, prefix: str, kind: str, cap: int, level: int, split: int) -> None:
    """Split the structure's buckets while a split is due (after a write replied ``split``)."""
    script = cached_script(conn, SPLIT)
    for _ in range(SPLITS_PER_WRITE):
        src, dst = name(prefix, split), name(prefix, split + (1 << level))
        tag, level, split = script(keys=[key, src, dst], args=[field, kind, cap, prefix, level, split])
        level, split = int(level), int(split)
        learn(key, field, level, split)
        if text(tag) == "ok":
            return


def images(numbers: Iterable[int], level_a: int, split_a: int, level_b: int, split_b: int) -> set[int]:
    """The buckets of a structure at (level_b, split_b) that may hold entries of these buckets of
    one at (level_a, split_a), both over the same entry hashes."""
    out: set[int] = set()
    mod_b = 1 << (level_b + 1)
    for i in numbers:
        mod_a = 1 << (level_a + 1) if i < split_a or i >= (1 << level_a) else 1 << level_a
        residues = [i % mod_b] if mod_a >= mod_b else range(i, mod_b, mod_a)
        out.update(bucket_of(r, level_b, split_b) for r in residues)
    return out


def field_hash(field_name: bytes) -> int:
    """The bucket hash of an identity field (the scripts' ``lh_hash_field``): 32 bits of its digest."""
    return int.from_bytes(field_name[1:5], "big")


def member_hash(member: str) -> int:
    """The bucket hash of a member, a packed profile id (the scripts' ``lh_hash_member``): its last
    9 decimal digits (the usual ids: no SHA-1 per change), else 32 bits of its SHA-1."""
    if len(member) >= 10 and _INTLIKE.fullmatch(member):
        return int(member[-9:])
    return int(hashlib.sha1(member.encode()).hexdigest()[:8], 16)  # a bucket hash, not a secret


def bucket_of(h: int, level: int, split: int) -> int:
    b = h % (1 << level)
    return h % (1 << (level + 1)) if b < split else b


def unpack_state(packed: bytes | str | None) -> tuple[int, int, int]:
    """(level, split pointer, entries) of a packed state (``"L s n"``); a missing one is empty."""
    if not packed:
        return 0, 0, 0
    text = packed.decode() if isinstance(packed, bytes) else packed
    level, split, count = (int(x) for x in text.split())
    return level, split, count


def bucket_count(level: int, split: int) -> int:
    return (1 << level) + split


_HEX16 = re.compile(r"[0-9a-f]{16}")
_INTLIKE = re.compile(r"-?[0-9]+")
_SIGN = 1 << 63
_WRAP = 1 << 64


def pack_pid(pid: str) -> str:
    """A profile id as stored in index values and member buckets: a 16-hex-digit id (the ids the
    connector makes) as the decimal signed 64-bit integer of its bits (8 bytes in a listpack or an
    intset); any other id as it is, behind ``=`` when it would read as such an integer or starts
    with ``=``. Exact both ways (:func:`unpack_pid`)."""
    if len(pid) == 16 and _HEX16.fullmatch(pid):
        bits = int(pid, 16)
        return str(bits - _WRAP if bits >= _SIGN else bits)
    if pid.startswith("=") or _INTLIKE.fullmatch(pid):
        return "=" + pid
    return pid


def unpack_pid(stored: bytes | str) -> str:
    text = stored.decode() if isinstance(stored, bytes) else stored
    if text.startswith("="):
        return text[1:]
    if _INTLIKE.fullmatch(text):
        return f"{int(text) % _WRAP:016x}"
    return text
