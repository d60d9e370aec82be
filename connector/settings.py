"""Process-wide settings, read once from the environment."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from connector import clock
from connector.dev import devenv
from connector.errors import ConfigError
from connector.redis_conn import CLUSTER_SCHEMES
from connector.sync import deadletters

DEFAULT_CONFIG_DIR = Path("config/accounts")


def _int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError as err:
        raise ConfigError(f"{name}={raw!r} is not an integer") from err


MAX_BODY_BYTES_MIN = 1024  # 1 KiB: below it, ordinary webhooks (a Shopify order: several KiB) do not fit
MAX_BODY_BYTES_MAX = 1024**3  # 1 GiB: a body is held in memory whole; far beyond it zlib refuses the limit


def _max_body_bytes() -> int:
    """``CONNECTOR_MAX_BODY_BYTES``: 0 or a negative number would answer every body 413 while
    ``/readyz`` says ready; one past 64 bits would fail every gzipped tracking call with a 500."""
    value = _int("CONNECTOR_MAX_BODY_BYTES", 1024 * 1024)
    if not MAX_BODY_BYTES_MIN <= value <= MAX_BODY_BYTES_MAX:
        raise ConfigError(
            f"CONNECTOR_MAX_BODY_BYTES must be at least {MAX_BODY_BYTES_MIN} (1 KiB) and at most "
            f"{MAX_BODY_BYTES_MAX} (1 GiB), got {value} (the default is 1048576, 1 MiB)"
        )
    return value


def _public_url() -> str | None:
    """``CONNECTOR_PUBLIC_URL``: the base that the request's path (and query) is appended to for the
    URL HubSpot and Mandrill sign, so an absolute http(s) URL with a host, optionally a path; a
    value that is not one would make every signature check fail."""
    raw = os.environ.get("CONNECTOR_PUBLIC_URL")
    if raw is None or raw == "":
        return None
    problem = _public_url_problem(raw)
    if problem is not None:
        shown = raw if len(raw) <= 200 else raw[:200] + "..."
        if "@" in shown:  # a user and password have no place in it and are not shown
            shown = "..." + shown[shown.rindex("@") :]
        raise ConfigError(
            f"CONNECTOR_PUBLIC_URL={shown!r} {problem} "
            "(https://hooks.example.com, optionally with a path: https://example.com/connector)"
        )
    return raw


def _public_url_problem(raw: str) -> str | None:
    if any(c.isspace() or not c.isprintable() for c in raw):
        return "must not contain spaces or control characters"
    try:
        parts = urlsplit(raw)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number in 0-65535
    except ValueError as err:
        return f"is not a valid URL ({err})"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "is not an absolute http:// or https:// URL with a host"
    if parts.query or parts.fragment or raw.endswith(("?", "#")):
        return "must not have a query or fragment: the request's path is appended to it"
    return None


METRICS_TOKEN_MIN = 16


def _metrics_token() -> str | None:
    """``CONNECTOR_METRICS_TOKEN``: unset, ``/metrics`` answers anyone (keep it internal); set, only a
    scraper that sends it as a bearer token. Its value is never shown."""
    token = os.environ.get("CONNECTOR_METRICS_TOKEN")
    if token is None or token == "":
        return None
    if len(token) < METRICS_TOKEN_MIN or not token.isascii() or not token.isprintable() or " " in token:
        raise ConfigError(
            f"CONNECTOR_METRICS_TOKEN must be at least {METRICS_TOKEN_MIN} printable ASCII characters "
            "without spaces (e.g. from `openssl rand -hex 24`)"
        )
    return token


def _check_redis_url(url: str, source: str) -> None:
    """A Redis URL redis-py would take, with a numbered database: a path such as ``/abc`` would
    otherwise silently mean database 0, and a URL without a scheme fail later with a traceback."""
    parts = urlsplit(url)
    shown = redact(url)
    schemes = ("redis", "rediss", "unix", *(s.removesuffix("://") for s in CLUSTER_SCHEMES))
    if parts.scheme not in schemes:
        raise ConfigError(
            f"{source}: {shown!r} is not a Redis URL: it starts with one of "
            + ", ".join(f"{s}://" for s in schemes)
            + " (redis://127.0.0.1:6379/0)"
        )
    database = parts.path.strip("/")
    if parts.scheme != "unix" and database and not database.isdigit():
        raise ConfigError(f"{source}: {shown!r}: the database must be a number (redis://host:6379/0)")


def redact(url: str) -> str:
    """A Redis URL without its password (for start-up lines and errors)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = f"{parts.username}:" if parts.username else ":"
    return urlunsplit((parts.scheme, f"{user}***@{netloc}", parts.path, parts.query, parts.fragment))


# set by ``connector dev`` for its processes when it seeded the sample account's directory itself
SEEDED_CONFIG_ENV = "CONNECTOR_DEV_SEEDED_CONFIG_DIR"
EMBEDDED_REDIS_ENV = "CONNECTOR_DEV_EMBEDDED_REDIS_URL"  # the Redis `connector dev` started itself


def config_source() -> tuple[Path, str]:
    """The config directory and where it comes from: ``CONNECTOR_CONFIG_DIR``; else the running
    ``connector dev``'s (so creating ``config/accounts`` never switches a command away from the
    accounts ``scripts/dev`` runs); else ``config/accounts``."""
    explicit = os.environ.get("CONNECTOR_CONFIG_DIR")
    if explicit:
        if explicit == os.environ.get(SEEDED_CONFIG_ENV):
            seeded = "the sample account `connector dev` seeded; CONNECTOR_CONFIG_DIR was not set"
            return Path(explicit), seeded
        return Path(explicit), "CONNECTOR_CONFIG_DIR"
    dev = devenv.running_dev()
    if dev is not None:
        return dev.config_dir, f"the running connector dev ({dev.state_file})"
    return DEFAULT_CONFIG_DIR, "default (CONNECTOR_CONFIG_DIR unset, no connector dev running)"


def redis_source() -> tuple[str, str]:
    """The Redis URL and where it comes from: ``REDIS_URL``; else the running ``connector dev``'s.
    Neither: a ConfigError naming REDIS_URL (no silent guess at a local Redis)."""
    explicit = os.environ.get("REDIS_URL")
    if explicit:
        if explicit == os.environ.get(EMBEDDED_REDIS_ENV):
            return explicit, "the embedded Redis `connector dev` started; REDIS_URL was not set"
        return explicit, "REDIS_URL"
    dev = devenv.running_dev()
    if dev is not None:
        return dev.redis_url, f"the running connector dev ({dev.state_file})"
    raise ConfigError(
        "no Redis: REDIS_URL is not set and no `connector dev` is running from the data directory "
        f"{devenv.data_dir().resolve()} (set REDIS_URL, e.g. redis://127.0.0.1:6379/0, or start "
        "scripts/dev; CONNECTOR_DATA_DIR names the data directory of a `connector dev` run elsewhere)"
    )


@dataclass(frozen=True)
class Settings:
    queue_redis_url: str
    profile_redis_url: str
    config_dir: Path
    max_body_bytes: int
    event_shards: int
    public_url: str | None
    data_dir: Path
    config_from: str = ""
    redis_from: str = ""
    live_shown_per_second: int = 20  # 0: every stored delivery on the live stream (connector.ops.live)
    drain_lanes: int = 2  # threads a drain applies its shard's batches on (connector.worker.jobs)
    metrics_token: str | None = field(default=None, repr=False)  # /metrics asks for it as a bearer token

    def describe(self) -> str:
        """Which config directory and which Redis this process uses, and why (passwords hidden)."""
        redis = redact(self.queue_redis_url)
        if self.profile_redis_url != self.queue_redis_url:
            redis = f"queues {redis}, profiles {redact(self.profile_redis_url)}"
        return (
            f"config {self.config_dir.resolve()} (from {self.config_from}); "
            f"redis {redis} (from {self.redis_from})"
        )

    @classmethod
    def from_env(cls) -> Settings:
        queue_env = os.environ.get("CONNECTOR_QUEUE_REDIS_URL")
        profile_env = os.environ.get("CONNECTOR_PROFILE_REDIS_URL")
        if queue_env and profile_env:
            base, redis_from = queue_env, "CONNECTOR_QUEUE_REDIS_URL and CONNECTOR_PROFILE_REDIS_URL"
        else:
            base, redis_from = redis_source()
        config_dir, config_from = config_source()
        shards = _int("CONNECTOR_EVENT_SHARDS", 4)
        if shards < 1:
            raise ConfigError("CONNECTOR_EVENT_SHARDS must be at least 1")
        lanes = _int("CONNECTOR_DRAIN_LANES", 2)
        if lanes < 1:
            raise ConfigError("CONNECTOR_DRAIN_LANES must be at least 1")
        shown = _int("CONNECTOR_LIVE_SHOWN_PER_SECOND", 20)
        if shown < 0:
            raise ConfigError("CONNECTOR_LIVE_SHOWN_PER_SECOND must be 0 (every delivery) or more")
        deadletters.max_items()  # checked at start: a bad value would fail /metrics and the sync later
        clock.offset_seconds()  # likewise: a bad value would fail every clock read later
        queue_url = queue_env or base
        _check_redis_url(queue_url, "CONNECTOR_QUEUE_REDIS_URL" if queue_env else redis_from)
        _check_redis_url(profile_env or base, "CONNECTOR_PROFILE_REDIS_URL" if profile_env else redis_from)
        if queue_url.startswith(CLUSTER_SCHEMES):
            raise ConfigError(
                "the queues (RQ) do not run on Redis Cluster: give CONNECTOR_PROFILE_REDIS_URL the "
                "cluster and REDIS_URL or CONNECTOR_QUEUE_REDIS_URL a plain Redis"
            )
        return cls(
            queue_redis_url=queue_url,
            profile_redis_url=profile_env or base,
            config_dir=config_dir,
            max_body_bytes=_max_body_bytes(),
            event_shards=shards,
            public_url=_public_url(),
            data_dir=devenv.data_dir(),
            config_from=config_from,
            redis_from=redis_from,
            live_shown_per_second=shown,
            drain_lanes=lanes,
            metrics_token=_metrics_token(),
        )
