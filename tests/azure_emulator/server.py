"""The emulator process-in-a-thread: uvicorn + Starlette on 127.0.0.1, ephemeral port.

Auth and TLS (how the real SDKs are used unmodified):
- By default the emulator serves **https** with a throw-away CA made by `trustme`. azure-core's bearer policy refuses
  plain http, so TLS keeps the SDKs' real `BearerTokenCredentialPolicy` and the openai bearer provider in play.
  Clients trust the CA through `emulator.ca_file` (a PEM path: `connection_verify=` for azure-core/requests) or
  `emulator.ssl_context()` (an `ssl.SSLContext` for httpx2 / openai `http_client`).
- Every route requires `Authorization: Bearer <token>` with a token in `state.accepted_tokens` (default
  "emulator-token"); `credential.EmulatorCredential` hands that token out. Set `state.require_auth = False` to
  switch the check off, or change the token to see 401s.
- `Emulator(tls=False)` serves plain http for tests that inject an `authentication_policy` instead.

Routes: tests/azure_emulator/new_agents.py (`routes(state)`) always; tests/azure_emulator/classic_routes.py
(`routes(state)`) when that module exists. Both are mounted under `/api/projects/<project>`.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import socket
import ssl
import tempfile
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from types import TracebackType
from typing import Any

import trustme
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Mount, Route

from .credential import EmulatorCredential
from .state import EmulatorState

_START_TIMEOUT = 30.0


def _route_modules() -> list[Any]:
    modules = [importlib.import_module(f"{__package__}.new_agents")]
    classic = f"{__package__}.classic_routes"
    if importlib.util.find_spec(classic) is not None:
        modules.append(importlib.import_module(classic))
    return modules


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, ready: threading.Event) -> None:
        super().__init__(config)
        self._ready = ready

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        self._ready.set()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        # Idle TLS keep-alive connections wait for a close_notify the clients never send: abort them.
        for connection in list(self.server_state.connections):
            transport = getattr(connection, "transport", None)
            if transport is not None:
                transport.abort()
        await super().shutdown(sockets)


MANAGED_IDENTITY_HEADER = "emulator-identity-header"


class Emulator:
    """`with Emulator() as emu:` (or `async with`) starts the server; `emu.endpoint` is the project endpoint."""

    def __init__(self, root: Path | None = None, *, tls: bool = True, project: str = "p") -> None:
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if root is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="azure-emulator-")
            root = Path(self._tmp.name)
        root.mkdir(parents=True, exist_ok=True)
        self.root = root
        self.tls = tls
        self.state = EmulatorState(root / "state", project=project)
        self._ca = trustme.CA() if tls else None
        self.ca_file: str | None = None
        self._thread: threading.Thread | None = None
        self._server: _Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.port = 0

    # -- what clients need -------------------------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    @property
    def endpoint(self) -> str:
        return f"{self.base_url}/api/projects/{self.state.project}"

    def credential(self) -> EmulatorCredential:
        return EmulatorCredential(next(iter(self.state.accepted_tokens)))

    def ssl_context(self) -> ssl.SSLContext | bool:
        """Client context trusting the emulator's CA (True when serving http)."""
        if self._ca is None:
            return True
        ctx = ssl.create_default_context()
        self._ca.configure_trust(ctx)
        return ctx

    # -- lifecycle ---------------------------------------------------------------------------------------------------

    def _app(self) -> Starlette:
        state = self.state

        @asynccontextmanager
        async def lifespan(app: Starlette) -> AsyncIterator[None]:
            self._loop = asyncio.get_running_loop()
            state.runner.warm()
            try:
                yield
            finally:
                await state.aclose()

        routes: list[BaseRoute] = []
        for module in _route_modules():
            routes.extend(module.routes(state))

        async def managed_identity_token(request: Request) -> JSONResponse:
            """App Service managed identity (IDENTITY_ENDPOINT + IDENTITY_HEADER), as DefaultAzureCredential asks it,
            so a `ci-mcp` subprocess can authenticate with no test-only code in its credential chain."""
            if request.headers.get("x-identity-header") != MANAGED_IDENTITY_HEADER:
                return JSONResponse({"error": "unauthorized"}, status_code=401)
            resource = request.query_params.get("resource", "")
            state.extra["managed_identity_tokens"] = int(state.extra.get("managed_identity_tokens", 0)) + 1
            return JSONResponse(
                {
                    "access_token": next(iter(state.accepted_tokens)),
                    "expires_on": str(int(time.time()) + 3600),
                    "resource": resource,
                    "token_type": "Bearer",
                }
            )

        return Starlette(
            routes=[
                Route("/msi/token", managed_identity_token, methods=["GET"]),
                Mount(f"/api/projects/{state.project}", routes=routes),
            ],
            lifespan=lifespan,
        )

    def managed_identity_env(self) -> dict[str, str]:
        """Environment for a subprocess whose DefaultAzureCredential should get its token from this emulator."""
        env = {"IDENTITY_ENDPOINT": f"{self.base_url}/msi/token", "IDENTITY_HEADER": MANAGED_IDENTITY_HEADER}
        if self.ca_file:
            env["REQUESTS_CA_BUNDLE"] = self.ca_file
        return env

    def start(self) -> Emulator:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        ssl_kwargs: dict[str, Any] = {}
        if self._ca is not None:
            cert = self._ca.issue_cert("127.0.0.1", "localhost")
            pem = self.root / "emulator-server.pem"
            cert.private_key_and_cert_chain_pem.write_to_path(str(pem))
            ca = self.root / "emulator-ca.pem"
            self._ca.cert_pem.write_to_path(str(ca))
            self.ca_file = str(ca)
            ssl_kwargs = {"ssl_certfile": str(pem), "ssl_keyfile": str(pem)}
        config = uvicorn.Config(
            self._app(),
            log_level="warning",
            lifespan="on",
            timeout_graceful_shutdown=3,
            **ssl_kwargs,
        )
        ready = threading.Event()
        self._server = _Server(config, ready)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, name="azure-emulator", daemon=True
        )
        self._thread.start()
        if not ready.wait(_START_TIMEOUT):
            raise RuntimeError("the Azure emulator did not start within 30 s")
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=30)
        self._server = self._thread = None
        if self._tmp is not None:
            self._tmp.cleanup()

    def call_soon(self, coro: Any) -> Any:
        """Run a coroutine on the emulator loop from the test thread and wait (bounded) for its result."""
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=60)

    def __enter__(self) -> Emulator:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    async def __aenter__(self) -> Emulator:
        return await asyncio.to_thread(self.start)

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await asyncio.to_thread(self.stop)
