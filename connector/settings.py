"""Process-wide settings, read once from the environment."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from connector.errors import ConfigError
from connector.redis_conn import CLUSTER_SCHEMES

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


def _int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError as err:
        raise ConfigError(f"{name}={raw!r} is not an integer") from err


def _running_dev_redis() -> str | None:
    """The embedded Redis of a running ``connector dev`` in this directory, if any."""
    from connector.dev.devenv import running_redis_url

    return running_redis_url()


def _config_dir() -> Path:
    """``CONNECTOR_CONFIG_DIR``; else ``config/accounts``; else the sample account of ``connector dev``."""
    explicit = os.environ.get("CONNECTOR_CONFIG_DIR")
    if explicit:
        return Path(explicit)
    default = Path("config/accounts")
    from connector.dev.devenv import data_dir

    seeded = data_dir() / "accounts"
    return seeded if not default.is_dir() and seeded.is_dir() else default


@dataclass(frozen=True)
class Settings:
    queue_redis_url: str
    profile_redis_url: str
    config_dir: Path
    max_body_bytes: int
    event_shards: int
    public_url: str | None
    data_dir: Path

    @classmethod
    def from_env(cls) -> Settings:
        base = os.environ.get("REDIS_URL") or _running_dev_redis() or DEFAULT_REDIS_URL
        shards = _int("CONNECTOR_EVENT_SHARDS", 4)
        if shards < 1:
            raise ConfigError("CONNECTOR_EVENT_SHARDS must be at least 1")
        queue_url = os.environ.get("CONNECTOR_QUEUE_REDIS_URL") or base
        if queue_url.startswith(CLUSTER_SCHEMES):
            raise ConfigError(
                "the queues (RQ) do not run on Redis Cluster: give CONNECTOR_PROFILE_REDIS_URL the "
                "cluster and REDIS_URL or CONNECTOR_QUEUE_REDIS_URL a plain Redis"
            )
        return cls(
            queue_redis_url=queue_url,
            profile_redis_url=os.environ.get("CONNECTOR_PROFILE_REDIS_URL") or base,
            config_dir=_config_dir(),
            max_body_bytes=_int("CONNECTOR_MAX_BODY_BYTES", 1024 * 1024),
            event_shards=shards,
            public_url=(os.environ.get("CONNECTOR_PUBLIC_URL") or None),
            data_dir=Path(os.environ.get("CONNECTOR_DATA_DIR", ".connector")),
        )
