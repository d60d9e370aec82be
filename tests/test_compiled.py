"""The compiled hot modules (rules/compiled.py): used only while a build matches the sources (the
compiled modules and every project module they import) and this interpreter, plain Python
otherwise; and, where ``scripts/test`` built them, the suite runs on them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from rules import compiled


def _manifest() -> dict[str, Any]:
    """What a build of the sources as they are would record (no compiler involved)."""
    return {
        "interpreter": compiled.interpreter(),
        "runtime": "0123abcd__mypyc" + compiled.interpreter(),
        "modules": {
            m: {"file": str(Path(*m.split(".")).with_suffix(compiled.interpreter()))}
            for m in compiled.MODULES
        },
        "sources": {m: compiled.digest(compiled.source_of(m)) for m in compiled.depended_on()},
    }


def test_a_build_of_the_sources_as_they_are_is_used() -> None:
    assert compiled.stale(_manifest()) is None


def test_a_compiled_source_changed_since_the_build_sends_every_module_to_plain_python() -> None:
    manifest = _manifest()
    manifest["sources"]["rules.plan"] = "0" * 64
    assert compiled.stale(manifest) == "rules/plan.py changed since the build"


def test_a_module_they_import_changed_since_the_build_makes_it_stale_too() -> None:
    depended = compiled.depended_on()
    assert "connector.clock" in depended and "connector.event" in depended  # imported, not compiled
    assert "connector.worker.jobs" not in depended  # it imports them, they do not import it
    manifest = _manifest()
    manifest["sources"]["connector.clock"] = "0" * 64
    assert compiled.stale(manifest) == "connector/clock.py changed since the build"


def test_a_build_for_another_python_or_other_modules_or_unreadable_is_not_used() -> None:
    other = {**_manifest(), "interpreter": ".cpython-312-x86_64-linux-gnu.so"}
    assert "built for .cpython-312" in (compiled.stale(other) or "")
    fewer = _manifest()
    del fewer["modules"]["rules.values"]
    assert compiled.stale(fewer) == "built for another list of modules"
    assert compiled.stale(["not", "a", "manifest"]) == "an unreadable manifest"
    assert compiled.stale({"interpreter": compiled.interpreter()}) == "an unreadable manifest"


def test_a_build_with_a_file_missing_is_not_used() -> None:
    found = compiled._usable(_manifest())  # the shared library named here was never built
    assert isinstance(found, str) and found.endswith("is missing")


def _where(env: dict[str, str], cwd: str | None = None) -> dict[str, Any]:
    code = (
        "import json, rules\n"  # rules first: the compiled build must not shadow the connector package
        "import rules.plan, connector.config, connector.profiles.store as s\n"
        "from rules import compiled\n"
        "print(json.dumps({**compiled.status(), 'plan': rules.plan.__file__, 'store': s.__file__,\n"
        "                  'connector': connector.__file__}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=cwd, capture_output=True, text=True, check=True
    )
    found: dict[str, Any] = json.loads(done.stdout)
    return found


def test_switched_off_every_module_is_plain_python() -> None:
    found = _where({**os.environ, compiled.ENV: "0"})
    assert found["active"] is False and found["reason"] == f"{compiled.ENV}=0"
    assert str(found["plan"]).endswith("rules/plan.py") and str(found["store"]).endswith("profiles/store.py")


def test_the_packages_load_from_the_sources_whatever_the_working_directory() -> None:
    found = _where(dict(os.environ), cwd="/")
    assert found["connector"] == str(compiled.ROOT / "connector" / "__init__.py")


@pytest.mark.skipif(
    os.environ.get("CONNECTOR_EXPECT_COMPILED") != "1",
    reason="no compiled build here (scripts/test makes one)",
)
def test_the_suite_runs_on_the_compiled_modules_when_they_were_built() -> None:
    status = compiled.status()
    assert status["active"], status["reason"]
    found = _where(dict(os.environ), cwd="/")
    assert str(found["plan"]).startswith(str(compiled.BUILD_DIR))
    assert str(found["store"]).endswith("store" + compiled.interpreter())
    import rules.plan

    assert rules.plan.__file__ is not None and rules.plan.__file__.startswith(str(compiled.BUILD_DIR))


def test_every_exception_a_compiled_module_defines_can_be_raised_and_read() -> None:
    """A class of a compiled module deriving from an exception whose ``__init__`` sets attributes
    (redis-py's do) is laid out without room for them: building one crashed the process. Every
    exception class of the project's that the compiled modules define or import is built, raised,
    caught and read here (on the compiled build when there is one, see the test above)."""
    import importlib

    seen = set()
    for name in compiled.MODULES:
        module = importlib.import_module(name)
        for value in vars(module).values():
            if (
                isinstance(value, type)
                and issubclass(value, BaseException)
                and value.__module__.split(".")[0] in ("connector", "rules")
                and value not in seen
            ):
                seen.add(value)
                try:
                    raise value(*_arguments(value))
                except value as err:
                    assert "a message" in str(err) or repr(err)
                    err.note = "set"  # type: ignore[attr-defined]
    names = {cls.__name__ for cls in seen}
    assert {"StateMoving", "LockTimeout", "DurationError"} <= names


def _arguments(cls: type) -> list[str]:
    """A text for each positional argument the exception's ``__init__`` requires (one at least)."""
    import inspect

    try:
        parameters = inspect.signature(cls).parameters.values()
    except (TypeError, ValueError):  # a builtin's: one message
        return ["a message"]
    required = [
        p
        for p in parameters
        if p.default is inspect.Parameter.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    return ["a message"] + [f"a {p.name}" for p in required[1:]] if required else ["a message"]
