"""How a kernel process is confined: the bubblewrap command line, the scrubbed environment, the limits.

With bwrap the kernel sees: a read-only /usr and Python environment, a private /tmp and /dev, its own user, PID,
IPC, UTS and network namespaces (no network at all, loopback included), the session directory read-write at
/mnt/data, and its IPC socket directory. It runs as uid/gid 65534 (nobody) with no capabilities and cannot create
further user namespaces, whatever uid the server has: a server started as root (common in containers) must not
hand the kernel the power to remount the read-only binds and change code the server imports later. Nothing else
of the host: not the user's home, not the server's data directory, not other sessions. Without bwrap
(CI_MCP_SANDBOX=none, or auto where bwrap cannot run) the kernel runs as a plain child process with resource limits
only, and the working directory stands in for /mnt/data.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from ci_mcp.backends.local.kernel import CONN_DIR, KernelLaunch
from ci_mcp.errors import ConfigError

DATA_MOUNT = "/mnt/data"
KERNEL_UID = 65534  # nobody: the kernel's uid and gid inside the sandbox
_LAUNCHER_MOUNT = "/opt/ci-mcp"
_ETC_ALLOWED = (
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "localtime",
    "mime.types",
    "fonts",
    "nsswitch.conf",
    "passwd",
    "group",
    "hosts",
)
_ENV_PASSTHROUGH = ("LANG", "LC_ALL", "TZ", "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
MB = 1024 * 1024
_ROOTS_PROBE = "import sys, site; print(sys.prefix); print(sys.base_prefix); print(*site.getsitepackages(), sep='\\n')"


@dataclass(frozen=True)
class SandboxPlan:
    mode: str  # "bwrap" or "none"
    reason: str  # why, in plain words (shown by doctor, the log and the first result of a session)


@cache
def bwrap_works() -> tuple[bool, str]:
    exe = shutil.which("bwrap")
    if exe is None:
        return False, "bubblewrap (bwrap) is not installed; install the Debian package 'bubblewrap'"
    try:
        proc = subprocess.run(
            [exe, "--ro-bind", "/", "/", "--unshare-all", "--die-with-parent", "--", "true"],
            capture_output=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, f"bwrap could not be run: {exc}"
    if proc.returncode != 0:
        detail = proc.stderr.decode(errors="replace").strip().splitlines()
        return False, "bwrap cannot create namespaces here: " + (detail[-1] if detail else f"exit {proc.returncode}")
    return True, f"bwrap at {exe}"


@cache
def _bwrap_supports(flag: str) -> bool:
    exe = shutil.which("bwrap")
    if exe is None:
        return False
    try:
        proc = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return flag in proc.stdout + proc.stderr


def privilege_args() -> list[str]:
    """bwrap options that take every privilege from the kernel: an unprivileged uid in a new user namespace, no
    capabilities (bounding set included), and no nested user namespaces where this bwrap can forbid them."""
    args = ["--unshare-user", "--uid", str(KERNEL_UID), "--gid", str(KERNEL_UID), "--cap-drop", "ALL"]
    if _bwrap_supports("--disable-userns"):
        args.append("--disable-userns")
    return args


def probe_privileges() -> tuple[bool, str]:
    """Measure, in a sandbox with the kernel's privilege options, the uid, the capabilities and whether a nested
    user namespace can be made (for `doctor`)."""
    exe = shutil.which("bwrap") or "bwrap"
    script = (
        "id -u; grep -E '^Cap(Eff|Bnd):' /proc/self/status | tr -s '\\t' ' '; "
        "if unshare -U true 2>/dev/null; then echo userns-allowed; else echo userns-denied; fi"
    )
    argv = [exe, "--ro-bind", "/", "/", "--unshare-all", *privilege_args(), "--die-with-parent"]
    try:
        proc = subprocess.run([*argv, "--", "/bin/sh", "-c", script], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, f"could not measure the kernel's privileges: {exc}"
    lines = proc.stdout.split()
    if proc.returncode != 0 or len(lines) < 6:
        return False, "could not measure the kernel's privileges: " + (proc.stderr.strip() or f"exit {proc.returncode}")
    uid, caps = lines[0], {lines[1]: lines[2], lines[3]: lines[4]}
    no_caps = all(int(v, 16) == 0 for v in caps.values())
    ok = uid == str(KERNEL_UID) and no_caps and lines[5] == "userns-denied"
    return ok, (
        f"kernel uid {uid}, capabilities {'none' if no_caps else caps}, nested user namespaces "
        f"{lines[5].removeprefix('userns-')} (server uid {os.geteuid()})"
    )


def plan_sandbox(mode: str) -> SandboxPlan:
    """Decide the sandbox for `CI_MCP_SANDBOX` (auto|bwrap|none). `bwrap` without a working bwrap is a ConfigError."""
    if mode == "none":
        return SandboxPlan("none", "CI_MCP_SANDBOX=none: kernels run unconfined, with resource limits only")
    ok, detail = bwrap_works()
    if ok:
        return SandboxPlan("bwrap", detail)
    if mode == "bwrap":
        raise ConfigError(f"CI_MCP_SANDBOX=bwrap but {detail}. Install it, or set CI_MCP_SANDBOX=auto.")
    if os.geteuid() == 0:
        raise ConfigError(
            f"the server runs as root and {detail}, so kernels would run as root on this machine. Install "
            "bubblewrap, run the server as another user, or set CI_MCP_SANDBOX=none to accept that."
        )
    return SandboxPlan(
        "none", f"NOT SANDBOXED: {detail}. Kernels run with your user's rights and resource limits only."
    )


def kernel_env(home: str) -> dict[str, str]:
    """A scrubbed environment: nothing of the server's (no AZURE_*, tokens, keys, CI_MCP_*) reaches the code."""

    env = {
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), "/usr/local/bin", "/usr/bin", "/bin"]),
        "HOME": home,
        "TMPDIR": "/tmp",
        "MPLCONFIGDIR": CONN_DIR + "/mpl",
        "PYTHONDONTWRITEBYTECODE": "1",
        "OPENBLAS_NUM_THREADS": "2",
        "OMP_NUM_THREADS": "2",
        "MKL_NUM_THREADS": "2",
        "JPY_SESSION_NAME": "ci-mcp",
        "PYDEVD_DISABLE_FILE_VALIDATION": "1",
    }
    for key in _ENV_PASSTHROUGH:
        if key in os.environ:
            env[key] = os.environ[key]
    env.setdefault("LANG", "C.UTF-8")
    return env


def limits(memory_mb: int, cpu_seconds: int, processes: int, file_mb: int) -> dict[str, int]:
    """rlimits for a kernel. RLIMIT_NPROC counts every process of the user, so it is set to what the user runs
    now plus `processes`; the per-session cgroup (where available) is the exact limit. The address-space limit
    has 1 GiB of headroom over `memory_mb` (a kernel reserves far more virtual memory than it uses); the
    cgroup holds resident memory to `memory_mb` exactly."""
    return {
        "memory_bytes": (memory_mb + 1024) * MB,
        "cpu_seconds": cpu_seconds,
        "processes": _user_processes() + processes,
        "file_bytes": file_mb * MB,
    }


def _user_processes() -> int:

    uid = str(os.getuid())
    count = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            for line in (entry / "status").read_text().splitlines():
                if line.startswith("Uid:"):
                    count += line.split()[1] == uid
                    break
        except OSError:
            continue
    return count


def python_roots(python: str) -> list[Path]:
    """Directories the kernel's Python needs: its prefix, base prefix and the real paths of the executable."""
    if Path(python).resolve() == Path(sys.executable).resolve():  # our own interpreter: no need to ask it
        import site

        found = {Path(sys.prefix), Path(sys.base_prefix), *(Path(p) for p in site.getsitepackages())}
        found.add(Path(python).resolve().parent.parent)
        return sorted(r.resolve() for r in found if not str(r.resolve()).startswith("/usr/") and r.exists())
    probe = subprocess.run(
        [
            python,
            "-c",
            "import sys, site; print(sys.prefix); print(sys.base_prefix); print(*site.getsitepackages(), sep='\\n')",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    roots = {Path(line).resolve() for line in probe.stdout.splitlines() if line.strip()}
    roots.add(Path(python).resolve().parent.parent)
    # Debian's site.py lists dist-packages directories that may not exist (a venv on /usr/bin/python3, as
    # `uv run` makes one); bwrap refuses to bind a missing path, so only existing ones are roots.
    return sorted(r for r in roots if not str(r).startswith("/usr/") and r.exists())


def build_launch(
    plan: SandboxPlan,
    *,
    python: str,
    workspace: Path,
    runtime_dir: Path,
    mpl_cache: Path,
    py_roots: list[Path],
    kernel_limits: dict[str, int],
    cgroup_limits: tuple[int, int] | None = None,
) -> KernelLaunch:
    launcher_dir = Path(__file__).resolve().parent
    if plan.mode == "none":
        return KernelLaunch(
            python=python,
            cwd=workspace,
            env=kernel_env(home=str(workspace)),
            mpl_seed=mpl_cache,
            runtime_dir=runtime_dir,
            limits=kernel_limits,
            script=str(launcher_dir / "kernel_launcher.py"),
            cgroup_limits=cgroup_limits,
        )
    bwrap = shutil.which("bwrap") or "bwrap"
    argv: list[str] = [
        bwrap,
        "--unshare-all",
        *privilege_args(),
        "--die-with-parent",
        "--new-session",
        "--ro-bind",
        "/usr",
        "/usr",
        "--symlink",
        "usr/bin",
        "/bin",
        "--symlink",
        "usr/lib",
        "/lib",
        "--symlink",
        "usr/lib64",
        "/lib64",
        "--symlink",
        "usr/sbin",
        "/sbin",
        "--proc",
        "/proc",
        "--dev",
        "/dev",
        "--tmpfs",
        "/tmp",
        "--dir",
        "/mnt",
    ]
    for name in _ETC_ALLOWED:
        if Path("/etc", name).exists():
            argv += ["--ro-bind", f"/etc/{name}", f"/etc/{name}"]
    for root in py_roots:
        argv += ["--ro-bind", str(root), str(root)]
    argv += [
        "--ro-bind",
        str(launcher_dir / "kernel_launcher.py"),
        f"{_LAUNCHER_MOUNT}/kernel_launcher.py",
        "--bind",
        str(workspace),
        DATA_MOUNT,
        "--bind",
        CONN_DIR,
        CONN_DIR,
        "--remount-ro",  # the sandbox's own root (/, /etc, /mnt, /opt) read-only too; binds keep their modes
        "/",
        "--chdir",
        DATA_MOUNT,
        "--",
    ]
    env = kernel_env(home="/tmp")
    return KernelLaunch(
        mpl_seed=mpl_cache,
        python=python,
        cwd=workspace,
        env=env,
        runtime_dir=runtime_dir,
        limits=kernel_limits,
        cgroup_limits=cgroup_limits,
        wrapper=tuple(argv),
        script=f"{_LAUNCHER_MOUNT}/kernel_launcher.py",
    )
