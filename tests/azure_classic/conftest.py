"""Fixtures for the azure-classic backend: one emulator per module (real azure-ai-agents SDK over https on
127.0.0.1, real kernels), a fresh store and backend per test, and a sleep that records instead of waiting."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ci_mcp.backends.azure.classic.backend import ClassicAgentsBackend
from ci_mcp.models import RunRequest
from ci_mcp.settings import Settings
from ci_mcp.store import FileStore
from tests.azure_emulator.server import Emulator
from tests.azure_emulator.state import Faults, default_model
from tests.conftest import Sleeps


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def emulator() -> Iterator[Emulator]:
    with Emulator() as emu:
        yield emu


@pytest.fixture(autouse=True)
def _fresh_script(request: pytest.FixtureRequest) -> None:
    """Tests that use the emulator start from the default model and no queued faults."""
    if "emulator" in request.fixturenames:
        emu: Emulator = request.getfixturevalue("emulator")
        emu.state.model = default_model
        emu.state.faults = Faults()
        emu.state.extra.pop("classic.requires_action", None)
        emu.state.extra.pop("classic.upload_scripts", None)


@pytest.fixture
def make_backend(emulator: Emulator, tmp_path: Path, sleeps: Sleeps) -> Iterator[Callable[..., ClassicAgentsBackend]]:
    stores: list[FileStore] = []

    def make(**overrides: Any) -> ClassicAgentsBackend:
        values: dict[str, Any] = {
            "backend": "azure-classic",
            "azure_endpoint": emulator.endpoint,
            "azure_model": "gpt-4o",
            "data_dir": tmp_path / f"data{len(stores)}",
            "run_timeout_seconds": 60,
        }
        values.update(overrides)
        settings = Settings(**values)
        store = FileStore(settings.data_dir)
        stores.append(store)
        return ClassicAgentsBackend(
            settings,
            store,
            credential=emulator.credential(),
            client_options={"connection_verify": emulator.ca_file},
            sleep=sleeps,
            clock=sleeps.clock,
        )

    yield make
    for store in stores:
        store.close()


@pytest.fixture
async def backend(make_backend: Callable[..., ClassicAgentsBackend]) -> AsyncIterator[ClassicAgentsBackend]:
    b = make_backend()
    await b.start()
    yield b
    await b.aclose()


class Progress:
    def __init__(self) -> None:
        self.messages: list[str] = []

    async def __call__(self, progress: float, total: float | None, message: str) -> None:
        self.messages.append(message)


@pytest.fixture
def progress() -> Progress:
    return Progress()


def code(source: str, *file_ids: str, session_id: str | None = None, timeout: float | None = None) -> RunRequest:
    return RunRequest(session_id=session_id, code=source, request=None, file_ids=file_ids, timeout_seconds=timeout)
