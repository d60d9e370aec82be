"""No import cycles among the modules of each package (connector/, adapters/, rules/).

Every import statement counts, wherever it is: module level, inside functions, under ``if TYPE_CHECKING``.
Relative imports are resolved against the importing module. ``import p.m`` and ``from p import m`` (m a
submodule) are edges to ``p.m``; ``from p import name`` (name defined in p's ``__init__``) and ``import p``
are edges to ``p`` itself. The parents' ``__init__`` modules that Python runs on the way are not edges.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("connector", "adapters", "rules")


def module_files(package: str) -> dict[str, Path]:
    """Dotted module name → file, for every module of ``package`` (``__init__`` is the package's name)."""
    found: dict[str, Path] = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _base(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The absolute module an ``ImportFrom`` names (``from ..x import y`` in ``a.b.c`` → ``a.x``)."""
    if not node.level:
        return node.module or ""
    anchor = module.split(".") if is_package else module.split(".")[:-1]
    if node.level > 1:
        anchor = anchor[: len(anchor) - (node.level - 1)]
    return ".".join([*anchor, node.module] if node.module else anchor)


def imported(module: str, path: Path, known: Mapping[str, Path]) -> Iterator[str]:
    """The known modules that ``module`` (at ``path``) imports, per the edge rules above."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    is_package = path.name == "__init__.py"
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in known:
                    yield alias.name
        elif isinstance(node, ast.ImportFrom):
            base = _base(module, is_package, node)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                if sub in known:
                    yield sub
                elif base in known:
                    yield base


def import_graph(package: str) -> dict[str, set[str]]:
    """Module → the modules of the same package it imports (itself excluded)."""
    known = module_files(package)
    return {
        name: {target for target in imported(name, path, known) if target != name}
        for name, path in known.items()
    }


def cycles(graph: Mapping[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_checker_sees_function_level_type_checking_and_relative_imports(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("VALUE = 1\n")
    (pkg / "a.py").write_text("def f():\n    from .sub import b\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "b.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..c import C\n"
    )
    (pkg / "c.py").write_text("import pkg.a\nfrom pkg import VALUE\n")
    known = {"pkg": pkg / "__init__.py", "pkg.a": pkg / "a.py", "pkg.sub": pkg / "sub" / "__init__.py"}
    known |= {"pkg.sub.b": pkg / "sub" / "b.py", "pkg.c": pkg / "c.py"}
    graph = {name: set(imported(name, path, known)) for name, path in known.items()}
    assert graph == {
        "pkg": set(),
        "pkg.a": {"pkg.sub.b"},
        "pkg.sub": set(),
        "pkg.sub.b": {"pkg.c"},
        "pkg.c": {"pkg.a", "pkg"},
    }
    assert cycles(graph) == [["pkg.a", "pkg.c", "pkg.sub.b"]]


@pytest.mark.parametrize(
    "package",
    [
        "rules",
        "adapters",
        "connector",
    ],
)
def test_no_import_cycles(package: str) -> None:
    graph = import_graph(package)
    assert len(graph) > 3, f"no modules found under {package}/"
    assert cycles(graph) == []
