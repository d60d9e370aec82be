"""Many calls of a per-key Lua script in a few script calls; many reads in one round trip.

A script written for one call (its ``KEYS`` and ``ARGV``) runs here for many calls at once: the
calls are packed into one ``EVALSHA`` per group (every key of every call of a call group, then per
call its key and argument counts and its arguments), and the script runs its body once per call,
in order, answering the list of the bodies' replies. The client packs and parses one command per
group instead of one per call, and Redis dispatches one.

The keys of one call share a slot (a profile's hash tag); on Redis Cluster the calls are grouped by
hash tag as well (a script's keys must share a slot, and a slot being moved must not hold a group
back: :meth:`Batched._groups`), and the groups go to their nodes in one pipeline per node
(:func:`connector.redis_conn.grouped_by_node`). A group holds at most ``per_call`` calls,
which bounds how long one script holds the server.

Each call is applied as it would be alone (the body is the same); a group is not one transaction
beyond that: a body that raises ends its script after the calls before it were applied. With
``isolated``, a call that raises does not stop the others (each body runs under ``pcall``): every
call runs, as in a pipeline of single calls, and :meth:`Batched.run` then raises the first error.
Callers only use it for calls that are safe to run again.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis
from redis.exceptions import NoScriptError

from connector.redis_conn import cached_script, grouped_by_node, is_cluster, pipelined

PER_CALL = 100  # calls per script call: a few milliseconds of the server at most
FAILED = b"!failed"  # an isolated call that raised answers [FAILED, its error]
_CALL = "local reply = one(ks, as)"
# an isolated call: its error is its reply, and the calls after it run
_ISOLATED_CALL = """local ok, reply = pcall(one, ks, as)
  if not ok then
    reply = {'!failed', type(reply) == 'table' and reply.err or tostring(reply)}
  end"""

# ARGV[1]: the number of calls; then per call its key count, its argument count and its arguments.
# KEYS: every call's keys, in order.
_LOOP = """
local function one(KEYS, ARGV)
%s
end
local out, k, a = {}, 0, 2
for c = 1, tonumber(ARGV[1]) do
  local nk, na = tonumber(ARGV[a]), tonumber(ARGV[a + 1])
  local ks, as = {}, {}
  for j = 1, nk do ks[j] = KEYS[k + j] end
  for j = 1, na do as[j] = ARGV[a + 1 + j] end
  k, a = k + nk, a + 2 + na
  %s
  if reply == nil then reply = false end
  out[c] = reply
end
return out
"""


class Batched:
    """A script whose ``body`` (a script for one call; ``helpers`` are definitions it uses) runs
    for many calls in one script call per group."""

    def __init__(
        self, body: str, helpers: str = "", per_call: int = PER_CALL, isolated: bool = False
    ) -> None:
        self.source = helpers + _LOOP % (body, _ISOLATED_CALL if isolated else _CALL)
        self.per_call = per_call
        self.isolated = isolated

    def run(self, conn: redis.Redis, calls: Sequence[tuple[Sequence[str], Sequence[Any]]]) -> list[Any]:
        """The reply of each call ``(keys, args)``, in order: one script call per group of calls
        (per slot on a cluster), in one round trip per server."""
        if not calls:
            return []
        groups = self._groups(conn, calls)
        packed = [_pack([calls[n] for n in members]) for members in groups]
        script = cached_script(conn, self.source)
        if is_cluster(conn):
            answers = grouped_by_node(
                conn,
                [keys[0] for keys, _ in packed],
                lambda pipe, n: script(keys=packed[n][0], args=packed[n][1], client=pipe),
                lambda n: script(keys=packed[n][0], args=packed[n][1], client=conn),
            )
        else:
            answers = _one_server(conn, script, packed)
        replies: list[Any] = [None] * len(calls)
        for members, answer in zip(groups, answers, strict=True):
            for n, reply in zip(members, answer, strict=True):
                replies[n] = reply
        if self.isolated:
            _raise_failed(replies)
        return replies

    def _groups(self, conn: Any, calls: Sequence[tuple[Sequence[str], Sequence[Any]]]) -> list[list[int]]:
        """Indexes of the calls, grouped (by hash tag on a cluster) and cut at ``per_call``.

        On a cluster a group holds the calls of one hash tag only (one profile), not of one slot:
        while a slot moves key by key, a script naming the keys of two profiles of that slot, one
        moved and one not yet, would be refused (``TRYAGAIN``) until the whole slot had moved, where
        each profile's own call is sent on (``ASK``) or refused only while its own keys move."""
        if is_cluster(conn):
            by_tag: dict[str, list[int]] = {}
            for n, (keys, _) in enumerate(calls):
                by_tag.setdefault(_hash_tag(keys[0]), []).append(n)
            lists = list(by_tag.values())
        else:
            lists = [list(range(len(calls)))]
        size = self.per_call
        return [members[i : i + size] for members in lists for i in range(0, len(members), size)]


def _raise_failed(replies: Sequence[Any]) -> None:
    """After every call of an isolated script ran: the first failed call's error, with how many
    failed (the others were applied)."""
    failed = [r for r in replies if isinstance(r, list) and len(r) == 2 and r[0] in (FAILED, FAILED.decode())]
    if failed:
        error = failed[0][1]
        text = error.decode(errors="replace") if isinstance(error, bytes) else str(error)
        raise redis.ResponseError(f"{len(failed)} of {len(replies)} calls failed, the first: {text}")


def _hash_tag(key: str) -> str:
    """The part of ``key`` Redis Cluster hashes: the text of its first ``{...}`` when not empty."""
    start = key.find("{")
    if start >= 0:
        end = key.find("}", start + 1)
        if end > start + 1:
            return key[start + 1 : end]
    return key


def _pack(calls: Sequence[tuple[Sequence[str], Sequence[Any]]]) -> tuple[list[str], list[Any]]:
    keys: list[str] = []
    args: list[Any] = [len(calls)]
    for call_keys, call_args in calls:
        keys.extend(call_keys)
        args.append(len(call_keys))
        args.append(len(call_args))
        args.extend(call_args)
    return keys, args


def _one_server(conn: redis.Redis, script: Any, packed: Sequence[tuple[list[str], list[Any]]]) -> list[Any]:
    """The script calls in one pipeline by the script's digest; a server that does not hold the
    script yet (a restart, a flush) answers NOSCRIPT without running the call, which then runs
    again once the script is loaded."""
    commands = [("EVALSHA", script.sha, len(keys), *keys, *args) for keys, args in packed]
    answers = pipelined(conn, commands, attempts=1)
    for n, answer in enumerate(answers):
        if isinstance(answer, NoScriptError):
            answers[n] = script(keys=packed[n][0], args=packed[n][1], client=conn)
        elif isinstance(answer, Exception):
            raise answer
    return answers
