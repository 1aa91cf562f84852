"""`ci-mcp doctor`: checks the configuration and the backend and says what is wrong in plain words."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from ci_mcp.settings import Settings

Check = tuple[str, bool, str]


async def doctor(settings: Settings) -> int:
    checks: list[Check] = [("backend", True, settings.backend)]
    checks.append(_data_dir(settings.data_dir))
    checks.append(_allowed_dirs(settings))
    if settings.backend == "local":
        checks += await _local(settings)
    elif settings.backend == "azure-classic":
        from ci_mcp.backends.azure.classic import diagnose as diagnose_classic

        checks += await diagnose_classic(settings)
    else:
        from ci_mcp.backends.azure.doctor import diagnose

        checks += await diagnose(settings)
    width = max(len(name) for name, _, _ in checks)
    for name, ok, message in checks:
        print(f"{'ok ' if ok else 'FAIL'} {name.ljust(width)}  {message}")
    failed = [c for c in checks if not c[1]]
    print("\nAll checks passed." if not failed else f"\n{len(failed)} check(s) failed.")
    return 0 if not failed else 1


def _allowed_dirs(settings: Settings) -> Check:
    """The effective roots for upload_file/save_to before any client narrows them. None is a state, not a fault:
    inline uploads still work."""
    from ci_mcp import paths

    roots = paths.effective_roots(settings.allowed_dirs, None, Path.cwd(), Path.home())
    if not roots:
        return ("allowed dirs", True, "NONE, reading and writing host files is off. " + roots.reason)
    source = (
        "CI_MCP_ALLOWED_DIRS or --allowed-dirs"
        if settings.allowed_dirs
        else "the working directory (CI_MCP_ALLOWED_DIRS unset)"
    )
    return ("allowed dirs", True, ", ".join(str(r) for r in roots) + f", from {source}; client roots can narrow them")


def _data_dir(path: Path) -> Check:
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path):
            pass
    except OSError as exc:
        return ("data dir", False, f"{path} is not writable ({exc.strerror}); set CI_MCP_DATA_DIR")
    return ("data dir", True, str(path))


async def _local(settings: Settings) -> list[Check]:
    from ci_mcp.backends.local import sandbox
    from ci_mcp.backends.local.backend import LocalBackend
    from ci_mcp.errors import CiMcpError, ConfigError
    from ci_mcp.models import RunRequest, TextOutput, no_progress
    from ci_mcp.store import FileStore

    checks: list[Check] = []
    try:
        plan = sandbox.plan_sandbox(settings.sandbox)
    except ConfigError as exc:
        return [("sandbox", False, str(exc))]
    checks.append(("sandbox", plan.mode == "bwrap", plan.reason))
    if plan.mode == "bwrap":
        checks.append(("privileges", *sandbox.probe_privileges()))
    with tempfile.TemporaryDirectory(prefix="ci-mcp-doctor-") as tmp:
        test_settings = settings.model_copy(update={"data_dir": Path(tmp), "kernel_pool_size": 0})
        store = FileStore(Path(tmp))
        backend = LocalBackend(test_settings, store)
        started = time.monotonic()
        try:
            await backend.start()
            probe = (
                "import sys, socket\nprint(sys.version.split()[0])\n"
                "import numpy, pandas, matplotlib\nprint('analysis libraries ok')\n"
                "try:\n    socket.create_connection(('127.0.0.1', 9), timeout=1)\n    print('network: reachable')\n"
                "except OSError:\n    print('network: blocked')\n"
            )
            result = await backend.run(RunRequest(None, probe, None, (), 60), no_progress)
            text = "".join(o.text for o in result.outputs if isinstance(o, TextOutput)).split("\n")
            elapsed = time.monotonic() - started
            ok = result.status == "ok"
            checks.append(("kernel", ok, f"started and ran code in {elapsed:.1f} s (Python {text[0]})"))
            checks.append(
                (
                    "analysis libs",
                    "analysis libraries ok" in text,
                    "numpy, pandas, matplotlib importable"
                    if "analysis libraries ok" in text
                    else "numpy/pandas/matplotlib missing from the kernel's Python (CI_MCP_KERNEL_PYTHON, or the one "
                    "ci-mcp runs in): reinstall ci-mcp, or pip install numpy pandas matplotlib into it",
                )
            )
            if plan.mode == "bwrap":
                blocked = "network: blocked" in text
                checks.append(("no network", blocked, "kernels cannot open sockets" if blocked else "NOT isolated"))
        except CiMcpError as exc:
            checks.append(("kernel", False, str(exc)))
        finally:
            await backend.aclose()
            store.close()
    if os.geteuid() == 0 and plan.mode == "none":
        checks.append(("user", False, "running as root without a sandbox: kernels have root's rights"))
    return checks
