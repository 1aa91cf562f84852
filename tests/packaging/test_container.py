"""The container image: its Dockerfile's promises, and its entry command run the way the image runs it.

The image itself is built where a container builder answers (`docker info`, else `podman info`) and the Dockerfile's
base image is there or can be pulled; elsewhere that test is skipped and says why. The entry command is run either
way, with the image's environment and its volumes mapped to temporary directories: from this source tree, or, with
`--image-entry` (what `make package` passes), the `ci-mcp` of a clean install of the wheel, as the image installs it.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
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
async def test_the_images_entry_command_serves_the_mounted_data_folder_over_stdio(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    mounts = {"/data": tmp_path / "data", image_env()["CI_MCP_DATA_DIR"]: tmp_path / "store"}
    for host in mounts.values():
        host.mkdir()
    mapped = {name: mounts.get(value, value) for name, value in image_env().items()}
    env = {k: str(v) for k, v in mapped.items()} | {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path)}
    (mounts["/data"] / "sales.csv").write_text("region,amount\nnorth,3\nsouth,4\n")
    entry = str(request.config.getoption("--image-entry"))
    if entry:  # ENTRYPOINT ["ci-mcp"], no arguments, as installed by pip from the package
        command, args = entry, []
    else:  # the console script of ci_mcp.cli:main is what `python -m ci_mcp` runs
        command, args = sys.executable, ["-m", "ci_mcp"]
        env["PYTHONPATH"] = str(REPO / "src")
    params = StdioServerParameters(command=command, args=args, env=env, cwd=str(mounts["/data"]))
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


def _last_line(text: str) -> str:
    return (text.strip().splitlines() or ["(no output)"])[-1][:300]


def container_builder() -> tuple[str | None, str]:
    """The first of docker and podman that answers `info`, or None and why neither does."""
    reasons = []
    for tool in ("docker", "podman"):
        if shutil.which(tool) is None:
            reasons.append(f"{tool} is not installed")
            continue
        try:
            done = subprocess.run([tool, "info"], capture_output=True, text=True, timeout=60, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            reasons.append(f"`{tool} info` failed ({exc})")
            continue
        if done.returncode == 0:
            return tool, ""
        reasons.append(f"`{tool} info` failed ({_last_line(done.stderr)})")
    return None, "; ".join(reasons)


def base_image(tool: str) -> str:
    """'' when the Dockerfile's base image is here or could be pulled, else why not."""
    base = one("FROM")
    if subprocess.run([tool, "image", "inspect", base], capture_output=True, timeout=60, check=False).returncode == 0:
        return ""
    pulled = subprocess.run([tool, "pull", base], capture_output=True, text=True, timeout=600, check=False)
    return "" if pulled.returncode == 0 else f"the base image {base} could not be pulled: {_last_line(pulled.stderr)}"


@pytest.mark.anyio
async def test_the_image_builds_and_serves_the_mounted_data_folder_over_stdio(tmp_path: Path) -> None:
    """`make image`, then what an MCP client launches: `docker run -i --rm -v DATA:/data ci-mcp` (or podman)."""
    tool, why = container_builder()
    if tool is None:
        pytest.skip(f"no container builder here: {why}")
    missing = base_image(tool)
    if missing:
        pytest.skip(missing)
    tag = "ci-mcp:test"
    build = subprocess.run([tool, "build", "-t", tag, str(REPO)], capture_output=True, text=True, timeout=1200)
    assert build.returncode == 0, build.stderr[-3000:]
    done = subprocess.run([tool, "run", "--rm", tag, "--version"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.startswith("ci-mcp "), done.stderr
    data = tmp_path / "data"
    data.mkdir(mode=0o777)
    data.chmod(0o777)  # the image's user (uid 10001) writes results here
    (data / "sales.csv").write_text("region,amount\nnorth,3\nsouth,4\n")
    params = StdioServerParameters(command=tool, args=["run", "-i", "--rm", "-v", f"{data}:/data", tag])
    async with Client(params) as client:
        fid = uploaded_id(await client.call_tool("upload_file", {"path": "/data/sales.csv"}))
        code = "import pandas as pd\nd = pd.read_csv('sales.csv')\nd.to_csv('total.csv')\nprint(d.amount.sum())"
        result = await client.call_tool("run_code_analysis", {"code": code, "file_ids": [fid]})
        assert not result.is_error and "7" in all_text(result), all_text(result)
        saved = await client.call_tool(
            "fetch_generated_file", {"file_id": generated_ids(result)["total.csv"], "save_to": "/data"}
        )
        assert not saved.is_error, all_text(saved)
    assert (data / "total.csv").exists()
