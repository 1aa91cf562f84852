"""The Azure backends' layout: `agents/` and `classic/` stand on the shared core and never on each other."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import ci_mcp.backends.azure as azure_pkg

ROOT = Path(azure_pkg.__file__).parent
PREFIX = "ci_mcp.backends.azure"


def imported(path: Path) -> set[str]:
    """Every module `path` imports (at any depth of the file, lazy imports included)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


@pytest.mark.parametrize(("package", "other"), [("agents", "classic"), ("classic", "agents")])
def test_a_backend_package_never_imports_the_other(package: str, other: str) -> None:
    offenders = {
        str(path.relative_to(ROOT)): sorted(m for m in imported(path) if m.startswith(f"{PREFIX}.{other}"))
        for path in (ROOT / package).glob("*.py")
    }

    assert {k: v for k, v in offenders.items() if v} == {}


def test_the_shared_core_imports_neither_backend_package() -> None:
    core = sorted(ROOT.glob("*.py"))
    offenders = {
        path.name: sorted(m for m in imported(path) if m.startswith((f"{PREFIX}.agents", f"{PREFIX}.classic")))
        for path in core
    }

    assert [p.name for p in core] == [
        "__init__.py",
        "checks.py",
        "credential.py",
        "errors.py",
        "remote_files.py",
        "transport.py",
    ]
    assert {k: v for k, v in offenders.items() if v} == {}
