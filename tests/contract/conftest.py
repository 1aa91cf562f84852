"""One MCP client per backend for the contract suite: local (real sandboxed kernels), azure and azure-classic (the
real SDKs against the loopback emulator, whose scripted model runs the given code in a real kernel)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from mcp import Client

from ci_mcp.backends.base import Backend
from ci_mcp.backends.local import sandbox
from ci_mcp.server import create_server
from ci_mcp.settings import Settings
from ci_mcp.store import FileStore
from tests.azure_emulator.server import Emulator
from tests.azure_emulator.state import Faults, default_model
from tests.conftest import seed_font_cache

BACKENDS = ["local", "azure", "azure-classic"]


@pytest.fixture(scope="module")
def contract_emulator() -> Iterator[Emulator]:
    with Emulator() as emu:
        yield emu


@pytest.fixture(params=BACKENDS)
def backend_name(request: pytest.FixtureRequest) -> str:
    name = str(request.param)
    if name == "local" and not sandbox.bwrap_works()[0]:
        pytest.skip("the local contract needs bubblewrap for /mnt/data: " + sandbox.bwrap_works()[1])
    return name


@pytest.fixture
async def contract_client(
    backend_name: str, tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[tuple[Client, Path]]:
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    values: dict[str, Any] = {
        "backend": backend_name,
        "data_dir": tmp_path / "data",
        "allowed_dirs": [allowed],
        "run_timeout_seconds": 60,
        "kernel_preload": False,
    }
    backend: Backend
    if backend_name == "local":
        from ci_mcp.backends.local.backend import LocalBackend

        seed_font_cache(values["data_dir"])
        settings = Settings(**values, kernel_pool_size=0)  # each session's kernel when it runs: no spare to refill
        store = FileStore(settings.data_dir)
        backend = LocalBackend(settings, store)
    else:
        emu: Emulator = request.getfixturevalue("contract_emulator")
        emu.state.model = default_model
        emu.state.faults = Faults()
        settings = Settings(**values, azure_endpoint=emu.endpoint)
        store = FileStore(settings.data_dir)
        if backend_name == "azure":
            from ci_mcp.backends.azure.agents.backend import AzureAgentsBackend

            backend = AzureAgentsBackend(settings, store, credential=emu.credential(), ca_file=emu.ca_file)
        else:
            from ci_mcp.backends.azure.classic.backend import ClassicAgentsBackend

            backend = ClassicAgentsBackend(
                settings,
                store,
                credential=emu.credential(),
                client_options={"connection_verify": emu.ca_file},
            )
    async with Client(create_server(backend, store, settings)) as client:
        yield client, allowed
    store.close()
