"""The operator's layers, checked from the imports (as kopf checks its own with import-linter)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from ..conftest import ROOT

PACKAGE = ROOT / "cachedapi"


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def _modules(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.py"))


def _uses(path: Path, prefix: str) -> bool:
    return any(name == prefix or name.startswith(prefix + ".") for name in _imports(path))


def test_kopf_is_imported_only_where_handlers_are_registered() -> None:
    users = {p.relative_to(PACKAGE).as_posix() for p in _modules(PACKAGE) if _uses(p, "kopf")}
    assert users == {"operator/handlers.py"}


def test_only_the_kube_module_speaks_http_to_the_api_server() -> None:
    users = {p.relative_to(PACKAGE).as_posix() for p in _modules(PACKAGE / "operator") if _uses(p, "aiohttp")}
    assert users == {"operator/kube.py"}


@pytest.mark.parametrize("path", _modules(PACKAGE / "operator" / "children"), ids=lambda p: p.name)
def test_child_builders_are_pure(path: Path) -> None:
    for layer in ("kube", "reconcile", "controller", "handlers", "scheduler", "status", "drift"):
        assert not _uses(path, f"cachedapi.operator.{layer}"), layer
    assert not _uses(path, "aiohttp") and not _uses(path, "kopf")


def test_the_runtime_never_imports_the_operator() -> None:
    for path in _modules(PACKAGE / "runtime"):
        assert not _uses(path, "cachedapi.operator"), path
