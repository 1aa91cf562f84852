"""`ci-mcp doctor`: checks the configuration and the backend and says what is wrong in plain words."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from ci_mcp.settings import Settings

if TYPE_CHECKING:
    from ci_mcp.backends.local.backend import LocalBackend
    from ci_mcp.models import RunResult

Check = tuple[str, bool, str]


async def doctor(settings: Settings) -> int:
    checks: list[Check] = [("backend", True, settings.backend)]
    checks.append(_data_dir(settings.data_dir))
    checks.append(_allowed_dirs(settings))
    if settings.backend == "local":
        checks += await _local(settings)
    elif settings.backend == "azure-classic":
        from ci_mcp.backends.azure.classic.doctor import diagnose as diagnose_classic

        checks += await diagnose_classic(settings)
    else:
        from ci_mcp.backends.azure.agents.doctor import diagnose

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


_LIBRARIES_PROBE = """
import importlib, json
found = {}
for name in %r:
    try:
        importlib.import_module(name)
        found[name] = "ok"
    except Exception as exc:
        found[name] = type(exc).__name__
print(json.dumps(found))
"""

_NETWORK_PROBE = """
import json, socket
seen = {}
try:
    socket.create_connection(("127.0.0.1", %d), timeout=2).close()
    seen["loopback"] = "reached"
except OSError as exc:
    seen["loopback"] = type(exc).__name__
try:
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.connect(("192.0.2.1", 9))  # a UDP connect only looks up a route: nothing is sent
    probe.close()
    seen["route"] = "found"
except OSError as exc:
    seen["route"] = type(exc).__name__
print(json.dumps(seen))
"""


async def _local(settings: Settings) -> list[Check]:
    from ci_mcp.backends.local import cgroups, sandbox
    from ci_mcp.backends.local.backend import LocalBackend
    from ci_mcp.errors import CiMcpError, ConfigError
    from ci_mcp.store import FileStore

    checks: list[Check] = []
    try:
        plan = sandbox.plan_sandbox(settings.sandbox)
    except ConfigError as exc:
        return [("sandbox", False, str(exc))]
    checks.append(("sandbox", plan.mode in ("bwrap", "seatbelt"), plan.reason))
    if plan.mode == "bwrap":
        checks.append(("privileges", *sandbox.probe_privileges()))
    checks.append(("cgroups", True, cgroups.layout().describe()))
    with tempfile.TemporaryDirectory(prefix="ci-mcp-doctor-") as tmp:
        test_settings = settings.model_copy(update={"data_dir": Path(tmp), "kernel_pool_size": 0})
        store = FileStore(Path(tmp))
        backend = LocalBackend(test_settings, store)
        python = backend.kernel_interpreter()
        checks.append(
            ("interpreter", not python.error, python.error or f"{python.python} (Python {python.version}) for kernels")
        )
        try:
            await backend.start()
            checks += await _kernel_checks(backend)
        except (CiMcpError, KernelProbeError) as exc:
            checks.append(("kernel", False, str(exc)))
            checks.append(("analysis libs", False, "not measured: no kernel ran"))
            checks.append(("no network", False, "not measured: no kernel ran"))
        finally:
            await backend.aclose()
            store.close()
    if sandbox.is_root() and plan.mode == "none":
        checks.append(("user", False, "running as root without a sandbox: kernels have root's rights"))
    return checks


async def _kernel_checks(backend: LocalBackend) -> list[Check]:
    """Three separate probes in one kernel, each reported on its own: the kernel runs code, the analysis libraries
    import, the network is out of reach. One failing says nothing about the others."""
    from ci_mcp.backends.local.interpreter import ANALYSIS_LIBRARIES

    started = time.monotonic()
    ran = await _probe(backend, None, "import sys\nprint(sys.version.split()[0])")
    if ran.status != "ok":
        raise KernelProbeError(ran)
    sid = ran.session_id
    checks: list[Check] = [
        ("kernel", True, f"started and ran code in {time.monotonic() - started:.1f} s (Python {_text(ran).strip()})"),
        _start_check(backend),
    ]
    libs = _json(await _probe(backend, sid, _LIBRARIES_PROBE % (ANALYSIS_LIBRARIES,)))
    if libs is None:
        checks.append(("analysis libs", False, "the import probe gave no answer"))
    else:
        missing = [f"{name} ({why})" for name, why in libs.items() if why != "ok"]
        checks.append(
            (
                "analysis libs",
                not missing,
                f"{', '.join(libs)} import in the kernel"
                if not missing
                else f"not importable in the kernel: {', '.join(missing)}; pip install 'ci-mcp[analysis]' into "
                "the kernel's Python (CI_MCP_KERNEL_PYTHON, default the server's)",
            )
        )
    checks.append(await _network_check(backend, sid))
    return checks


def _start_check(backend: LocalBackend) -> Check:
    """How kernels start, once one has: forked from the zygote, or cold (which works, only slower: not a failure)."""
    zygote = backend.zygote
    if zygote is not None and zygote.usable:
        return ("kernel start", True, "forked from the preloaded, sandboxed zygote (a new session in tens of ms)")
    if zygote is not None:
        return ("kernel start", True, f"each kernel starts cold in its own sandbox (about 1 s): {zygote.disabled}")
    why = "CI_MCP_KERNEL_ZYGOTE is off" if backend.plan.mode == "bwrap" else "the zygote needs the bwrap sandbox"
    return ("kernel start", True, f"each kernel starts cold (about 1 s): {why}")


async def _network_check(backend: LocalBackend, sid: str) -> Check:
    """Whether a kernel reaches a listener on the host's loopback, or has a route anywhere."""
    import socket

    with socket.create_server(("127.0.0.1", 0)) as listener:
        seen = _json(await _probe(backend, sid, _NETWORK_PROBE % listener.getsockname()[1]))
    if seen is None:
        return ("no network", False, "the network probe gave no answer")
    reached = []
    if seen.get("loopback") == "reached":
        reached.append("reached a listener on the host's 127.0.0.1")
    if seen.get("route") == "found":
        reached.append("has a route to outside addresses")
    if reached:
        return ("no network", False, "NOT isolated: a kernel " + " and ".join(reached))
    return ("no network", True, "kernels cannot reach the host's loopback and have no route out")


class KernelProbeError(Exception):
    def __init__(self, result: RunResult) -> None:
        super().__init__(f"the kernel started but the probe ended with status {result.status}: {_text(result)}")


async def _probe(backend: LocalBackend, session_id: str | None, code: str) -> RunResult:
    from ci_mcp.models import RunRequest, no_progress

    return await backend.run(RunRequest(session_id, code, None, (), 60), no_progress)


def _text(result: RunResult) -> str:
    from ci_mcp.models import ErrorOutput, TextOutput

    parts = [o.text for o in result.outputs if isinstance(o, TextOutput)]
    parts += [f"{o.name}: {o.value}" for o in result.outputs if isinstance(o, ErrorOutput)]
    return "".join(parts)


def _json(result: RunResult) -> dict[str, str] | None:
    import json

    lines = _text(result).strip().splitlines()
    try:
        found = json.loads(lines[-1]) if result.status == "ok" and lines else None
    except ValueError:
        return None
    return {str(k): str(v) for k, v in found.items()} if isinstance(found, dict) else None
