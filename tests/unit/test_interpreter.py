"""interpreter.Probe: the kernel's Python asked in the background; a probe nobody reads leaves nothing behind."""

from __future__ import annotations

import sys
from pathlib import Path

from ci_mcp.backends.local import interpreter, sandbox


def test_a_probe_cancelled_after_it_finished_unread_closes_its_pipes_and_removes_its_home(tmp_path: Path) -> None:
    probe = interpreter.Probe(sys.executable, sandbox.kernel_env(str(tmp_path)))
    proc = probe._proc
    assert proc is not None and proc.stdout is not None and proc.stderr is not None
    proc.wait(timeout=60)  # finished, and nobody read the answer (a backend closed before it needed it)
    probe.cancel()
    assert proc.stdout.closed and proc.stderr.closed
    assert not Path(probe._home.name).exists()
    assert probe.result().error == "the probe was cancelled"


def test_a_probe_cancelled_while_running_is_killed_and_reaped(tmp_path: Path) -> None:
    probe = interpreter.Probe(sys.executable, sandbox.kernel_env(str(tmp_path)))
    probe.cancel()
    assert probe._proc is not None and probe._proc.returncode is not None
    assert probe._proc.stdout is not None and probe._proc.stdout.closed
    assert not Path(probe._home.name).exists()
