"""The wheel and sdist a user installs: built with `python -m build`, checked with twine, metadata complete.

`make package` goes further (the wheel in a fresh venv, `ci-mcp doctor` from it); it is too slow for every run.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import tarfile
import zipfile
from email.message import Message
from email.parser import Parser
from pathlib import Path

import pytest

from tests.conftest import REPO

needs_build = pytest.mark.skipif(
    importlib.util.find_spec("build") is None,
    reason="the `build` package is not installed here (it is in the dev extra: `make setup`)",
)


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    done = subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(out), str(REPO)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out


def wheel_metadata(dist: Path) -> tuple[Message, list[str]]:
    (wheel,) = dist.glob("*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        meta_name = next(n for n in names if n.endswith(".dist-info/METADATA"))
        return Parser().parsestr(zf.read(meta_name).decode()), names


@needs_build
def test_default_install_requires_the_analysis_libraries(dist: Path) -> None:
    meta, _ = wheel_metadata(dist)
    unconditional = {
        r.split(";")[0].split(">")[0].split("<")[0].split("=")[0].strip().lower()
        for r in meta.get_all("Requires-Dist") or []
        if "extra ==" not in r
    }
    assert {"numpy", "pandas", "matplotlib", "openpyxl", "ipython", "matplotlib-inline", "mcp"} <= unconditional
    # the kernel is ci-mcp's IPython worker: no Jupyter messaging in a default install
    assert not {"ipykernel", "jupyter-client", "jupyter_client", "pyzmq"} & unconditional, unconditional
    # the old extra still resolves, so `pip install 'ci-mcp[analysis]'` keeps working without a warning
    assert "analysis" in (meta.get_all("Provides-Extra") or [])


@needs_build
def test_wheel_carries_license_urls_classifiers_and_readme(dist: Path) -> None:
    meta, names = wheel_metadata(dist)
    assert meta["License-Expression"] == "MIT"
    assert set(meta.get_all("License-File") or []) >= {"LICENSE", "NOTICE"}
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert meta["Requires-Python"] == ">=3.11"
    assert any(u.startswith("Repository, https://") for u in meta.get_all("Project-URL") or [])
    assert any(c.startswith("Programming Language :: Python :: 3.11") for c in meta.get_all("Classifier") or [])
    assert meta["Description-Content-Type"] == "text/markdown"
    assert "ci_mcp/py.typed" in names
    assert not any(n.startswith("tests/") for n in names), "tests must not ship in the wheel"
    # the MCP registry proves PyPI ownership by this marker in the package's description (the README, as built)
    name = json.loads((REPO / "server.json").read_text())["name"]
    assert f"mcp-name: {name}" in str(meta.get_payload())


@needs_build
def test_sdist_builds_a_wheel_by_itself(dist: Path, tmp_path: Path) -> None:
    """The sdist is complete: a wheel built from it alone has the same files as the one built from the tree."""
    (sdist,) = dist.glob("*.tar.gz")
    with tarfile.open(sdist) as tf:
        tf.extractall(tmp_path, filter="data")
    (root,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--outdir", str(out), str(root)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (rebuilt,) = out.glob("*.whl")
    (original,) = dist.glob("*.whl")
    with zipfile.ZipFile(rebuilt) as a, zipfile.ZipFile(original) as b:
        assert sorted(a.namelist()) == sorted(b.namelist())


@needs_build
@pytest.mark.skipif(importlib.util.find_spec("twine") is None, reason="twine is not installed (dev extra)")
def test_twine_check_passes(dist: Path) -> None:
    files = [str(p) for p in sorted(dist.iterdir())]
    done = subprocess.run(
        [sys.executable, "-m", "twine", "check", "--strict", *files],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
