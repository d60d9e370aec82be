"""The deployment path: every environment setting the code reads is documented in docs/deploy.md,
and the container entrypoint, compose file and systemd units run the Procfile's commands.

No Docker engine is needed: the entrypoint runs under bash with stub ``gunicorn`` and ``connector``
executables on PATH, and the compose file, Dockerfile and units are parsed.
"""

from __future__ import annotations

import ast
import fnmatch
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "deploy.md"
ENTRYPOINT = ROOT / "deploy" / "entrypoint.sh"
SOURCE_ROOMS = ("connector", "adapters", "rules")
PROCESSES = ("web", "worker", "scheduler", "sync")
# read by the test suite only (tests/conftest.py), never by a deployed process
TEST_ONLY_PREFIX = "CONNECTOR_TEST_"
_READ_METHODS = {"get", "pop"}


# -- scanning the source for environment reads ------------------------------------------------


def _os_imports(tree: ast.Module) -> dict[str, str]:
    """Names bound by ``from os import environ, getenv`` (local name -> os attribute). A bare
    ``environ`` counts only then: a WSGI handler's ``environ`` parameter is no environment read."""
    found: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "os":
            for alias in node.names:
                if alias.name in ("environ", "getenv"):
                    found[alias.asname or alias.name] = alias.name
    return found


def _is_os(node: ast.AST, attr: str, imported: dict[str, str]) -> bool:
    """``os.<attr>``, or a name ``from os import <attr>`` bound."""
    if isinstance(node, ast.Attribute):
        return node.attr == attr and isinstance(node.value, ast.Name) and node.value.id == "os"
    return isinstance(node, ast.Name) and imported.get(node.id) == attr


def _env_key(node: ast.AST, imported: dict[str, str]) -> ast.AST | None:
    """The key expression of an environment read, or None when ``node`` is not one."""
    if isinstance(node, ast.Call) and node.args:
        func = node.func
        if _is_os(func, "getenv", imported):
            return node.args[0]
        if (
            isinstance(func, ast.Attribute)
            and func.attr in _READ_METHODS
            and _is_os(func.value, "environ", imported)
        ):
            return node.args[0]
    if (
        isinstance(node, ast.Subscript)
        and isinstance(node.ctx, ast.Load)
        and _is_os(node.value, "environ", imported)
    ):
        return node.slice
    if (
        isinstance(node, ast.Compare)
        and len(node.ops) == 1
        and isinstance(node.ops[0], ast.In | ast.NotIn)
        and _is_os(node.comparators[0], "environ", imported)
    ):
        return node.left
    return None


def _constants(tree: ast.Module) -> dict[str, str]:
    """Module-level ``NAME = "literal"`` assignments (``LEVEL_ENV = "CONNECTOR_LOG_LEVEL"``)."""
    found: dict[str, str] = {}
    for stmt in tree.body:
        targets = stmt.targets if isinstance(stmt, ast.Assign) else []
        if isinstance(stmt, ast.AnnAssign) and stmt.value is not None:
            targets = [stmt.target]
        value = stmt.value if isinstance(stmt, ast.Assign | ast.AnnAssign) else None
        if isinstance(value, ast.Constant) and isinstance(value.value, str):
            for target in targets:
                if isinstance(target, ast.Name):
                    found[target.id] = value.value
    return found


def _literal(node: ast.AST, constants: dict[str, str]) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.Name):
        return constants.get(node.id)
    return None


def _helpers(tree: ast.Module, imported: dict[str, str]) -> dict[str, int]:
    """Functions that read the environment under one of their parameters (``_int(name, default)``
    in connector/settings.py): function name -> position of that parameter."""
    found: dict[str, int] = {}
    for func in ast.walk(tree):
        if not isinstance(func, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        params = [a.arg for a in func.args.posonlyargs + func.args.args]
        for node in ast.walk(func):
            key = _env_key(node, imported)
            if isinstance(key, ast.Name) and key.id in params:
                found[func.name] = params.index(key.id)
    return found


def scan_source(text: str) -> set[str]:
    """Every environment variable ``text`` reads under a literal name (directly, through a
    module-level constant, or through a helper defined in the same module)."""
    tree = ast.parse(text)
    constants = _constants(tree)
    imported = _os_imports(tree)
    helpers = _helpers(tree, imported)
    names: set[str] = set()
    for node in ast.walk(tree):
        key = _env_key(node, imported)
        if key is None and isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            position = helpers.get(node.func.id)
            if position is not None and len(node.args) > position:
                key = node.args[position]
        name = _literal(key, constants) if key is not None else None
        if name is not None:
            names.add(name)
    return names


def settings_read_by_the_code() -> dict[str, list[str]]:
    """Setting name -> the files that read it, over connector/, adapters/ and rules/."""
    found: dict[str, list[str]] = {}
    for room in SOURCE_ROOMS:
        for path in sorted((ROOT / room).rglob("*.py")):
            for name in scan_source(path.read_text(encoding="utf-8")):
                if not name.startswith(TEST_ONLY_PREFIX):
                    found.setdefault(name, []).append(str(path.relative_to(ROOT)))
    return found


def _section(markdown: str, heading: str) -> str:
    """The text under ``heading`` up to the next heading of the same or a higher level."""
    lines = markdown.splitlines()
    level = len(heading) - len(heading.lstrip("#"))
    start = lines.index(heading) + 1
    end = next(
        (
            i
            for i in range(start, len(lines))
            if lines[i].startswith("#") and len(lines[i]) - len(lines[i].lstrip("#")) <= level
        ),
        len(lines),
    )
    return "\n".join(lines[start:end])


def documented_settings() -> set[str]:
    """Names in the first column of the table rows of the doc's "Settings the connector reads"."""
    table = _section(DOC.read_text(encoding="utf-8"), "### Settings the connector reads")
    names: set[str] = set()
    for line in table.splitlines():
        cells = line.split("|")
        if line.startswith("|") and len(cells) > 2:
            names.update(re.findall(r"`([A-Z][A-Z0-9_]*)`", cells[1]))
    return names


def test_the_scanner_finds_every_form_of_environment_read() -> None:
    source = """
import os
from os import environ, getenv

LEVEL = "VIA_CONSTANT"

def _int(name, default):
    raw = os.environ.get(name)
    return default if raw is None else int(raw)

def _flag(default, name):
    return name in os.environ

bind = os.environ.get("OUTER", f"0.0.0.0:{os.environ.get('NESTED_IN_FSTRING', '8000')}")
a = os.environ["SUBSCRIPT"]
b = os.getenv("GETENV")
c = environ.get("BARE_ENVIRON")
d = getenv("BARE_GETENV")
e = os.environ.get(LEVEL)
f = _int("VIA_HELPER", 4)
g = _flag(True, "VIA_HELPER_SECOND_ARG")
h = "MEMBERSHIP" in os.environ
i = os.environ.pop("POPPED", None)
os.environ["WRITTEN_ONLY"] = "1"
os.environ.setdefault("DEFAULTED_ONLY", "1")
j = os.environ.get(some_variable)
"""
    assert scan_source(source) == {
        "VIA_CONSTANT",
        "OUTER",
        "NESTED_IN_FSTRING",
        "SUBSCRIPT",
        "GETENV",
        "BARE_ENVIRON",
        "BARE_GETENV",
        "VIA_HELPER",
        "VIA_HELPER_SECOND_ARG",
        "MEMBERSHIP",
        "POPPED",
    }


def test_the_scanner_ignores_a_wsgi_environ() -> None:
    wsgi = """
import os

def app(environ, start_response):
    return environ.get("PATH_INFO"), environ["QUERY_STRING"], os.environ.get("REAL_ONE")
"""
    assert scan_source(wsgi) == {"REAL_ONE"}


def test_the_scan_of_the_source_sees_the_known_settings() -> None:
    """A scanner that silently found nothing would pass the documentation check below."""
    found = settings_read_by_the_code()
    for name in (
        "REDIS_URL",  # os.environ.get in connector/settings.py
        "CONNECTOR_EVENT_SHARDS",  # through settings._int
        "CONNECTOR_MAX_BODY_BYTES",  # through settings._int
        "CONNECTOR_LOG_LEVEL",  # through a module constant in connector/ops/logs.py
        "PORT",  # inside an f-string in connector/ops/gunicorn_conf.py
        "WEB_CONCURRENCY",
    ):
        assert name in found, name
    assert not [n for n in found if n.startswith(TEST_ONLY_PREFIX)]


def test_every_setting_the_code_reads_is_in_the_deploy_reference() -> None:
    found = settings_read_by_the_code()
    documented = documented_settings()
    missing = {name: files for name, files in sorted(found.items()) if name not in documented}
    assert not missing, f"read by the code but not in docs/deploy.md's reference: {missing}"


def test_the_deploy_reference_names_only_settings_the_code_reads() -> None:
    stale = documented_settings() - set(settings_read_by_the_code())
    assert not stale, f"docs/deploy.md documents settings no code reads: {sorted(stale)}"


def test_the_deploy_doc_explains_the_secret_pattern_and_links_the_capacity_model() -> None:
    text = DOC.read_text(encoding="utf-8")
    for needle in ("secret_env", "api_key_env", "docs/benchmarks.md#capacity-model", "noeviction"):
        assert needle in text, needle


# -- the Procfile and what runs it --------------------------------------------------------------


def procfile() -> dict[str, list[str]]:
    commands: dict[str, list[str]] = {}
    for line in (ROOT / "Procfile").read_text(encoding="utf-8").splitlines():
        name, sep, command = line.partition(":")
        if sep and name.strip() and not name.startswith("#"):
            commands[name.strip()] = shlex.split(command)
    return commands


def test_the_procfile_has_the_four_processes() -> None:
    assert set(procfile()) == set(PROCESSES)


@pytest.fixture()
def stub_path(tmp_path: Path) -> Path:
    """A directory with stub ``gunicorn``, ``connector`` and ``other`` executables that print
    their parent's pid, then their name and arguments, one per line."""
    stubs = tmp_path / "bin"
    stubs.mkdir()
    for name in ("gunicorn", "connector", "other"):
        stub = stubs / name
        stub.write_text(f'#!/bin/sh\necho "$PPID"\necho {name}\nfor a in "$@"; do echo "$a"; done\n')
        stub.chmod(0o755)
    return stubs


def run_entrypoint(
    stubs: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    base = {"PATH": f"{stubs}:/usr/bin:/bin", "HOME": str(stubs)}
    if env is None:
        env = {"REDIS_URL": "redis://redis.internal:6379/0"}
    return subprocess.run(
        ["bash", str(ENTRYPOINT), *args],
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


@pytest.mark.parametrize("process", PROCESSES)
def test_the_entrypoint_runs_the_procfile_command_of_each_process(stub_path: Path, process: str) -> None:
    result = run_entrypoint(stub_path, process)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[1:] == procfile()[process]


def test_the_entrypoint_replaces_itself_with_the_process(stub_path: Path) -> None:
    """exec, not a child: SIGTERM from the container runtime reaches gunicorn or the worker."""
    result = run_entrypoint(stub_path, "worker")
    assert result.returncode == 0, result.stderr
    assert int(result.stdout.splitlines()[0]) == os.getpid()


def test_the_entrypoint_appends_extra_arguments(stub_path: Path) -> None:
    result = run_entrypoint(stub_path, "worker", "--burst")
    assert result.stdout.splitlines()[1:] == [*procfile()["worker"], "--burst"]


def test_the_entrypoint_runs_any_other_command_as_given(stub_path: Path) -> None:
    result = run_entrypoint(stub_path, "other", "config", "validate", "/config/accounts", env={})
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[1:] == ["other", "config", "validate", "/config/accounts"]


@pytest.mark.parametrize("process", PROCESSES)
def test_the_entrypoint_refuses_to_start_without_a_redis_url(stub_path: Path, process: str) -> None:
    result = run_entrypoint(stub_path, process, env={"CONNECTOR_QUEUE_REDIS_URL": "redis://q:6379/0"})
    assert result.returncode == 64
    assert result.stdout == ""  # the process was not started
    assert "REDIS_URL is not set" in result.stderr


def test_the_entrypoint_accepts_split_queue_and_profile_urls(stub_path: Path) -> None:
    env = {
        "CONNECTOR_QUEUE_REDIS_URL": "redis://queues:6379/0",
        "CONNECTOR_PROFILE_REDIS_URL": "redis+cluster://profiles-1:6379",
    }
    result = run_entrypoint(stub_path, "scheduler", env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[1:] == procfile()["scheduler"]


def test_the_entrypoint_without_a_command_prints_its_usage(stub_path: Path) -> None:
    result = run_entrypoint(stub_path)
    assert result.returncode == 2
    assert "usage: entrypoint.sh web|worker|scheduler" in result.stderr


def test_the_entrypoint_is_executable() -> None:
    assert os.access(ENTRYPOINT, os.X_OK)


def compose() -> dict[str, dict[str, object]]:
    data = yaml.safe_load((ROOT / "compose.yaml").read_text(encoding="utf-8"))
    services: dict[str, dict[str, object]] = data["services"]
    return services


def _argv(command: object) -> list[str]:
    return shlex.split(command) if isinstance(command, str) else [str(a) for a in command]  # type: ignore[attr-defined]


@pytest.mark.parametrize("process", PROCESSES)
def test_each_compose_service_runs_the_procfile_command(process: str) -> None:
    service = compose()[process]
    assert _argv(service["command"]) == procfile()[process]
    environment = service["environment"]
    assert isinstance(environment, dict)
    assert environment["REDIS_URL"] == "redis://redis:6379/0"
    assert "redis" in service["depends_on"]  # type: ignore[operator]


def test_compose_redis_keeps_an_append_only_file_on_a_volume_and_never_evicts() -> None:
    redis = compose()["redis"]
    argv = _argv(redis["command"])
    assert argv[0] == "redis-server"
    options = dict(zip(argv[1::2], argv[2::2], strict=True))
    assert options == {
        "--appendonly": "yes",
        "--appendfsync": "everysec",
        "--maxmemory-policy": "noeviction",
    }
    volumes = redis["volumes"]
    assert isinstance(volumes, list)
    assert any(str(v).split(":")[1] == "/data" for v in volumes)


def dockerfile() -> list[tuple[str, str]]:
    """(instruction, arguments) of the Dockerfile, continuation lines joined."""
    text = (ROOT / "Dockerfile").read_text(encoding="utf-8").replace("\\\n", " ")
    steps = []
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            instruction, _, rest = line.strip().partition(" ")
            steps.append((instruction.upper(), rest.strip()))
    return steps


def test_the_dockerfile_installs_the_package_and_runs_the_entrypoint_as_a_user() -> None:
    steps = dockerfile()
    assert steps[0] == ("FROM", "python:3.11-slim")
    assert any(i == "RUN" and "pip install ." in args for i, args in steps)
    users = [args for i, args in steps if i == "USER"]
    assert users and users[-1] not in ("root", "0")
    copies = {args.split()[-1]: args.split()[0] for i, args in steps if i == "COPY"}
    entrypoint = [args for i, args in steps if i == "ENTRYPOINT"][-1]
    (target,) = yaml.safe_load(entrypoint)  # exec form: a JSON list
    assert copies[target] == "deploy/entrypoint.sh"
    assert [args for i, args in steps if i == "CMD"][-1] == '["web"]'


def test_the_dockerignore_keeps_what_the_dockerfile_copies() -> None:
    patterns = [
        p.strip()
        for p in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if p.strip() and not p.startswith("#")
    ]
    sources = [
        src
        for i, args in dockerfile()
        if i == "COPY"
        for src in args.split()[:-1]
        if not src.startswith("--")
    ]
    assert "pyproject.toml" in sources
    for src in sources:
        assert not [p for p in patterns if fnmatch.fnmatch(src, p)], src
    for secret_or_local in (".env", "prod.env", ".venv", ".connector", ".git"):
        assert [p for p in patterns if fnmatch.fnmatch(secret_or_local, p)], secret_or_local


def unit(name: str) -> dict[str, list[str]]:
    values: dict[str, list[str]] = {}
    for line in (ROOT / "deploy" / "systemd" / name).read_text(encoding="utf-8").splitlines():
        key, sep, value = line.partition("=")
        if sep and not line.startswith(("#", "[")):
            values.setdefault(key.strip(), []).append(value.strip())
    return values


UNITS = {
    "web": "connector-web.service",
    "worker": "connector-worker@.service",
    "scheduler": "connector-scheduler.service",
    "sync": "connector-sync.service",
}


@pytest.mark.parametrize("process", PROCESSES)
def test_each_systemd_unit_runs_the_procfile_command(process: str) -> None:
    values = unit(UNITS[process])
    (exec_start,) = values["ExecStart"]
    argv = shlex.split(exec_start)
    expected = procfile()[process]
    assert argv[0].startswith("/") and Path(argv[0]).name == expected[0]
    assert argv[1:] == expected[1:]
    assert values["Restart"] == ["always"]
    assert values["EnvironmentFile"] == ["/etc/segment-connector/connector.env"]
    assert values["User"] == ["connector"]


def test_the_doc_says_containers_were_not_built_here() -> None:
    """The recipes are checked by parsing, not by a Docker engine; the doc must say so."""
    assert "no Docker engine" in DOC.read_text(encoding="utf-8")


if __name__ == "__main__":  # print the reference's names, to help keep the doc in step
    for setting, files in sorted(settings_read_by_the_code().items()):
        sys.stdout.write(f"{setting}: {', '.join(files)}\n")
