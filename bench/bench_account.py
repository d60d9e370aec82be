"""The benchmark account (bench/accounts/bench.yaml) and the sandbox ESPs it is pointed at.

``write_account`` copies the account file into a config directory with each destination's
``base_url`` set to a running fake and each ``lists:`` entry (a list name in the file) replaced by the
id the fake gave that list. The stripped modes of the benches drop parts of it: ``rules`` (no
``rules:`` section) and ``destinations`` (no ``destinations:`` section).

Also: Redis helpers shared by the benches (sync settled, per key family memory, commands per event).
"""

from __future__ import annotations

import copy
import re
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import redis
import yaml

BENCH = Path(__file__).resolve().parent
ACCOUNT_FILE = BENCH / "accounts" / "bench.yaml"
ACCOUNT = "bench"
ESPS = ("mailchimp", "hubspot", "klaviyo")
SEGMENT_SECRET = "bench-segment-secret-0123456789abcdef"


def account_data() -> dict[str, Any]:
    data = yaml.safe_load(ACCOUNT_FILE.read_text())
    assert isinstance(data, dict)
    return data


def list_names(data: Mapping[str, Any] | None = None) -> list[str]:
    """Every list name the account's destinations use (the bench creates them in the fakes)."""
    data = data or account_data()
    names: set[str] = set()
    for dest in (data.get("destinations") or {}).values():
        for mapping in (dest.get("segments") or {}).values():
            names.update(mapping.get("lists") or [])
    return sorted(names)


def write_account(
    config_dir: Path,
    base_urls: Mapping[str, str] | None,
    list_ids: Mapping[str, Mapping[str, str]] | None,
    strip: Iterable[str] = (),
) -> Path:
    """Write the bench account into ``config_dir`` (``strip``: "rules", "destinations")."""
    data = copy.deepcopy(account_data())
    stripped = set(strip)
    if "rules" in stripped:
        data.pop("rules", None)
    if "destinations" in stripped or base_urls is None:
        data.pop("destinations", None)
    for name, dest in (data.get("destinations") or {}).items():
        dest["base_url"] = base_urls[name] if base_urls else dest["base_url"]
        for mapping in (dest.get("segments") or {}).values():
            if mapping.get("lists"):
                mapping["lists"] = [(list_ids or {})[n][name] for n in mapping["lists"]]
    config_dir.mkdir(parents=True, exist_ok=True)
    path = config_dir / f"{ACCOUNT}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def environment() -> dict[str, str]:
    """The secrets the account file names (the sandbox fakes' credentials, not secrets)."""
    from connector.dev.sandbox.process import ENV

    return {**ENV, "BENCH_SEGMENT_SECRET": SEGMENT_SECRET}


# -- Redis measures -------------------------------------------------------------------------------


def sync_backlog(conn: redis.Redis, account: str = ACCOUNT) -> int:
    """Changes still waiting for an ESP (pending hashes) plus queued RQ sync jobs."""
    waiting = 0
    for esp in ESPS:
        waiting += int(conn.hlen(f"sync:{account}:{esp}:pending"))
    return waiting + int(conn.llen("rq:queue:sync"))


def wait_sync_settled(conn: redis.Redis, timeout: float, quiet: float = 2.0) -> float:
    """Wait until nothing is waiting for an ESP for ``quiet`` seconds; the seconds it took."""
    t0 = time.monotonic()
    empty_since: float | None = None
    while time.monotonic() - t0 < timeout:
        if sync_backlog(conn) == 0 and not conn.exists("rq:wip:sync"):
            empty_since = empty_since or time.monotonic()
            if time.monotonic() - empty_since >= quiet:
                return time.monotonic() - t0
        else:
            empty_since = None
        time.sleep(0.2)
    raise TimeoutError(f"sync still has {sync_backlog(conn)} changes waiting after {timeout:.0f}s")


_ID = re.compile(r"(?<=[:{])[^:{}]*[0-9@][^:{}]*(?=[:}]|$)")


def family(key: bytes) -> str:
    """A key's family: its name with the per-person / per-item parts replaced by ``*``."""
    text = key.decode(errors="replace")
    return _ID.sub("*", text)


def memory_by_family(conn: redis.Redis, sample: int = 200) -> list[tuple[str, int, int]]:
    """(family, keys, estimated bytes) by MEMORY USAGE of up to ``sample`` keys per family, scaled
    to the family's key count; largest first."""
    keys: dict[str, list[bytes]] = {}
    counts: dict[str, int] = {}
    for key in conn.scan_iter(count=5000):
        fam = family(key)
        counts[fam] = counts.get(fam, 0) + 1
        bucket = keys.setdefault(fam, [])
        if len(bucket) < sample:
            bucket.append(key)
    rows = []
    for fam, n in counts.items():
        pipe = conn.pipeline(transaction=False)
        for key in keys[fam]:
            pipe.memory_usage(key, samples=0)
        sizes = [s for s in pipe.execute() if s is not None]
        mean = sum(sizes) / len(sizes) if sizes else 0
        rows.append((fam, n, int(mean * n)))
    return sorted(rows, key=lambda r: -r[2])


def commandstats(conn: redis.Redis) -> dict[str, int]:
    """Calls per command since the last CONFIG RESETSTAT (scripts' inner calls included)."""
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in conn.info("commandstats").items()}


def commandtimes(conn: redis.Redis) -> dict[str, int]:
    """Microseconds Redis spent in each command since the last CONFIG RESETSTAT (a script's time
    counts both under EVALSHA and under the commands its body calls)."""
    return {name.removeprefix("cmdstat_"): int(v["usec"]) for name, v in conn.info("commandstats").items()}


TRACED = 10_000_000  # SLOWLOG entries kept while tracing


_TRACE_SETTINGS = ("slowlog-max-len", "slowlog-log-slower-than")
_untraced: dict[str, str] = {}


def trace_commands(conn: redis.Redis) -> None:
    """Log every command with its time from now on (SLOWLOG; Redis 7 logs a script's own calls
    too), for :func:`script_times`. Logging every command adds to Redis's CPU: a traced run's
    Redis CPU is not comparable with an untraced one's."""
    for name in _TRACE_SETTINGS:
        _untraced[name] = str(conn.config_get(name)[name])
    conn.config_set("slowlog-max-len", TRACED)
    conn.config_set("slowlog-log-slower-than", 0)
    conn.slowlog_reset()


def script_times(conn: redis.Redis) -> dict[str, tuple[int, int]]:
    """Calls and microseconds per script (its calls included) since :func:`trace_commands`, by the
    name of the constant that holds its source; tracing stops."""
    conn.config_set("slowlog-log-slower-than", -1)  # nothing more is logged while it is read
    entries = conn.slowlog_get(TRACED)
    conn.slowlog_reset()
    for name, value in _untraced.items():
        conn.config_set(name, value)
    names = script_names()
    out: dict[str, tuple[int, int]] = {}
    for entry in entries:
        words = entry["command"].split(b" ", 2)
        if words[0].lower() not in (b"evalsha", b"evalsha_ro") or len(words) < 2:
            continue
        name = names.get(words[1].decode(), words[1].decode()[:12])
        calls, usec = out.get(name, (0, 0))
        out[name] = (calls + 1, usec + int(entry["duration"]))
    return out


def script_names() -> dict[str, str]:
    """SHA-1 of each Lua script the product's modules hold -> ``module.NAME`` (a string constant,
    or an object with a ``source``: a batched script)."""
    import hashlib
    import importlib
    import pkgutil
    import sys

    import adapters
    import connector
    import rules
    from connector.profiles.batched import Batched

    for package in (connector, rules, adapters):
        for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            if ".dev." not in info.name and ".cli" not in info.name:
                importlib.import_module(info.name)
    names: dict[str, str] = {}
    for module_name, module in list(sys.modules.items()):
        if module_name.split(".")[0] not in ("connector", "rules", "adapters"):
            continue
        for attr, value in list(vars(module).items()):
            source = value.source if isinstance(value, Batched) else value
            if isinstance(source, str) and "redis.call" in source:
                names[hashlib.sha1(source.encode()).hexdigest()] = f"{module_name}.{attr}"
    return names


def script_calls(stats: Mapping[str, int]) -> int:
    return sum(stats.get(c, 0) for c in ("eval", "evalsha", "fcall", "eval_ro", "evalsha_ro"))
