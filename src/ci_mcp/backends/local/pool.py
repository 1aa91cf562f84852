"""A small pool of pre-started kernels, each with its own empty workspace, so a new session starts warm."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import anyio
from anyio.abc import TaskGroup

from ci_mcp.backends.local.kernel import Kernel

log = logging.getLogger(__name__)


@dataclass
class WarmKernel:
    kernel: Kernel
    workspace: Path


class KernelPool:
    def __init__(self, size: int, make: Callable[[], Awaitable[WarmKernel]]) -> None:
        self.size = size
        self._make = make
        self._ready: list[WarmKernel] = []
        self._filling = False
        self._tg: TaskGroup | None = None
        self._closed = False
        self.last_error: str | None = None

    def attach(self, tg: TaskGroup) -> None:
        self._tg = tg
        self.refill()

    def take(self) -> WarmKernel | None:
        """A ready kernel, or None. One that died while it waited (for instance with the zygote it was forked from)
        is cleaned up and skipped."""
        warm = None
        while self._ready and warm is None:
            warm = self._ready.pop(0)
            if not warm.kernel.alive:
                if self._tg is not None:
                    self._tg.start_soon(self._discard, warm)
                warm = None
        self.refill()
        return warm

    async def _discard(self, warm: WarmKernel) -> None:
        with anyio.CancelScope(shield=True):
            await warm.kernel.stop()
        shutil.rmtree(warm.workspace, ignore_errors=True)

    def refill(self) -> None:
        if self._tg is not None and not self._filling and len(self._ready) < self.size:
            self._filling = True
            self._tg.start_soon(self._fill)

    async def _fill(self) -> None:
        try:
            while len(self._ready) < self.size and not self._closed:
                try:
                    warm = await self._make()
                    if self._closed:  # closed while it started: nobody will take it
                        with anyio.CancelScope(shield=True):
                            await warm.kernel.stop()
                        shutil.rmtree(warm.workspace, ignore_errors=True)
                        return
                    self._ready.append(warm)
                    self.last_error = None
                except Exception as exc:  # keep serving: sessions start cold instead
                    self.last_error = str(exc)
                    log.warning("could not pre-start a kernel: %s", exc)
                    return
        finally:
            self._filling = False

    async def aclose(self) -> None:
        self._closed = True
        ready, self._ready = self._ready, []
        self._tg = None
        with anyio.CancelScope(shield=True):
            for warm in ready:
                await warm.kernel.stop()
                shutil.rmtree(warm.workspace, ignore_errors=True)
