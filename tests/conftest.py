"""Shared fixtures: settings on a temporary data directory, and an MCP client connected in memory."""

from __future__ import annotations

import atexit
import base64
import json
import os
import re
import shutil
import sys
import tempfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, Protocol

import pytest
from mcp import Client
from mcp_types import CallToolResult, ImageContent, ResourceLink, TextContent

from ci_mcp.backends.factory import create_backend
from ci_mcp.backends.local import workspace
from ci_mcp.backends.local.backend import prepare_font_cache
from ci_mcp.files import Files, files_for
from ci_mcp.models import RunResult, TextOutput
from ci_mcp.server import create_server
from ci_mcp.settings import Settings
from ci_mcp.store import FileStore

REPO = Path(__file__).resolve().parent.parent
NIFTY_CSV = REPO / "examples" / "data" / "nifty_500_quarterly_results.csv"


# What a developer's shell may set that `Settings` would read: the prefix, and the unprefixed Azure names.
SETTINGS_ENV_PREFIXES = ("CI_MCP_", "AZURE_")
SETTINGS_ENV_NAMES = ("PROJECT_CONNECTION_STRING", "MODEL_DEPLOYMENT_NAME")


@pytest.fixture(autouse=True)
def no_settings_from_the_shell(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test starts without the developer's CI_MCP_* / AZURE_* variables (tests that want one set it)."""
    for name in list(os.environ):
        if name.startswith(SETTINGS_ENV_PREFIXES) or name in SETTINGS_ENV_NAMES:
            monkeypatch.delenv(name)


# `Settings` built only from what the test passes: `Settings(...)` never reads the environment (only
# `Settings.from_env` does, called by the CLI), whatever a test sets in it.
SettingsWithoutEnv = Settings


# Slow groups, by where a test lives: `make test-fast` leaves them out, `make test` runs everything.
SLOW_GROUPS = {
    "azure": ("tests/azure/", "tests/azure_classic/", "tests/contract/"),
    "hostile": (
        "tests/local/test_hostile.py",
        "tests/local/test_privileges.py",
        "tests/local/test_host_walk.py",
        "tests/local/test_zygote.py",
    ),
    "e2e": (
        "tests/local/test_stdio_e2e.py",
        "tests/local/test_start_cache.py",
        "tests/local/test_http_e2e.py",
        "tests/local/test_cli.py",
        "tests/local/test_durability.py",
        "tests/packaging/",
    ),
    # Real sandboxed kernels where the kernel is the subject; the MCP surface itself is in tests/surface (a scripted
    # backend) and the modules' own behaviour in tests/unit, which together are the fast loop.
    "kernel": ("tests/local/",),
}


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--walk",
        choices=("native", "paths"),
        default="native",
        help="paths: walk session directories by paths, as on Windows (no directory file descriptors), in every test",
    )

    parser.addoption(
        "--image-entry",
        default="",
        help="the ci-mcp console script of a clean install (make package's venv): the container image's entry "
        "command test runs it instead of `python -m ci_mcp` from this source tree",
    )


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("--walk") == "paths":
        workspace.DIR_FDS = False


@pytest.fixture(params=["native walk", "path walk"])
def each_walk(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Runs a test with each walk of session directories: by directory file descriptors where the platform has them
    (POSIX), and by paths (what Windows gets)."""
    if request.param == "path walk":
        monkeypatch.setattr(workspace, "DIR_FDS", False)
    elif not workspace.DIR_FDS:
        pytest.skip("this run walks by paths only (--walk=paths, or no directory file descriptors here)")
    return str(request.param)


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the xdist_group marks (--dist loadgroup)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        where = Path(item.path).resolve().relative_to(REPO).as_posix()
        for marker, prefixes in SLOW_GROUPS.items():
            if where.startswith(prefixes):
                item.add_marker(getattr(pytest.mark, marker))
        if _uses_module_fixtures(item):
            item.add_marker(pytest.mark.xdist_group(where))
    # The groups first: each is one worker's long stretch (a built wheel, an emulator's tests), so they start while
    # every worker is free and the single tests fill in behind them, instead of one group running alone at the end.
    items.sort(key=lambda item: item.get_closest_marker("xdist_group") is None)


def pytest_runtest_setup(item: pytest.Item) -> None:
    """On a `--dist loadgroup` worker, every grouped test's id carries its group (`...@group`), which is all the
    scheduler goes by. Where the installed pytest and pytest-xdist do not agree on where the id lives (pytest 9.2
    with pytest-xdist 3.8), the groups split silently across workers, each building its own wheel and starting its
    own emulator: such a test fails instead, saying so."""
    grouped = item.config.getoption("loadgroup", default=False) and item.get_closest_marker("xdist_group")
    if grouped and "@" not in item.nodeid:
        pytest.fail(
            "--dist loadgroup does not apply to this run: the grouped tests' ids lack their group. Install the "
            "pytest and pytest-xdist versions pyproject.toml's dev extra pins (`make setup`).",
            pytrace=False,
        )


def _uses_module_fixtures(item: pytest.Item) -> bool:
    """Whether the test uses a fixture made once per module (an emulator, a built wheel): such a module's tests go
    to one worker together (`make test` runs `--dist loadgroup`), every other test to whichever worker is free."""
    info = getattr(item, "_fixtureinfo", None)
    if info is None:
        return False
    return any(defs and defs[-1].scope in ("module", "package", "class") for defs in info.name2fixturedefs.values())


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def allowed(tmp_path: Path) -> Path:
    root = tmp_path / "allowed"
    root.mkdir()
    return root


_FONT_CACHE: list[Path] = []  # built at the first use in this process (one pytest worker)


def seed_font_cache(data_dir: Path) -> Path:
    """Give a fresh data directory matplotlib's font cache, built once per test process: a backend that finds none
    builds it at start (about 1.1 CPU-seconds), and most tests start a server on a new data directory, in process
    or spawned. Returns `data_dir`."""
    if not _FONT_CACHE:
        cache = Path(tempfile.mkdtemp(prefix="ci-mcp-test-fonts-"))
        atexit.register(shutil.rmtree, cache, ignore_errors=True)
        prepare_font_cache(sys.executable, cache)
        _FONT_CACHE.append(cache)
    target = data_dir / "cache" / "matplotlib"
    built = any(_FONT_CACHE[0].glob("fontlist-*.json"))  # (none where matplotlib is missing: nothing to seed)
    if built and not any(target.glob("fontlist-*.json")):
        shutil.copytree(_FONT_CACHE[0], target, dirs_exist_ok=True)
    return data_dir


@pytest.fixture
def make_settings(tmp_path: Path, allowed: Path) -> Callable[..., Settings]:
    """Settings on a fresh data directory seeded with the font cache. No pre-started pool kernel: a test that never
    runs code starts no kernel (tests of the pool ask for one)."""
    data_dir = seed_font_cache(tmp_path / "data")

    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "data_dir": data_dir,
            "allowed_dirs": [allowed],
            "kernel_pool_size": 0,
            "kernel_preload": False,
            "run_timeout_seconds": 60,
        }
        values.update(overrides)
        return SettingsWithoutEnv(**values)

    return make


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings()


async def open_client(settings: Settings, **client_kwargs: Any) -> tuple[Client, FileStore]:
    store = FileStore(settings.data_dir, max_bytes=settings.max_store_mb * 1024 * 1024)
    server = create_server(create_backend(settings, store), store, settings)
    return Client(server, **client_kwargs), store


class BackendOnStore(Protocol):
    store: FileStore
    settings: Settings


def files_of(backend: BackendOnStore) -> Files:
    """The server's files over `backend`'s store, as `create_server` builds them: uploads go through it (and reach
    the backend's `file_stored`), fetches and listings read from it. Backends have no file methods."""
    return files_for(backend, backend.store, backend.settings.max_upload_bytes)


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[Client]:
    c, store = await open_client(settings)
    async with c:
        yield c
    store.close()


async def kernel_start(client: Client) -> str:
    """How a new session's kernel was started, as the kernel sees it: "zygote" (forked by the zygote: pid 1 of its
    namespace is the zygote's fork, its init) or "cold" (its own bwrap, whose init is pid 1 there). The session is
    closed again."""
    code = "print('zygote_process' in open('/proc/1/cmdline').read())"
    result = await client.call_tool("run_code_analysis", {"code": code})
    assert not result.is_error, all_text(result)
    await client.call_tool("close_session", {"session_id": session_of(result)})
    return "zygote" if texts(result)[1].strip() == "True" else "cold"


async def assert_kernel_start(client: Client, expected: str) -> None:
    got = await kernel_start(client)
    assert got == expected, f"kernels start {got} here, the test wants {expected}"


# -- reading results ---------------------------------------------------------------------------------------------


def texts(result: CallToolResult) -> list[str]:
    return [b.text for b in result.content if isinstance(b, TextContent)]


def all_text(result: CallToolResult) -> str:
    return "\n".join(texts(result))


def images(result: CallToolResult) -> list[bytes]:
    return [base64.b64decode(b.data) for b in result.content if isinstance(b, ImageContent)]


def links(result: CallToolResult) -> list[ResourceLink]:
    return [b for b in result.content if isinstance(b, ResourceLink)]


def stdout_of(result: RunResult) -> str:
    """What a backend's run printed to stdout (backend-level tests, without the MCP face)."""
    return "".join(o.text for o in result.outputs if isinstance(o, TextOutput) and o.kind == "stdout")


def session_of(result: CallToolResult) -> str:
    first = texts(result)[0]
    assert first.startswith("session_id: "), first
    return first.split()[1]


def uploaded_id(result: CallToolResult) -> str:
    assert not result.is_error, all_text(result)
    return all_text(result).split(" as ")[1].split(" ")[0]


QUOTED_NAME_ID = re.compile(r'("(?:[^"\\]|\\.)*") = (file-[0-9a-f]+)')


def generated_ids(result: CallToolResult) -> dict[str, str]:
    """name -> file id, from the 'Generated files' line (names are quoted and escaped as JSON strings)."""
    for line in all_text(result).splitlines():
        if line.startswith("Generated files (fetch_generated_file): "):
            return {json.loads(name): fid for name, fid in QUOTED_NAME_ID.findall(line)}
    return {}


class Sleeps:
    """An injected `sleep` that records the waits asked for and returns at once (no test waits on a clock), and
    the `clock` it advances by each of them."""

    def __init__(self) -> None:
        self.calls: list[float] = []
        self.now = 1000.0

    async def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)
        self.now += seconds

    def clock(self) -> float:
        return self.now


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()
