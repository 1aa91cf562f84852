"""The MCP surface over the scripted backend (tests/fakes.py): no kernel starts, so these run in seconds.

`client` here is connected to a `FakeBackend` (the `backend` fixture) instead of the local backend; `connect` builds
one with other settings or client options. Real kernels are tested in tests/local/ where the kernel is the subject.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from mcp import Client

from ci_mcp.server import create_server
from ci_mcp.settings import Settings
from ci_mcp.store import FileStore
from tests.conftest import SettingsWithoutEnv
from tests.fakes import FakeBackend

MB = 1024 * 1024


@pytest.fixture
def make_settings(tmp_path: Path, allowed: Path) -> Callable[..., Settings]:
    """Settings on a fresh data directory; no font cache to seed, since no kernel runs here."""

    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {"data_dir": tmp_path / "data", "allowed_dirs": [allowed]}
        values.update(overrides)
        return SettingsWithoutEnv(**values)

    return make


def fake_backend(settings: Settings, **kwargs: Any) -> FakeBackend:
    store = FileStore(settings.data_dir, max_bytes=settings.max_store_mb * MB)
    return FakeBackend(store, **kwargs)


@asynccontextmanager
async def connect(
    settings: Settings, backend: FakeBackend | None = None, **client_kwargs: Any
) -> AsyncIterator[tuple[Client, FakeBackend]]:
    """An in-memory MCP client on a server around `backend` (a fresh fake when None)."""
    backend = backend or fake_backend(settings)
    try:
        async with Client(create_server(backend, backend.store, settings), **client_kwargs) as client:
            yield client, backend
    finally:
        backend.store.close()


@pytest.fixture
def backend(settings: Settings) -> Iterator[FakeBackend]:
    fake = fake_backend(settings)
    yield fake
    fake.store.close()


@pytest.fixture
async def client(settings: Settings, backend: FakeBackend) -> AsyncIterator[Client]:
    async with Client(create_server(backend, backend.store, settings)) as c:
        yield c
