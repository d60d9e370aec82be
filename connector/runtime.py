"""The runtime: what a process needs, built once from its settings at the entry point.

``connector web`` (the app factory), ``connector worker``, ``connector scheduler`` and the CLI each
build one :class:`Runtime` from :class:`~connector.settings.Settings` and hand it down: the Redis
connections, the one accounts provider (one cache and one reload rule for every process), and the
adapters of each destination. Nothing below an entry point reads the environment or opens its own
connection. RQ jobs are entry points of a kind: the worker process installs its runtime before it
serves jobs and :func:`current` returns it.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import redis

from adapters.base import Adapter
from adapters.ratelimit import RateLimiter
from connector import clock, redis_conn, rules_store
from connector.config import Account, Accounts, load_account_file
from connector.destinations import Destination, build_adapter
from connector.errors import ConfigError, file_name_shown
from connector.ops import audit
from connector.settings import Settings
from rules import RuleSet

log = logging.getLogger(__name__)

RELOAD_CHECK_SECONDS = 1.0
# hash: the file's server path -> JSON {"file": its name, "reason", "at"}, one per invalid file; the
# field keeps the path, so that a process replaces the entries of its own config directory only
CONFIG_ERRORS_KEY = "config:errors"
# A process serving a config directory with invalid files records them again this often; an entry
# nobody recorded for CONFIG_ERRORS_STALE (its directory no longer served by any process, such as
# an old deploy's) is no longer reported, and is removed.
CONFIG_ERRORS_REFRESH = timedelta(seconds=60)
CONFIG_ERRORS_STALE = timedelta(minutes=15)


@dataclass(frozen=True)
class FileError:
    """An account file that failed to load: the last valid version of its account keeps serving."""

    file: str
    reason: str
    path: str | None = None


def _signature(config_dir: Path) -> tuple[tuple[str, int, int], ...]:
    if not config_dir.is_dir():
        return ()
    return tuple(
        sorted(
            (p.name, p.stat().st_mtime_ns, p.stat().st_size)
            for p in config_dir.iterdir()
            if p.suffix in (".yaml", ".yml") and p.is_file()
        )
    )


@dataclass(frozen=True)
class RulesInForce:
    """Where an account's rules come from now: its file, or a version published through the API."""

    source: str  # "file" or "api"
    file_digest: str
    version: int | None = None  # the API version in force
    superseded_version: int | None = None  # an API version the file's changed rules replaced
    problem: str | None = None  # why the pointed API version is not in force (other than superseded)


class RulesOverlay:
    """Rules published through the admin API (:mod:`connector.rules_store`), laid over the
    accounts loaded from their files.

    One ``MGET`` of the accounts' pointers per check; a version is read and compiled once per
    process. The pointed version is in force while the file's ``rules:`` section is the one it was
    based on; once the file's rules change, the pointer is marked superseded (for every process) and
    the file's rules are in force again. Redis out of reach keeps the last state.
    """

    def __init__(self, conn: redis.Redis, *, now: Callable[[], datetime] = clock.now) -> None:
        self._conn = conn
        self._now = now
        self._raw: dict[str, bytes | None] = {}
        # per (account, version, digest of the account's destinations): a version is checked against
        # the destinations it would serve with (variants, holdouts), so a changed mapping checks it anew
        self._compiled: dict[tuple[str, int, str], tuple[dict, RuleSet] | str] = {}
        self.states: dict[str, RulesInForce] = {}
        self._failing = False

    def check(self, accounts: Accounts) -> bool:
        """Look at the pointers; True when what is in force changed for some account."""
        try:
            raw = rules_store.pointers(self._conn, (a.id for a in accounts))
            states = {a.id: self._state(a, raw.get(a.id)) for a in accounts}
        except redis.RedisError as failure:
            if not self._failing:
                log.warning(
                    "could not read the API rule versions; the rules in force stay",
                    extra={"error": type(failure).__name__},
                )
            self._failing = True
            return False
        self._failing = False
        changed = states != self.states
        for account_id, state in states.items():
            if state != self.states.get(account_id):
                _log_state(account_id, state)
        self.states = states
        return changed

    def _state(self, account: Account, raw: bytes | None) -> RulesInForce:
        file_digest = rules_store.digest(account.rules)
        pointer = rules_store.Pointer.parse(raw)
        if pointer is None:
            return RulesInForce("file", file_digest)
        if pointer.superseded is None and pointer.based_on != file_digest and raw is not None:
            pointer, marked = rules_store.mark_superseded(
                self._conn, account.id, raw, file_digest, self._now()
            )
            if marked:
                self._record_superseded(account, pointer)
        if pointer.superseded is not None:
            return RulesInForce("file", file_digest, superseded_version=pointer.version)
        compiled = self._compile(account, pointer.version)
        if isinstance(compiled, str):
            return RulesInForce("file", file_digest, problem=compiled)
        return RulesInForce("api", file_digest, version=pointer.version)

    def _record_superseded(self, account: Account, pointer: rules_store.Pointer) -> None:
        """The one process that marked the pointer says so: a warning in its log and an entry in
        the audit log (who: the account file), as a publish through the API leaves one."""
        file_name = file_name_shown(account.file)
        log.warning(
            "the account file's rules changed: they are in force, API rules version superseded",
            extra={"account": account.id, "superseded_version": pointer.version, "file": file_name},
        )
        audit.record(
            self._conn,
            f"file:{file_name}",
            "rules.superseded",
            f"rules:{account.id}",
            [account.id],
            {"source": "api", "version": pointer.version},
            {"source": "file", "rules_digest": (pointer.superseded or {}).get("file_digest")},
            self._now(),
        )

    def _compile(self, account: Account, number: int) -> tuple[dict, RuleSet] | str:
        key = (account.id, number, rules_store.digest(account.destinations))
        if key not in self._compiled:
            version = rules_store.get(self._conn, account.id, number)
            if version is None:
                self._compiled[key] = f"API rules version {number} is not stored"
            else:
                try:
                    self._compiled[key] = (version.rules, rules_store.compile_for(account, version.rules))
                except rules_store.InvalidRules as err:
                    self._compiled[key] = f"API rules version {number} does not compile here: {err}"
        return self._compiled[key]

    def apply(self, account: Account) -> Account:
        state = self.states.get(account.id)
        if state is None or state.version is None:
            return account
        compiled = self._compiled.get((account.id, state.version, rules_store.digest(account.destinations)))
        if not isinstance(compiled, tuple):
            return account
        raw, ruleset = compiled
        return replace(account, rules=raw, ruleset=ruleset)


def _log_state(account_id: str, state: RulesInForce) -> None:
    extra = {"account": account_id, "version": state.version, "superseded_version": state.superseded_version}
    if state.superseded_version is not None:  # the warning is the marking process's (_record_superseded)
        log.info("the account file's rules are in force; API rules version superseded", extra=extra)
    elif state.problem is not None:
        log.error(
            "API rules version not in force; the file's rules are", extra={**extra, "reason": state.problem}
        )
    elif state.source == "api":
        log.info("API rules version in force", extra=extra)


class AccountsProvider:
    """The accounts of one config directory, re-read when one of its files changes.

    The directory is looked at no more than once per ``check_seconds`` (a ``stat`` of each file).
    A file that fails to load keeps its last valid version serving, and the failure (file, path,
    reason) is reported by :attr:`errors` until the file loads again; a file that never loaded
    serves nothing. So a broken edit never stalls the events of any account.

    With an ``overlay`` (:class:`RulesOverlay`), rules published through the admin API replace the
    file's rules of their account, looked at on the same check.
    """

    def __init__(
        self,
        config_dir: Path,
        env: Mapping[str, str] | None = None,
        *,
        check_seconds: float = RELOAD_CHECK_SECONDS,
        monotonic: Callable[[], float] = clock.monotonic,
        overlay: RulesOverlay | None = None,
    ) -> None:
        self.config_dir = config_dir
        self.overlay = overlay
        self._served = Accounts([])
        self._env = env
        self._check_seconds = check_seconds
        self._monotonic = monotonic
        self._checked_at: float | None = None
        self._signature: tuple[tuple[str, int, int], ...] | None = None
        self._by_file: dict[str, Account] = {}
        self._errors: dict[str, FileError] = {}
        self._accounts = Accounts([])
        self.generation = 0
        self._lock = threading.RLock()  # refresh: one thread looks at the directory at a time

    @property
    def errors(self) -> list[FileError]:
        self.refresh()
        return sorted(self._errors.values(), key=lambda e: e.file)

    def current(self) -> Accounts:
        self.refresh()
        return self._served

    def rules_in_force(self, account_id: str) -> RulesInForce | None:
        """Where the account's rules come from now (None without an overlay or account)."""
        self.refresh()
        return self.overlay.states.get(account_id) if self.overlay is not None else None

    def refresh_rules(self, *, force: bool = False) -> None:
        """Look at the API rule versions now (a re-evaluation after a publish does, before it starts);
        ``force``: the account files too, whenever they were last looked at."""
        self.refresh(force=force)
        with self._lock:
            self._overlay_check()

    def get(self, account_id: str) -> Account | None:
        return self.current().get(account_id)

    def __iter__(self) -> Iterator[Account]:
        return iter(self.current())

    def refresh(self, *, force: bool = False) -> None:
        """Look at the directory if ``check_seconds`` passed since the last look. One thread looks at
        a time, and the instant of the look is recorded once it is done: a thread that comes while
        another loads waits for what it loads (the first load included) instead of being answered
        the accounts from before it, or none."""
        if not force and self._fresh():
            return
        with self._lock:
            if not force and self._fresh():
                return  # another thread looked meanwhile
            signature = _signature(self.config_dir)
            if signature != self._signature or force:
                self._signature = signature
                try:
                    self._reload()
                except BaseException:
                    self._signature = None  # the next look loads the directory again
                    raise
                self._served = self._accounts
            self._overlay_check()
            self._checked_at = self._monotonic()

    def _fresh(self) -> bool:
        checked = self._checked_at
        return checked is not None and self._monotonic() - checked < self._check_seconds

    def _overlay_check(self) -> None:
        if self.overlay is not None and (
            self.overlay.check(self._accounts) or self._served is self._accounts
        ):
            self._served = Accounts([self.overlay.apply(a) for a in self._accounts])

    def _reload(self) -> None:
        env = os.environ if self._env is None else self._env
        present = {str(self.config_dir / name) for name, _, _ in self._signature or ()}
        by_file = {f: a for f, a in self._by_file.items() if f in present}
        errors: dict[str, FileError] = {}
        for file in sorted(present):
            try:
                by_file[file] = load_account_file(Path(file), env)
            except ConfigError as err:
                errors[file] = FileError(file=file, reason=err.reason, path=err.path)
                log.error(
                    "account file refused; its last valid version keeps serving",
                    extra={"file": file, "path": err.path, "reason": err.reason},
                )
            except Exception as err:  # one file's failure must not stop the others
                # a failure the loader does not name (a bug, or a file it did not expect): the file
                # is reported like a refused one, with the trace in the log, and never raised into
                # the request, batch or scheduler tick that happened to look at the directory
                reason = f"could not be loaded ({type(err).__name__}); the log has the details"
                errors[file] = FileError(file=file, reason=reason, path=None)
                log.exception("account file could not be loaded", extra={"file": file})
        accounts = self._combine(by_file, errors, {a.file for a in self._accounts})
        self._by_file, self._errors, self._accounts = by_file, errors, accounts
        self.generation += 1

    @staticmethod
    def _combine(by_file: dict[str, Account], errors: dict[str, FileError], serving: set[str]) -> Accounts:
        """All accounts; a file whose account clashes with another file's is refused, the others
        serve. Of two clashing files the one ``serving`` already wins (a copied file never takes
        an account's traffic); each keeps its last valid version in ``by_file`` all the same, so
        a refused file that serves again later, or an account whose file breaks after a clash,
        still has it."""
        candidates = dict(by_file)
        while True:
            try:
                return Accounts(list(candidates.values()), serving)
            except ConfigError as err:
                file = err.file or ""
                errors[file] = FileError(file=file, reason=err.reason, path=err.path)
                if candidates.pop(file, None) is None:
                    raise


@dataclass
class Runtime:
    """One per process: settings, connections, the accounts provider, the destinations' adapters."""

    settings: Settings
    queue_redis: redis.Redis
    profile_redis: redis.Redis
    provider: AccountsProvider
    _adapters: dict[str, Adapter] = field(default_factory=dict)
    _published: int = -1
    _published_at: datetime | None = None

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        env: Mapping[str, str] | None = None,
        *,
        check_seconds: float = RELOAD_CHECK_SECONDS,
    ) -> Runtime:
        queue_redis = redis_conn.connection(settings.queue_redis_url)
        return cls(
            settings=settings,
            queue_redis=queue_redis,
            profile_redis=redis_conn.connection(settings.profile_redis_url),
            provider=AccountsProvider(
                settings.config_dir, env, check_seconds=check_seconds, overlay=RulesOverlay(queue_redis)
            ),
        )

    @property
    def accounts(self) -> Accounts:
        """The accounts now (reloaded when a file changed); file errors are published to Redis
        (``config:errors``) whenever they change, for ``/readyz`` and the metrics."""
        accounts = self.provider.current()
        now = clock.now()
        due = self.provider.errors and (
            self._published_at is None or now - self._published_at >= CONFIG_ERRORS_REFRESH
        )
        if (self._published != self.provider.generation or due) and publish_errors(
            self.queue_redis, self.provider.config_dir, self.provider.errors, now
        ):
            self._published, self._published_at = self.provider.generation, now
        return accounts

    def account(self, account_id: str) -> Account | None:
        return self.accounts.get(account_id)

    def record_config_errors(self) -> None:
        """Look at the files and record this directory's invalid ones afresh (``/readyz`` and
        ``/metrics`` call it before reading ``config:errors``)."""
        self.accounts  # noqa: B018 (the property records them)

    def rules_superseded(self) -> list[dict[str, object]]:
        """Accounts whose API rules version the file's changed rules replaced (``/readyz``)."""
        self.provider.refresh()
        states = self.provider.overlay.states if self.provider.overlay is not None else {}
        return [
            {"account": account_id, "version": state.superseded_version}
            for account_id, state in sorted(states.items())
            if state.superseded_version is not None
        ]

    def adapter(self, destination: Destination) -> Adapter:
        """The destination's adapter, built once per configuration (a changed file builds a new one);
        it shares the Redis rate limiter with every other process."""
        fingerprint = json.dumps(
            [
                destination.account,
                destination.name,
                destination.type,
                destination.api_key_env,
                dict(destination.options),
            ],
            default=str,
        )
        adapter = self._adapters.get(fingerprint)
        if adapter is None:
            now = lambda: clock.now().timestamp()  # noqa: E731
            limiter = RateLimiter(self.queue_redis, clock=now, sleep=time.sleep)
            adapter = self._adapters[fingerprint] = build_adapter(
                destination, limiter, clock=now, sleep=time.sleep
            )
        return adapter


_current: Runtime | None = None
_factory: Callable[[], Runtime] | None = None


def install(runtime: Runtime) -> Runtime:
    """Make ``runtime`` the process's runtime (entry points and test fixtures call this)."""
    global _current
    _current = runtime
    return runtime


def current() -> Runtime:
    """The process's runtime; an entry point that did not build one is a programming error."""
    if _current is None and _factory is not None:
        install(_factory())
    if _current is None:
        raise RuntimeError("no runtime installed: the process entry point builds one (runtime.install)")
    return _current


def install_lazily(factory: Callable[[], Runtime]) -> None:
    """Build the runtime on first use (test fixtures, whose environment is set per test)."""
    global _factory
    _factory = factory


def uninstall() -> None:
    global _current, _factory
    _current = None
    _factory = None


@dataclass(frozen=True)
class ConfigProblem:
    file: str
    reason: str
    at: str

    def as_dict(self) -> dict[str, str]:
        return {"file": self.file, "reason": self.reason, "at": self.at}


def shown_path(path: str) -> str:
    """A file name as text that can be stored and shown: bytes of the name that are not UTF-8 (kept
    by Python as lone surrogates) written as ``\\xe9``."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def publish_errors(conn: redis.Redis, config_dir: Path, errors: list[FileError], now: datetime) -> bool:
    """Make ``config:errors`` hold exactly ``errors`` for the files of ``config_dir``; False when
    Redis could not be written (tried again with the next batch). Entries are keyed by the file's
    path, so that config directories sharing one Redis never remove each other's; each holds the
    file's name only, which is what is shown, since when its reason holds (``at``) and when it was
    last recorded (``seen``: see :data:`CONFIG_ERRORS_STALE`)."""
    prefix = shown_path(str(config_dir)).rstrip("/") + "/"
    current = {shown_path(error.file): error for error in errors}
    try:
        recorded = {_text(f): _text(v) for f, v in conn.hgetall(CONFIG_ERRORS_KEY).items()}
        pipe = conn.pipeline(transaction=False)
        for file in recorded:
            if file.startswith(prefix) and file not in current:
                pipe.hdel(CONFIG_ERRORS_KEY, file)
        for file, error in current.items():
            reason = ": ".join(part for part in (error.path, error.reason) if part)
            at = _since(recorded.get(file), reason) or clock.isoformat(now)
            problem = ConfigProblem(file=file_name_shown(file), reason=reason, at=at)
            pipe.hset(
                CONFIG_ERRORS_KEY, file, json.dumps({**problem.as_dict(), "seen": clock.isoformat(now)})
            )
        pipe.execute()
    except redis.RedisError as failure:
        log.warning("could not record the config errors", extra={"error": type(failure).__name__})
        return False
    return True


# KEYS: the hash. ARGV: field, value as read, ... Removes each field still holding that value.
_DROP_UNCHANGED = """
for i = 1, #ARGV, 2 do
  if redis.call('HGET', KEYS[1], ARGV[i]) == ARGV[i + 1] then redis.call('HDEL', KEYS[1], ARGV[i]) end
end
return 0
"""


def _seen(data: dict) -> datetime:
    """When an entry was last recorded; an entry without ``seen`` (an earlier version's, recorded
    again at once by a process that still serves its directory) counts as never."""
    try:
        return clock.from_isoformat(str(data["seen"]))
    except (KeyError, ValueError):
        return datetime.min.replace(tzinfo=UTC)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _since(raw: str | None, reason: str) -> str | None:
    """When a recorded entry's reason began, if it is still ``reason``."""
    try:
        data = json.loads(raw) if raw else None
    except ValueError:
        return None
    return (
        str(data["at"]) if isinstance(data, dict) and data.get("reason") == reason and "at" in data else None
    )


def config_errors(conn: redis.Redis, now: datetime | None = None) -> list[ConfigProblem]:
    """The account files that are invalid now (the workers serve their last valid version), named
    as in their config directory (``initech.yaml``). What ``/readyz`` reports and the metric
    ``connector_config_errors{file}`` counts."""
    problems, stale = [], []
    oldest = (now or clock.now()) - CONFIG_ERRORS_STALE
    for key, raw in conn.hgetall(CONFIG_ERRORS_KEY).items():
        data = json.loads(raw)
        if _seen(data) < oldest:  # no process serves its directory now
            stale += [key, raw]
            continue
        # an entry an earlier version recorded holds the server's path: shown by its name too
        file = file_name_shown(str(data["file"]))
        problems.append(ConfigProblem(file=file, reason=str(data["reason"]), at=str(data["at"])))
    if stale:  # only as read: an entry a process recorded again meanwhile stays
        conn.eval(_DROP_UNCHANGED, 1, CONFIG_ERRORS_KEY, *stale)
    return sorted(problems, key=lambda p: (p.file, p.reason, p.at))
