"""The due index: when each profile must be re-evaluated because time passes.

After every evaluation the profile's ``next_due`` is written to one sorted set (score = epoch
seconds, member = ``account \\x1f profile_id``). ZADD replaces the previous instant, so scheduling is
idempotent; it lives in Redis, so it survives restarts of every process. The scheduler takes the
entries that are due in batches, enqueues their re-evaluation and only then removes each entry
whose score did not change meanwhile: a crash between the two re-evaluates twice (harmless), never
zero times.

A re-evaluation job that fails puts its profiles back (:func:`restore`), due again
``RETRY_SECONDS`` later, and flags them in ``due:reconcile``: the job that re-evaluates them then
reconciles (the failed one may have recorded the ledger and stopped before the rest; see
:func:`connector.worker.evaluation.evaluate_profiles`) and clears the flags. Each failure marks
the flags it raises with a token of its own (``due:reconcile:n``), and a job clears a flag only
if it still holds the token the job read (:func:`flags`, :func:`unflag`): a job of the same
profile failing meanwhile leaves its flag for the next run.

Keys (queue Redis): ``due:index``, ``due:reconcile``, ``due:reconcile:n``.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime

import redis

from connector.buckets import text

DUE_KEY = "due:index"
RECONCILE_KEY = "due:reconcile"  # set of members whose last re-evaluation failed
RAISED_KEY = "due:reconcile:n"  # per flagged member: the token of the failure that raised it last
RETRY_SECONDS = 10.0  # a failed re-evaluation's profiles are due again this much later
SEP = "\x1f"

_REMOVE_IF_UNCHANGED = """
local removed = 0
for i = 1, #ARGV, 2 do
  local score = redis.call('ZSCORE', KEYS[1], ARGV[i])
  if score and tonumber(score) == tonumber(ARGV[i + 1]) then
    redis.call('ZREM', KEYS[1], ARGV[i])
    removed = removed + 1
  end
end
return removed
"""


# Clears the flags of members (ARGV: member, token seen, ...) that no failure raised since.
_UNFLAG_IF_UNCHANGED = """
for i = 1, #ARGV, 2 do
  if (redis.call('HGET', KEYS[2], ARGV[i]) or '') == ARGV[i + 1] then
    redis.call('SREM', KEYS[1], ARGV[i])
    redis.call('HDEL', KEYS[2], ARGV[i])
  end
end
return 0
"""


def member(account: str, profile_id: str) -> str:
    return f"{account}{SEP}{profile_id}"


def schedule(pipe: redis.Redis, account: str, profile_id: str, next_due: datetime | None) -> None:
    """Set (or clear) the instant at which this profile must be re-evaluated. Works on a pipeline."""
    if next_due is None:
        pipe.zrem(DUE_KEY, member(account, profile_id))
    else:
        pipe.zadd(DUE_KEY, {member(account, profile_id): next_due.timestamp()})


def schedule_many(pipe: redis.Redis, account: str, next_due: Mapping[str, datetime | None]) -> None:
    """:func:`schedule` for many profiles of one account: one ZADD and one ZREM at most."""
    later = {member(account, pid): at.timestamp() for pid, at in next_due.items() if at is not None}
    never = [member(account, pid) for pid, at in next_due.items() if at is None]
    if later:
        pipe.zadd(DUE_KEY, later)
    if never:
        pipe.zrem(DUE_KEY, *never)


def unschedule(conn: redis.Redis, account: str, profile_ids: Iterable[str]) -> None:
    """Gone (erased, merged away): out of the due index and of the reconcile flags."""
    members = [member(account, pid) for pid in profile_ids]
    if members:
        pipe = conn.pipeline(transaction=False)
        pipe.zrem(DUE_KEY, *members)
        pipe.srem(RECONCILE_KEY, *members)
        pipe.hdel(RAISED_KEY, *members)
        pipe.execute()


def restore(conn: redis.Redis, account: str, profile_ids: Iterable[str], at: datetime) -> None:
    """Profiles whose re-evaluation failed: due again at ``at`` (or earlier, if an evaluation
    scheduled them so meanwhile) and flagged for reconciling."""
    members = [member(account, pid) for pid in profile_ids]
    if members:
        pipe = conn.pipeline(transaction=True)  # a flag and its token together
        pipe.zadd(DUE_KEY, dict.fromkeys(members, at.timestamp()), lt=True)
        pipe.sadd(RECONCILE_KEY, *members)
        pipe.hset(RAISED_KEY, mapping=dict.fromkeys(members, uuid.uuid4().hex))
        pipe.execute()


def flags(conn: redis.Redis, account: str, profile_ids: Iterable[str]) -> dict[str, str]:
    """The profiles among ``profile_ids`` whose last re-evaluation failed, each with the token of
    the failure that raised its flag ("" for a flag raised before tokens; what :func:`unflag` is
    given back)."""
    pids = list(profile_ids)
    if not pids:
        return {}
    members = [member(account, pid) for pid in pids]
    pipe = conn.pipeline(transaction=True)
    pipe.smismember(RECONCILE_KEY, members)
    pipe.hmget(RAISED_KEY, members)
    hits, raised = pipe.execute()
    return {pid: text(t or b"") for pid, hit, t in zip(pids, hits, raised, strict=True) if hit}


def unflag(conn: redis.Redis, account: str, seen: Mapping[str, str]) -> None:
    """Clear the flags read by :func:`flags` (``seen``) after the re-evaluation that reconciled;
    a flag raised again since (another job of the profile failed meanwhile) stays."""
    if seen:
        args = [x for pid, token in seen.items() for x in (member(account, pid), token)]
        conn.eval(_UNFLAG_IF_UNCHANGED, 2, RECONCILE_KEY, RAISED_KEY, *args)


def due_at(conn: redis.Redis, account: str, profile_id: str) -> datetime | None:
    score = conn.zscore(DUE_KEY, member(account, profile_id))
    return None if score is None else datetime.fromtimestamp(float(score), UTC)


def earliest(conn: redis.Redis) -> float | None:
    first = conn.zrange(DUE_KEY, 0, 0, withscores=True)
    return float(first[0][1]) if first else None


def take_due(conn: redis.Redis, now: datetime, limit: int = 1000) -> list[tuple[str, str, float]]:
    """Entries due at or before ``now`` (not removed yet): (account, profile_id, score)."""
    rows = conn.zrangebyscore(DUE_KEY, "-inf", now.timestamp(), start=0, num=limit, withscores=True)
    out = []
    for raw, score in rows:
        account, _, profile_id = raw.decode().partition(SEP)
        out.append((account, profile_id, float(score)))
    return out


def group_by_account(entries: Iterable[tuple[str, str, float]]) -> dict[str, list[str]]:
    grouped: dict[str, list[str]] = defaultdict(list)
    for account, profile_id, _ in entries:
        grouped[account].append(profile_id)
    return dict(grouped)


def remove_taken(conn: redis.Redis, entries: list[tuple[str, str, float]]) -> int:
    if not entries:
        return 0
    args: list[str | float] = []
    for account, profile_id, score in entries:
        args.extend([member(account, profile_id), repr(score)])
    return int(conn.eval(_REMOVE_IF_UNCHANGED, 1, DUE_KEY, *args))


def pending(conn: redis.Redis) -> int:
    return int(conn.zcard(DUE_KEY))


LATENESS_KEY = "metrics:due_lateness"
LATENESS_SAMPLES = 100_000


def observe_lateness(conn: redis.Redis, seconds: list[float]) -> None:
    """Keep the latest lateness samples (fired - due, seconds) for /metrics and bench/scheduler."""
    pipe = conn.pipeline(transaction=False)
    pipe.lpush(LATENESS_KEY, *[f"{s:.6f}" for s in seconds])
    pipe.ltrim(LATENESS_KEY, 0, LATENESS_SAMPLES - 1)
    pipe.execute()


def lateness_samples(conn: redis.Redis) -> list[float]:
    return [float(v) for v in conn.lrange(LATENESS_KEY, 0, -1)]
