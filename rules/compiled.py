"""The worker's hot path compiled to C with mypyc, used when a build matches the sources.

The rule engine and the profile store's hot modules (:data:`MODULES`) are plain, fully typed
Python; ``connector compile`` (or ``scripts/dev`` and ``scripts/test``, which run it) compiles them
with mypyc into ``build/compiled/`` beside the checkout, with a manifest of each source's SHA-256.
When a package of theirs is imported, :func:`activate` compares the manifest with the sources and
this interpreter: when every one matches, those modules load from the build (an import hook
before the usual finders); when one does not (a source edited since, another Python, no build, or
``CONNECTOR_COMPILED=0``), every one loads from its source, as plain Python. A build never runs
code older than its source, and the two behave alike: the test suite runs on either.

Compiled modules call each other's functions directly: a module attribute replaced at run time
(a test's monkeypatch) is not seen by them. The modules tests replace functions of (the event
apply, the evaluation hand-off, the ledger) stay plain Python.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BUILD_DIR = ROOT / "build" / "compiled"
MANIFEST = "manifest.json"
ENV = "CONNECTOR_COMPILED"  # "0": plain Python whatever is built

MODULES = (
    "rules.conditions",
    "rules.durations",
    "rules.evaluate",
    "rules.model",
    "rules.plan",
    "rules.values",
    "rules.variants",
    "connector.buckets",
    "connector.jsonload",
    "connector.redis_conn",
    "connector.profiles.batched",
    "connector.profiles.identity",
    "connector.profiles.keys",
    "connector.profiles.properties",
    "connector.profiles.store",
    "connector.worker.ledger_codec",
    "connector.worker.due",
    "connector.sync.submit",
    "connector.analytics.movement",
    "connector.analytics.attribution",
    "connector.worker.sizes",
)

_state: dict[str, Any] = {"checked": False, "active": False, "reason": "not checked"}


def source_of(module: str) -> Path:
    return ROOT.joinpath(*module.split(".")).with_suffix(".py")


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def interpreter() -> str:
    """What a build is tied to: the extension suffix names the Python version and platform."""
    return importlib.machinery.EXTENSION_SUFFIXES[0]


def stale(manifest: dict[str, Any]) -> str | None:
    """Why a build's manifest does not fit the sources and this interpreter, None when it does."""
    if manifest.get("interpreter") != interpreter():
        return f"built for {manifest.get('interpreter')}, running {interpreter()}"
    modules = manifest.get("modules") or {}
    if sorted(modules) != sorted(MODULES):
        return "built for another list of modules"
    for module, want in modules.items():
        source = source_of(module)
        if not source.exists() or digest(source) != want.get("sha256"):
            return f"{source.relative_to(ROOT)} changed since the build"
    return None


class _Finder:
    """Finds the compiled modules of an active build (and nothing else)."""

    def __init__(self, files: dict[str, Path]) -> None:
        self.files = files

    def find_spec(self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None) -> Any:
        del path, target
        found = self.files.get(fullname)
        if found is None:
            return None
        loader = importlib.machinery.ExtensionFileLoader(fullname, str(found))
        return importlib.util.spec_from_file_location(fullname, found, loader=loader)


def activate() -> bool:
    """Use the build when it matches (once per process; what was decided stays, see
    :func:`status`). Called by the packages holding compiled modules, before those are imported."""
    if _state["checked"]:
        return bool(_state["active"])
    _state["checked"] = True
    if os.environ.get(ENV, "1") == "0":
        _state["reason"] = f"{ENV}=0"
        return False
    try:
        manifest = json.loads((BUILD_DIR / MANIFEST).read_text())
    except (OSError, ValueError):
        _state["reason"] = "no build (connector compile makes one)"
        return False
    why = stale(manifest)
    if why is not None:
        _state["reason"] = why + " (connector compile builds it again)"
        return False
    loaded = [m for m in MODULES if m in sys.modules]
    if loaded:  # imported as plain Python before the check: mixing the two is not allowed
        _state["reason"] = f"{loaded[0]} was imported before the build was checked"
        return False
    files = {m: BUILD_DIR / manifest["modules"][m]["file"] for m in MODULES}
    sys.path.append(str(BUILD_DIR))  # the build's shared library, named after its hash
    sys.meta_path.insert(0, _Finder(files))
    _state.update(active=True, reason="compiled build in use")
    return True


def status() -> dict[str, Any]:
    """Whether the compiled modules are in use in this process, and why (for health and tests)."""
    activate()
    return {"active": bool(_state["active"]), "reason": str(_state["reason"]), "modules": list(MODULES)}


# mypy's settings for the compilation (pyproject.toml's, without the stricter checks of CI): redis-py
# and RQ typed as Any
_MYPY_CONFIG = """[mypy]
python_version = 3.11
ignore_missing_imports = True
check_untyped_defs = True

[mypy-redis,redis.*,rq,rq.*]
follow_imports = skip
follow_untyped_imports = True
"""


def build(verbose: bool = False) -> dict[str, Any]:
    """Compile :data:`MODULES` with mypyc into :data:`BUILD_DIR` (replacing what was there) and
    write the manifest last, so that a build cut short is never used. Needs mypy (the ``fast`` or
    ``dev`` extra) and a C compiler with the Python headers."""
    import shutil
    import subprocess
    import tempfile

    sources = [str(source_of(m)) for m in MODULES]
    with tempfile.TemporaryDirectory(prefix="connector-compile-") as tmp:
        out, work = Path(tmp) / "out", Path(tmp) / "work"
        config = Path(tmp) / "mypy.ini"  # as in pyproject.toml, also for an install (no pyproject.toml)
        config.write_text(_MYPY_CONFIG)
        sources.append(f"--config-file={config}")
        script = (
            "import sys\n"
            "from setuptools import setup\n"
            "from mypyc.build import mypycify\n"
            f"setup(name='connector-compiled', ext_modules=mypycify({sources!r}, opt_level='3', "
            f"target_dir={str(work)!r}), script_args=['build_ext', '--build-lib', {str(out)!r}, "
            f"'--build-temp', {str(work / 'temp')!r}] + ([] if {verbose!r} else ['-q']))\n"
        )
        # run apart from the checkout: setuptools would read its pyproject.toml (and an older one
        # refuses it) though the build needs none of it
        done = subprocess.run(
            [sys.executable, "-c", script], cwd=tmp, capture_output=True, text=True, check=False
        )
        if done.returncode:
            raise RuntimeError("mypyc could not compile the modules:\n" + (done.stdout + done.stderr)[-4000:])
        modules: dict[str, dict[str, str]] = {}
        if BUILD_DIR.exists():
            shutil.rmtree(BUILD_DIR)
        BUILD_DIR.mkdir(parents=True)
        for built in out.rglob("*" + interpreter()):
            target = BUILD_DIR / built.relative_to(out)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(built, target)
        for m in MODULES:
            file = Path(*m.split(".")).with_suffix(interpreter())
            if not (BUILD_DIR / file).exists():
                raise RuntimeError(f"mypyc made no {file}")
            modules[m] = {"file": str(file), "sha256": digest(source_of(m))}
    manifest = {"interpreter": interpreter(), "modules": modules}
    (BUILD_DIR / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return manifest
