"""The worker's hot path compiled to C with mypyc, used when a build matches the sources.

The rule engine and the profile store's hot modules (:data:`MODULES`) are plain, fully typed
Python; ``connector compile`` (or ``scripts/dev`` and ``scripts/test``, which run it) compiles them
with mypyc into ``build/compiled/`` beside the checkout, with a manifest of the SHA-256 of each of
them and of every project module they import. When a package of theirs is imported,
:func:`activate` compares the manifest with the sources and this interpreter: when every one
matches, those modules load from the build (an import hook before the usual finders); when one
does not (a source edited since, another Python, no build, or ``CONNECTOR_COMPILED=0``), every one
loads from its source, as plain Python. A build never runs code older than its source, and the two
behave alike but for what docs/architecture.md lists: the test suite runs on either.

Compiled modules call each other's functions directly: a module attribute replaced at run time
(a test's monkeypatch) is not seen by them. The modules tests replace functions of (the evaluation
hand-off, the batch pipeline) stay plain Python; a module constant that is not ``Final`` is read
from the module at each use, so tests may change those (the ledger's bounds). A method replaced on
a compiled class is seen by plain callers only.
"""

from __future__ import annotations

import ast
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
# a checkout's build/ (ignored by git); an install's inside this package's own directory
BUILD_DIR = (
    ROOT / "build" / "compiled" if (ROOT / "pyproject.toml").exists() else Path(__file__).parent / "_build"
)
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
    "connector.worker.ledger",
    "connector.profiles.apply",
)

_state: dict[str, Any] = {"checked": False, "active": False, "reason": "not checked"}
PACKAGES = ("rules", "connector", "adapters")  # where the sources a build depends on can be


def source_of(module: str) -> Path:
    return ROOT.joinpath(*module.split(".")).with_suffix(".py")


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def interpreter() -> str:
    """What a build is tied to: the extension suffix names the Python version and platform."""
    return importlib.machinery.EXTENSION_SUFFIXES[0]


def _module_of(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts)


def _imported(module: str) -> set[str]:
    """The project's modules ``module`` imports anywhere in its text (and the packages on the way)."""
    tree = ast.parse(source_of(module).read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    found = set()
    for name in names:
        parts = name.split(".")
        if parts[0] not in PACKAGES:
            continue
        for n in range(1, len(parts) + 1):
            candidate = ".".join(parts[:n])
            path = ROOT.joinpath(*parts[:n])
            if (path / "__init__.py").exists():
                found.add(candidate + ".__init__")
            elif path.with_suffix(".py").exists():
                found.add(candidate)
    return found


def depended_on() -> list[str]:
    """The compiled modules and every project module they import, directly or not: mypyc builds
    with their types (a changed signature there makes the build stale too)."""
    todo, seen = list(MODULES), set(MODULES)
    while todo:
        for found in _imported(todo.pop()):
            if found not in seen:
                seen.add(found)
                todo.append(found)
    return sorted(seen)


def stale(manifest: Any) -> str | None:
    """Why a build's manifest does not fit the sources and this interpreter, None when it does."""
    if not isinstance(manifest, dict) or not isinstance(manifest.get("sources"), dict):
        return "an unreadable manifest"
    if manifest.get("interpreter") != interpreter():
        return f"built for {manifest.get('interpreter')}, running {interpreter()}"
    modules = manifest.get("modules")
    if not isinstance(modules, dict) or sorted(modules) != sorted(MODULES):
        return "built for another list of modules"
    for module, want in manifest["sources"].items():
        source = source_of(module)
        if not source.exists() or digest(source) != want:
            return f"{source.relative_to(ROOT)} changed since the build"
    return None


class _Finder:
    """Finds the compiled modules of an active build and their shared library (nothing else)."""

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
    :func:`status`). Called by the packages holding compiled modules, before those are imported.
    Anything amiss with the build leaves every module plain Python."""
    if _state["checked"]:
        return bool(_state["active"])
    _state["checked"] = True
    if os.environ.get(ENV, "1") == "0":
        _state["reason"] = f"{ENV}=0"
        return False
    try:
        files = _usable(json.loads((BUILD_DIR / MANIFEST).read_text()))
    except (OSError, ValueError) as err:
        _state["reason"] = f"no usable build ({err}; connector compile makes one)"
        return False
    if isinstance(files, str):
        _state["reason"] = files + " (connector compile builds it again)"
        return False
    sys.meta_path.insert(0, _Finder(files))
    _state.update(active=True, reason="compiled build in use")
    return True


def _usable(manifest: Any) -> dict[str, Path] | str:
    """The build's files by module name, or why it cannot be used."""
    why = stale(manifest)
    if why is not None:
        return why
    runtime = manifest.get("runtime")
    files = {m: BUILD_DIR / str(entry.get("file")) for m, entry in manifest["modules"].items()}
    if isinstance(runtime, str) and runtime:
        files[runtime.partition(".")[0]] = BUILD_DIR / runtime
    missing = [path for path in files.values() if not path.is_file()]
    if missing or not runtime:
        return f"{missing[0] if missing else 'its shared library'} is missing"
    loaded = [m for m in MODULES if m in sys.modules]
    if loaded:  # imported as plain Python before the check: mixing the two is not allowed
        return f"{loaded[0]} was imported before the build was checked"
    return files


def status() -> dict[str, Any]:
    """Whether the compiled modules are in use in this process, and why (for health and tests)."""
    activate()
    return {"active": bool(_state["active"]), "reason": str(_state["reason"]), "modules": list(MODULES)}


def fresh() -> bool:
    """Whether the build on disk matches the sources and this interpreter (whatever this process
    uses)."""
    try:
        return stale(json.loads((BUILD_DIR / MANIFEST).read_text())) is None
    except (OSError, ValueError):
        return False


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
    """Compile :data:`MODULES` with mypyc into :data:`BUILD_DIR`. The build is made beside it and
    put in its place at once (a rename, under a lock: two builds at the same time leave one whole
    build), with its manifest written before, so that a build cut short is never used. Needs mypy
    (the ``fast`` or ``dev`` extra), setuptools and a C compiler with the Python headers."""
    import fcntl
    import shutil
    import subprocess
    import sysconfig
    import tempfile

    compiler = (sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(compiler) is None:
        raise RuntimeError(f"no C compiler ({compiler}) here")
    sources = depended_on()
    BUILD_DIR.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="connector-compile-") as tmp:
        out, work = Path(tmp) / "out", Path(tmp) / "work"
        config = Path(tmp) / "mypy.ini"  # as in pyproject.toml, also for an install (no pyproject.toml)
        config.write_text(_MYPY_CONFIG)
        paths = [str(source_of(m)) for m in MODULES] + [f"--config-file={config}"]
        script = (
            "from setuptools import setup\n"
            "from mypyc.build import mypycify\n"
            f"setup(name='connector-compiled', ext_modules=mypycify({paths!r}, opt_level='3', "
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
        runtime = [p.name for p in out.glob("*__mypyc" + interpreter())]
        modules = {m: {"file": str(Path(*m.split(".")).with_suffix(interpreter()))} for m in MODULES}
        missing = [entry["file"] for entry in modules.values() if not (out / entry["file"]).is_file()]
        if missing or len(runtime) != 1:
            raise RuntimeError(f"mypyc made no {missing[0] if missing else 'single shared library'}")
        manifest = {
            "interpreter": interpreter(),
            "runtime": runtime[0],
            "modules": modules,
            "sources": {m: digest(source_of(m)) for m in sources},
        }
        (out / MANIFEST).write_text(json.dumps(manifest, indent=2))
        with open(BUILD_DIR.parent / ".compiled.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            staged = Path(tempfile.mkdtemp(prefix=".compiled-", dir=BUILD_DIR.parent))
            shutil.copytree(out, staged, dirs_exist_ok=True)
            old = BUILD_DIR.parent / f".compiled-old-{os.getpid()}"
            if BUILD_DIR.exists():
                BUILD_DIR.rename(old)  # processes running keep the files they mapped
            staged.rename(BUILD_DIR)
            shutil.rmtree(old, ignore_errors=True)
    return manifest
