"""A rate limiter shared by every worker through Redis.

Per *limiter key* (one ESP + one credential, e.g. ``hubspot:3f9a...``), so one throttled account
never slows another:

* **Windows**: sliding-window logs (a sorted set of request instants per window), checked and
  taken in one Lua script, so N workers on M machines together never exceed ``limit`` requests in
  any ``seconds``-long interval. Several windows combine (Klaviyo burst 1 s + steady 60 s).
* **Concurrency**: a semaphore of leases that expire (Mailchimp's 10 concurrent connections per
  API key); a worker that dies holding a lease frees it after ``lease_seconds``.
* **Adaptive**: a 429 halves the allowed rate of that key (down to ``min_factor``), and with it the
  number of concurrent leases, and blocks it for the ESP's ``Retry-After``; each success ramps the
  factor back up by ``ramp``. A block is a finite instant at most ``max_block_seconds`` ahead, and
  the hash holding it expires after it (never sooner than two days after its last change).

Time is injected (``clock`` returns epoch seconds, ``sleep`` waits), so tests never sleep.

Keys: ``rl:{key}`` (hash: factor, blocked_until), ``rl:{key}:w:{limit}/{seconds}`` (zset),
``rl:{key}:leases`` (zset), ``rl:{key}:quota:{period}`` (counter, e.g. HubSpot's daily quota),
``rl:seq`` (counter for unique members).
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import redis

_ACQUIRE = """
local now = tonumber(ARGV[1])
local n = tonumber(ARGV[2])
local factor = tonumber(redis.call('HGET', KEYS[1], 'factor') or '1')
local blocked = tonumber(redis.call('HGET', KEYS[1], 'blocked_until') or '0')
if blocked == nil or blocked ~= blocked or blocked == math.huge or blocked == -math.huge then
  -- not an instant (never written so; an older release could store inf): no block
  redis.call('HDEL', KEYS[1], 'blocked_until')
  blocked = 0
end
if blocked > now then return tostring(blocked - now) end
local wait = 0
for i = 1, n do
  local limit = tonumber(ARGV[1 + 2 * i])
  local secs = tonumber(ARGV[2 + 2 * i])
  local allowed = math.max(1, math.floor(limit * factor))
  local key = KEYS[1 + i]
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - secs)
  local count = redis.call('ZCARD', key)
  if count >= allowed then
    local oldest = redis.call('ZRANGE', key, count - allowed, count - allowed, 'WITHSCORES')
    local w = tonumber(oldest[2]) + secs - now
    if w <= 0 then w = 0.001 end
    if w > wait then wait = w end
  end
end
if wait > 0 then return tostring(wait) end
local seq = redis.call('INCR', KEYS[2 + n])
for i = 1, n do
  local secs = tonumber(ARGV[2 + 2 * i])
  redis.call('ZADD', KEYS[1 + i], now, now .. ':' .. seq)
  redis.call('EXPIRE', KEYS[1 + i], math.ceil(secs) + 60)
end
return '0'
"""

_LEASE = """
local now = tonumber(ARGV[1])
local factor = tonumber(redis.call('HGET', KEYS[2], 'factor') or '1')
local allowed = math.max(1, math.floor(tonumber(ARGV[2]) * factor))
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) < allowed then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[4])
  redis.call('EXPIRE', KEYS[1], math.ceil(tonumber(ARGV[3])) + 60)
  return 1
end
return 0
"""

_ADJUST = """
local factor = tonumber(redis.call('HGET', KEYS[1], 'factor') or '1')
local mode = ARGV[1]
if mode == 'penalize' then
  factor = math.max(tonumber(ARGV[2]), factor / 2)
else
  factor = math.min(1, factor + tonumber(ARGV[2]))
end
redis.call('HSET', KEYS[1], 'factor', tostring(factor))
local keep = 2 * 86400
local until_ = tonumber(ARGV[3])
if until_ ~= nil and until_ == until_ and until_ < math.huge then
  local cur = tonumber(redis.call('HGET', KEYS[1], 'blocked_until') or '0')
  if cur == nil or cur ~= cur or cur == math.huge then cur = 0 end
  if until_ > cur then redis.call('HSET', KEYS[1], 'blocked_until', ARGV[3]) end
  -- the hash outlives the block it holds
  keep = math.max(keep, math.ceil(until_ - tonumber(ARGV[4])) + 60)
end
redis.call('EXPIRE', KEYS[1], keep)
return tostring(factor)
"""


# The longest a key is ever blocked: past a daily quota's reset (a day, 25 h across a DST change),
# so no stored block outlives what any ESP documents.
MAX_BLOCK_SECONDS = 26 * 3600.0


class WaitTooLong(Exception):
    """The next slot of a key is further away than the caller is willing to wait in-process
    (a daily quota spent, a long ``Retry-After``): ``seconds`` until it opens."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"next slot in {seconds:.1f} s")
        self.seconds = seconds


@dataclass(frozen=True)
class Window:
    """At most ``limit`` requests in any ``seconds``-long interval."""

    limit: int
    seconds: float


@dataclass(frozen=True)
class Limits:
    windows: tuple[Window, ...] = ()
    concurrency: int | None = None


class RateLimiter:
    """Shared limits per key. ``acquire`` blocks (through the injected ``sleep``) until allowed."""

    def __init__(
        self,
        conn: redis.Redis,
        *,
        clock: Callable[[], float],
        sleep: Callable[[float], None],
        lease_seconds: float = 150.0,
        lease_poll_seconds: float = 0.05,
        min_factor: float = 1 / 16,
        ramp: float = 0.05,
        max_block_seconds: float = MAX_BLOCK_SECONDS,
    ) -> None:
        self.conn = conn
        self.clock = clock
        self.sleep = sleep
        self.lease_seconds = lease_seconds
        self.lease_poll_seconds = lease_poll_seconds
        self.min_factor = min_factor
        self.ramp = ramp
        self.max_block_seconds = max_block_seconds
        self._acquire = conn.register_script(_ACQUIRE)
        self._lease = conn.register_script(_LEASE)
        self._adjust = conn.register_script(_ADJUST)

    # -- windows ---------------------------------------------------------------------------
    def try_take(self, key: str, limits: Limits) -> float:
        """Take one request slot now if every window allows it; else the seconds to wait."""
        keys = [f"rl:{key}"]
        args: list[float | int] = [self.clock(), len(limits.windows)]
        for window in limits.windows:
            keys.append(f"rl:{key}:w:{window.limit}/{window.seconds:g}")
            args.extend([window.limit, window.seconds])
        keys.append("rl:seq")
        return float(self._acquire(keys=keys, args=args))

    def wait_for_slot(self, key: str, limits: Limits, max_wait: float | None = None) -> float:
        """Block until a slot is taken; returns the total seconds waited. A single wait longer
        than ``max_wait`` raises :class:`WaitTooLong` instead (the caller defers the work)."""
        waited = 0.0
        while True:
            wait = self.try_take(key, limits)
            if wait <= 0:
                return waited
            if max_wait is not None and wait > max_wait:
                raise WaitTooLong(wait)
            self.sleep(wait)
            waited += wait

    # -- quotas per calendar period -------------------------------------------------------
    def take_quota(self, key: str, period: str, limit: int, keep_seconds: float) -> bool:
        """Count one request against a quota that resets with each ``period`` (e.g. a calendar day
        in the account's time zone); False, and nothing counted, when the quota is spent. One
        counter per period, kept ``keep_seconds``: memory does not grow with the quota."""
        counter = f"rl:{key}:quota:{period}"
        pipe = self.conn.pipeline(transaction=False)
        pipe.incr(counter)
        pipe.expire(counter, int(keep_seconds) + 1)
        used, _ = pipe.execute()
        if int(used) > limit:
            self.conn.decr(counter)
            return False
        return True

    def quota_used(self, key: str, period: str) -> int:
        raw = self.conn.get(f"rl:{key}:quota:{period}")
        return int(raw) if raw is not None else 0

    # -- concurrency -----------------------------------------------------------------------
    def try_lease(self, key: str, limit: int) -> str | None:
        lease = uuid.uuid4().hex
        keys = [f"rl:{key}:leases", f"rl:{key}"]
        ok = self._lease(keys=keys, args=[self.clock(), limit, self.lease_seconds, lease])
        return lease if int(ok) else None

    def release(self, key: str, lease: str) -> None:
        self.conn.zrem(f"rl:{key}:leases", lease)

    def in_flight(self, key: str) -> int:
        self.conn.zremrangebyscore(f"rl:{key}:leases", "-inf", self.clock())
        return int(self.conn.zcard(f"rl:{key}:leases"))

    @contextmanager
    def slot(self, key: str, limits: Limits, max_wait: float | None = None) -> Iterator[None]:
        """One request: a window slot, then (when limited) a concurrency lease held meanwhile."""
        self.wait_for_slot(key, limits, max_wait)
        if limits.concurrency is None:
            yield
            return
        lease = self.try_lease(key, limits.concurrency)
        while lease is None:
            self.sleep(self.lease_poll_seconds)
            lease = self.try_lease(key, limits.concurrency)
        try:
            yield
        finally:
            self.release(key, lease)

    # -- adaptation ------------------------------------------------------------------------
    def penalize(self, key: str, retry_after: float | None = None) -> float:
        """A 429: halve the allowed rate and block the key for ``retry_after`` seconds (at most
        ``max_block_seconds``; a value that is not a finite number blocks nothing)."""
        now = self.clock()
        wait = None if retry_after is None or not math.isfinite(retry_after) else max(0.0, retry_after)
        until = "" if wait is None else repr(now + min(wait, self.max_block_seconds))
        return float(self._adjust(keys=[f"rl:{key}"], args=["penalize", self.min_factor, until, now]))

    def reward(self, key: str) -> float:
        """A success: ramp the allowed rate back up (additive increase)."""
        return float(self._adjust(keys=[f"rl:{key}"], args=["reward", self.ramp, "", self.clock()]))

    def block_until(self, key: str, until: float) -> None:
        """No request on this key before ``until`` (epoch seconds), e.g. a daily quota reset; at
        most ``max_block_seconds`` from now, and nothing for an instant that is not a finite number."""
        if not math.isfinite(until):
            return
        now = self.clock()
        until = min(until, now + self.max_block_seconds)
        self._adjust(keys=[f"rl:{key}"], args=["reward", 0, repr(until), now])

    def factor(self, key: str) -> float:
        raw = self.conn.hget(f"rl:{key}", "factor")
        return float(raw) if raw is not None else 1.0

    def blocked_for(self, key: str) -> float:
        raw = self.conn.hget(f"rl:{key}", "blocked_until")
        until = float(raw) if raw is not None else 0.0
        return max(0.0, until - self.clock()) if math.isfinite(until) else 0.0
