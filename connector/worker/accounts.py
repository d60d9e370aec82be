"""The accounts a worker process serves, reloaded when a file of the config directory changes.

Loading is :class:`connector.runtime.AccountsProvider`'s: a file that becomes invalid (bad YAML, an
unknown rule operator, a missing secret, an account id another file has, ...) never stalls
processing, the last valid version of its account keeps serving. This module records each such
failure (file and reason) in Redis, for ``/readyz`` and the metrics, until the file loads again.

Keys (queue Redis):
  ``config:errors``   hash: file -> JSON ``{"file", "reason", "at"}``, one field per invalid file
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import redis

from connector import clock
from connector.config import Accounts
from connector.runtime import AccountsProvider, FileError

log = logging.getLogger(__name__)

CONFIG_ERRORS_KEY = "config:errors"


@dataclass(frozen=True)
class ConfigProblem:
    file: str
    reason: str
    at: str

    def as_dict(self) -> dict[str, str]:
        return {"file": self.file, "reason": self.reason, "at": self.at}


class AccountsCache:
    """One :class:`~connector.runtime.AccountsProvider` per config directory, looked at before each
    batch, whose file errors are published to ``config:errors`` whenever they change."""

    def __init__(self) -> None:
        self._providers: dict[Path, AccountsProvider] = {}
        self._published: dict[Path, int] = {}

    def provider(self, config_dir: Path) -> AccountsProvider:
        provider = self._providers.get(config_dir)
        if provider is None:
            provider = self._providers[config_dir] = AccountsProvider(config_dir, check_seconds=0)
        return provider

    def get(
        self, config_dir: Path, conn: Callable[[], redis.Redis] | None = None, now: datetime | None = None
    ) -> Accounts:
        provider = self.provider(config_dir)
        accounts = provider.current()
        if conn is None or self._published.get(config_dir) == provider.generation:
            return accounts
        if publish_errors(conn(), config_dir, provider.errors, now or clock.now()):
            self._published[config_dir] = provider.generation
        return accounts

    def forget(self) -> None:
        self._providers.clear()
        self._published.clear()


def publish_errors(conn: redis.Redis, config_dir: Path, errors: list[FileError], now: datetime) -> bool:
    """Make ``config:errors`` hold exactly ``errors`` for the files of ``config_dir``; False when
    Redis could not be written (tried again with the next batch)."""
    prefix = str(config_dir).rstrip("/") + "/"
    current = {error.file: error for error in errors}
    try:
        recorded = {f.decode() if isinstance(f, bytes) else str(f) for f in conn.hkeys(CONFIG_ERRORS_KEY)}
        pipe = conn.pipeline(transaction=False)
        for file in recorded:
            if file.startswith(prefix) and file not in current:
                pipe.hdel(CONFIG_ERRORS_KEY, file)
        for file, error in current.items():
            reason = ": ".join(part for part in (error.path, error.reason) if part)
            problem = ConfigProblem(file=file, reason=reason, at=clock.isoformat(now))
            pipe.hset(CONFIG_ERRORS_KEY, file, json.dumps(problem.as_dict()))
        pipe.execute()
    except redis.RedisError as failure:
        log.warning("could not record the config errors", extra={"error": type(failure).__name__})
        return False
    return True


def config_errors(conn: redis.Redis) -> list[ConfigProblem]:
    """The account files that are invalid now (the workers serve their last valid version), by
    file. What ``/readyz`` reports and the metric ``connector_config_errors{file}`` counts."""
    problems = []
    for raw in conn.hvals(CONFIG_ERRORS_KEY):
        data = json.loads(raw)
        problems.append(ConfigProblem(file=str(data["file"]), reason=str(data["reason"]), at=str(data["at"])))
    return sorted(problems, key=lambda p: p.file)


CACHE = AccountsCache()
