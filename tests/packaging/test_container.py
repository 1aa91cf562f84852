"""The container image: its Dockerfile's promises, and its entry command run the way the image runs it.

The image itself is built only where a Docker daemon answers (`docker info`); elsewhere the entry command is run
here with the image's environment, its volumes mapped to temporary directories.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from mcp import Client, StdioServerParameters

from tests.conftest import REPO, all_text, generated_ids, uploaded_id

DOCKERFILE = REPO / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined, comments dropped."""
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    found = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            found.append((word.upper(), rest.strip()))
    return found


def image_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for word, rest in instructions():
        if word == "ENV":
            for pair in shlex.split(rest):
                name, _, value = pair.partition("=")
                env[name] = value
    return env


def one(word: str) -> str:
    (value,) = [rest for w, rest in instructions() if w == word]
    return value


def test_dockerfile_is_a_debian_slim_python_with_bubblewrap_run_as_a_user_over_stdio() -> None:
    assert one("FROM").startswith("python:3.11-slim-")
    assert any(w == "RUN" and "apt-get install" in r and "bubblewrap" in r for w, r in instructions())
    assert one("USER") not in ("root", "0")
    assert json.loads(one("ENTRYPOINT")) == ["ci-mcp"]  # no arguments: serve MCP over stdio
    assert set(json.loads(one("VOLUME"))) == {"/data", image_env()["CI_MCP_DATA_DIR"]}
    assert image_env()["CI_MCP_ALLOWED_DIRS"] == "/data" == one("WORKDIR")


@pytest.mark.anyio
async def test_the_images_entry_command_serves_the_mounted_data_folder_over_stdio(tmp_path: Path) -> None:
    mounts = {"/data": tmp_path / "data", image_env()["CI_MCP_DATA_DIR"]: tmp_path / "store"}
    for host in mounts.values():
        host.mkdir()
    mapped = {name: mounts.get(value, value) for name, value in image_env().items()}
    env = {k: str(v) for k, v in mapped.items()} | {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(tmp_path),
        "PYTHONPATH": str(REPO / "src"),
    }
    (mounts["/data"] / "sales.csv").write_text("region,amount\nnorth,3\nsouth,4\n")
    # ENTRYPOINT ["ci-mcp"] is the console script of ci_mcp.cli:main, which is what `python -m ci_mcp` runs
    params = StdioServerParameters(command=sys.executable, args=["-m", "ci_mcp"], env=env, cwd=str(mounts["/data"]))
    async with Client(params) as client:
        fid = uploaded_id(await client.call_tool("upload_file", {"path": str(mounts["/data"] / "sales.csv")}))
        code = "import pandas as pd\nd = pd.read_csv('sales.csv')\nd.to_csv('total.csv')\nprint(d.amount.sum())"
        result = await client.call_tool("run_code_analysis", {"code": code, "file_ids": [fid]})
        assert not result.is_error, all_text(result)
        assert "7" in all_text(result)
        saved = await client.call_tool(
            "fetch_generated_file",
            {"file_id": generated_ids(result)["total.csv"], "save_to": str(mounts["/data"])},
        )
        assert not saved.is_error, all_text(saved)
    assert (mounts["/data"] / "total.csv").exists()
    assert (mounts[image_env()["CI_MCP_DATA_DIR"]] / "meta.sqlite3").exists()  # the store is on its own volume


def docker_works() -> bool:
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=30, check=False).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.mark.skipif(not docker_works(), reason="no Docker daemon answers `docker info` on this machine")
def test_the_image_builds_and_answers_its_version() -> None:
    tag = "ci-mcp:test"
    build = subprocess.run(["docker", "build", "-t", tag, str(REPO)], capture_output=True, text=True, timeout=1200)
    assert build.returncode == 0, build.stderr[-3000:]
    done = subprocess.run(["docker", "run", "--rm", tag, "--version"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.startswith("ci-mcp "), done.stderr
