"""Fixtures: one emulator (https, throw-away CA) for the whole run, reset per test; backends wired to it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from mcp import Client

from ci_mcp.backends.azure.agents.backend import AzureAgentsBackend
from ci_mcp.backends.azure.errors import RetryPolicy
from ci_mcp.server import create_server
from ci_mcp.settings import Settings
from ci_mcp.store import FileStore
from tests.azure_emulator.server import Emulator

RESPONSES = "POST /openai/v1/responses"
"""The request-log route of a streamed (or background) response."""
FAST_RETRIES = RetryPolicy(attempts=4, base_delay=0.01, max_wait=5.0)


@pytest.fixture(scope="session")
def shared_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
    with Emulator(tmp_path_factory.mktemp("azure-emulator")) as emu:
        yield emu


@pytest.fixture
def emu(shared_emulator: Emulator) -> Iterator[Emulator]:
    shared_emulator.state.reset()
    yield shared_emulator
    shared_emulator.state.reset()
    shared_emulator.call_soon(shared_emulator.state.release_kernels())


@pytest.fixture
def azure_settings(emu: Emulator, tmp_path: Path) -> Callable[..., Settings]:
    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "backend": "azure",
            "data_dir": tmp_path / "data",
            "azure_endpoint": emu.endpoint,
            "run_timeout_seconds": 60,
        }
        values.update(overrides)
        return Settings(**values)

    return make


@pytest.fixture
async def make_backend(
    emu: Emulator, azure_settings: Callable[..., Settings]
) -> AsyncIterator[Callable[..., Awaitable[AzureAgentsBackend]]]:
    made: list[tuple[AzureAgentsBackend, FileStore]] = []

    async def make(credential: Any = None, **overrides: Any) -> AzureAgentsBackend:
        settings = azure_settings(**overrides)
        store = FileStore(settings.data_dir)
        backend = AzureAgentsBackend(
            settings,
            store,
            credential=credential or emu.credential(),
            ca_file=emu.ca_file,
            retry_policy=FAST_RETRIES,
        )
        await backend.start()
        made.append((backend, store))
        return backend

    yield make
    for backend, store in made:
        await backend.aclose()
        store.close()


@pytest.fixture
async def backend(make_backend: Callable[..., Awaitable[AzureAgentsBackend]]) -> AzureAgentsBackend:
    return await make_backend()


@pytest.fixture
async def mcp(backend: AzureAgentsBackend, azure_settings: Callable[..., Settings]) -> AsyncIterator[Client]:
    """An in-memory MCP client talking to a server on the `backend` fixture (the emulator behind it)."""
    async with Client(create_server(backend, backend.store, azure_settings())) as client:
        yield client


class ProgressLog:
    """A progress callback that records messages (and can signal when one arrives)."""

    def __init__(self) -> None:
        self.messages: list[str] = []
        self.values: list[float] = []

    async def __call__(self, progress: float, total: float | None, message: str) -> None:
        self.values.append(progress)
        self.messages.append(message)


@pytest.fixture
def progress() -> ProgressLog:
    return ProgressLog()
