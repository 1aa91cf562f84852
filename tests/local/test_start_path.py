"""What the server does before it can answer `initialize` (issue 12): settings from the environment without
pydantic-settings, no kernel client libraries, and the kernel's Python probed while the rest is imported."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from ci_mcp.backends.local import interpreter, sandbox
from ci_mcp.settings import Settings
from tests.conftest import REPO

# Built exactly as `ci-mcp` (stdio) builds its server, stopping before it serves.
BUILD_SERVER = """
import json, os, sys
from ci_mcp.cli import _parser, load_settings
from ci_mcp.backends.factory import create_backend
from ci_mcp.server import create_server
from ci_mcp.store import FileStore
settings = load_settings(_parser().parse_args([]))
store = FileStore(settings.data_dir)
server = create_server(create_backend(settings, store), store, settings)
heavy = ("pydantic_settings", "jupyter_client", "zmq", "PIL", "azure", "openai", "numpy")
print(json.dumps(sorted({name.split(".")[0] for name in sys.modules if name.split(".")[0] in heavy})))
"""


def test_serving_initialize_imports_no_kernel_client_settings_library_or_azure_sdk(tmp_path: Path) -> None:
    env = {
        "PATH": os.environ.get("PATH", ""),
        "PYTHONPATH": str(REPO / "src"),
        "HOME": str(tmp_path),
        "CI_MCP_DATA_DIR": str(tmp_path / "data"),
        "CI_MCP_SANDBOX": "auto",
    }
    done = subprocess.run(
        [sys.executable, "-c", BUILD_SERVER], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []


def test_settings_from_the_environment_without_pydantic_settings(tmp_path: Path) -> None:
    environ = {
        "ci_mcp_max_sessions": "3",  # names are case-insensitive, as before
        "CI_MCP_KERNEL_PRELOAD": "false",
        "CI_MCP_ALLOWED_DIRS": os.pathsep.join([str(tmp_path / "a"), str(tmp_path / "b")]),
        "CI_MCP_HTTP_TOKENS": "alice:t1, t2",
        "AZURE_AI_PROJECT_ENDPOINT": "https://a.services.ai.azure.com/api/projects/p",
        "MODEL_DEPLOYMENT_NAME": "gpt-x",
        "CI_MCP_LOG_LEVEL": "debug",
        "CI_MCP_PORT": "9000",
        "UNRELATED": "x",
    }
    settings = Settings.from_env(environ, port=9100)
    assert settings.max_sessions == 3
    assert settings.kernel_preload is False
    assert settings.allowed_dirs == [tmp_path / "a", tmp_path / "b"]
    assert settings.http_tokens == ["alice:t1", "t2"]
    assert settings.azure_endpoint == "https://a.services.ai.azure.com/api/projects/p"
    assert settings.azure_model == "gpt-x"
    assert settings.log_level == "DEBUG"
    assert settings.port == 9100  # a flag wins over the environment
    # The prefixed name wins over the usual Azure names, and a plain Settings(...) reads no environment.
    both = {"CI_MCP_AZURE_ENDPOINT": "https://mine/api/projects/p", "AZURE_AI_PROJECT_ENDPOINT": "https://other"}
    assert Settings.from_env(both).azure_endpoint == "https://mine/api/projects/p"
    assert Settings(data_dir=tmp_path).max_sessions == Settings.model_fields["max_sessions"].default


def test_the_kernel_python_probe_runs_in_the_background_and_can_be_cancelled(tmp_path: Path) -> None:
    env = sandbox.kernel_env(str(tmp_path))
    started = interpreter.Probe(sys.executable, env)
    assert started.result() == interpreter.probe(sys.executable, env)
    assert started.result().version == sys.version.split()[0]
    cancelled = interpreter.Probe(sys.executable, env)
    cancelled.cancel()
    assert cancelled.result().error
