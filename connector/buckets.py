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

The scripts name their bucket keys themselves (``prefix .. n``): every bucket shares the hash tag of
the declared state key, i.e. one Redis Cluster slot, which Redis 7 allows for scripts without
flags.

Profile ids are stored packed (:func:`pack_pid`): the usual 16-hex-digit id as the decimal signed
64-bit integer of the same bits, which Redis keeps as an 8-byte integer in a listpack or intset.
"""

from __future__ import annotations

import hashlib
import re

# The Lua helpers the bucketed scripts start with. ``kind`` is 'h' (hash buckets) or 's' (sets).
LUA = """
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
local function lh_bucket(h, L, s)
  local b = h % (2 ^ L)
  if b < s then b = h % (2 ^ (L + 1)) end
  return b
end
local function lh_name(prefix, b) return prefix .. b end  -- integral numbers print as integers
local function lh_unpack(packed)
  if not packed then return 0, 0, 0 end
  local L, s, n = string.match(packed, '^(%d+) (%d+) (%-?%d+)$')
  return tonumber(L), tonumber(s), tonumber(n)
end
local function lh_pack(L, s, n)
  return string.format('%d %d %d', L, s, math.max(n, 0))
end
local function lh_chunks(cmd, key, list)
  local done = 0
  for from = 1, #list, 1000 do
    done = done + redis.call(cmd, key, unpack(list, from, math.min(from + 999, #list)))
  end
  return done
end
local function lh_split(prefix, kind, L, s)
  local hash = kind == 'h' and lh_hash_field or lh_hash_member
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
  while n > cap * (2 ^ L + s) do L, s = lh_split(prefix, kind, L, s) end
  return L, s
end
"""


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
