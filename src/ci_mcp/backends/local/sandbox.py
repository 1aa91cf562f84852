"""How a kernel process is confined: the bubblewrap command line, the scrubbed environment, the limits.

With bwrap the kernel sees: a read-only /usr and Python environment (every path its interpreter imports from, as
`interpreter.probe` learns them), a private /tmp and /dev, its own user, PID, IPC, UTS and network namespaces (no
network at all, loopback included), the session directory read-write at /mnt/data, and its IPC socket directory;
the host's sysctls (/proc/sys) read-only. With the zygote (zygote_launch, zygote.py) a kernel is a fork that makes
the same isolation itself; its launch here is then the fallback.
It runs as uid/gid 65534 (nobody) with no capabilities and cannot create further user namespaces, whatever uid the
server has: a server started as root (common in containers) must not hand the kernel the power to remount the
read-only binds and change code the server imports later. Nothing else of the host: not the user's home, not the
server's data directory, not other sessions. On macOS (CI_MCP_SANDBOX=seatbelt, or auto where /usr/bin/sandbox-exec
exists) the kernel runs under a Seatbelt profile with the same file rules and no network (seatbelt.py); the working
directory stands in for /mnt/data. Without either (CI_MCP_SANDBOX=none, or auto where neither can run) the kernel
runs as a plain child process with resource limits only, and the working directory stands in for /mnt/data.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import psutil

from ci_mcp.backends.local import seatbelt
from ci_mcp.backends.local.kernel import CONN_DIR, KernelLaunch
from ci_mcp.backends.local.zygote import CONTROL_FD, Zygote, ZygoteLaunch
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
PLATFORM = sys.platform


@dataclass(frozen=True)
class SandboxPlan:
    mode: str  # "bwrap", "seatbelt" or "none"
    reason: str  # why, in plain words (shown by doctor, the log and the first result of a session)


@cache
def bwrap_works() -> tuple[bool, str]:
    exe = shutil.which("bwrap")
    if exe is None:
        return False, "bubblewrap (bwrap) is not installed; install the Debian package 'bubblewrap'"
    try:
        proc = subprocess.run(
            # --proc as the kernel's sandbox has it: containers that mask parts of /proc (podman, docker by default)
            # let bwrap make namespaces but not mount a proc, and every kernel start would fail
            [exe, "--ro-bind", "/", "/", "--proc", "/proc", "--unshare-all", "--die-with-parent", "--", "true"],
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


def seatbelt_available(platform: str) -> tuple[bool, str]:
    if platform != "darwin":
        return False, "Seatbelt (sandbox-exec) exists only on macOS"
    if not os.access(seatbelt.SANDBOX_EXEC, os.X_OK):
        return False, f"{seatbelt.SANDBOX_EXEC} is missing"
    return True, f"Seatbelt via {seatbelt.SANDBOX_EXEC} (untested on a real Mac so far)"


def plan_sandbox(mode: str, platform: str | None = None) -> SandboxPlan:
    """Decide the sandbox for `CI_MCP_SANDBOX` (auto|bwrap|seatbelt|none) on `platform` (default: PLATFORM). A
    named sandbox that cannot run is a ConfigError; `auto` takes Seatbelt on macOS, bwrap elsewhere, and says
    loudly when it has neither."""
    platform = platform or PLATFORM
    if mode == "none":
        return SandboxPlan("none", "CI_MCP_SANDBOX=none: kernels run unconfined, with resource limits only")
    if mode == "seatbelt" or (mode == "auto" and platform == "darwin"):
        ok, detail = seatbelt_available(platform)
        if ok:
            return SandboxPlan("seatbelt", detail)
        if mode == "seatbelt":
            raise ConfigError(f"CI_MCP_SANDBOX=seatbelt but {detail}. Set CI_MCP_SANDBOX=auto.")
    elif platform == "win32" and mode == "auto":
        return SandboxPlan(
            "none", "NOT SANDBOXED: Windows has no kernel sandbox here. Kernels run with your user's rights."
        )
    else:
        ok, detail = bwrap_works()
        if ok:
            return SandboxPlan("bwrap", detail)
        if mode == "bwrap":
            raise ConfigError(f"CI_MCP_SANDBOX=bwrap but {detail}. Install it, or set CI_MCP_SANDBOX=auto.")
    if is_root():
        raise ConfigError(
            f"the server runs as root and {detail}, so kernels would run as root on this machine. Install "
            "bubblewrap, run the server as another user, or set CI_MCP_SANDBOX=none to accept that."
        )
    return SandboxPlan(
        "none", f"NOT SANDBOXED: {detail}. Kernels run with your user's rights and resource limits only."
    )


def is_root() -> bool:
    geteuid = getattr(os, "geteuid", None)  # POSIX only
    return geteuid is not None and geteuid() == 0


def kernel_env(home: str, python: str | None = None, tmp: str = "/tmp") -> dict[str, str]:
    """A scrubbed environment: nothing of the server's (no AZURE_*, tokens, keys, CI_MCP_*) reaches the code.
    PATH starts with the kernel Python's own bin directory (`python`, default the server's)."""

    bin_dir = Path(os.path.abspath(shutil.which(python) or python if python else sys.executable)).parent
    env = {
        "PATH": os.pathsep.join([str(bin_dir), "/usr/local/bin", "/usr/bin", "/bin"]),
        "HOME": home,
        "TMPDIR": tmp,
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


def _user_processes(uid: int | None = None) -> int:
    """How many processes the user (`uid`, default this process's real uid) runs; 0 where there are no uids."""
    if uid is None:
        getuid = getattr(os, "getuid", None)  # POSIX only; Windows has no RLIMIT_NPROC either
        if getuid is None:
            return 0
        uid = getuid()
    count = 0
    for proc in psutil.process_iter(["uids"]):
        uids = proc.info.get("uids")
        count += uids is not None and uids.real == uid
    return count


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
    zygote: Zygote | None = None,
) -> KernelLaunch:
    launcher_dir = Path(__file__).resolve().parent
    if plan.mode == "none":
        return KernelLaunch(
            python=python,
            cwd=workspace,
            env=kernel_env(home=str(workspace), python=python),
            mpl_seed=mpl_cache,
            runtime_dir=runtime_dir,
            limits=kernel_limits,
            script=str(launcher_dir / "kernel_launcher.py"),
            cgroup_limits=cgroup_limits,
        )
    if plan.mode == "seatbelt":
        rules = seatbelt.profile(
            read=[*map(str, py_roots), str(launcher_dir)],
            write=[str(workspace)],
            private=CONN_DIR,
            private_parent=str(runtime_dir.resolve()),
        )
        return KernelLaunch(
            python=python,
            cwd=workspace,
            env=kernel_env(home=CONN_DIR, python=python, tmp=CONN_DIR),
            mpl_seed=mpl_cache,
            runtime_dir=runtime_dir,
            limits=kernel_limits,
            script=str(launcher_dir / "kernel_launcher.py"),
            wrapper=tuple(rules.argv()),
        )
    argv = [
        *_bwrap_system(py_roots, privilege_args(), launcher_dir),
        # The host's sysctls read-only: a root-started server's kernel is uid 0 outside its namespaces, and
        # /proc/sys lets uid 0 write (core_pattern, for one, names a program the host runs as root). Its files
        # answer for the reader's own namespaces (network, IPC, UTS), so the host's /proc/sys shows the kernel's.
        "--ro-bind",
        "/proc/sys",
        "/proc/sys",
        "--dir",
        "/mnt",
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
    env = kernel_env(home="/tmp", python=python)
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
        zygote=zygote,
    )


def _bwrap_system(py_roots: list[Path], privileges: list[str], launcher_dir: Path) -> list[str]:
    """The part of a kernel's bwrap command line that the zygote's shares: namespaces, privileges, the read-only
    system and Python, /proc, /dev, /tmp and the launcher."""
    bwrap = shutil.which("bwrap") or "bwrap"
    argv: list[str] = [
        bwrap,
        "--unshare-all",
        *privileges,
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
    ]
    for name in _ETC_ALLOWED:
        if Path("/etc", name).exists():
            argv += ["--ro-bind", f"/etc/{name}", f"/etc/{name}"]
    for root in py_roots:
        argv += ["--ro-bind", str(root), str(root)]
    return [*argv, "--ro-bind", str(launcher_dir / "kernel_launcher.py"), f"{_LAUNCHER_MOUNT}/kernel_launcher.py"]


ZYGOTE_MPL = f"{_LAUNCHER_MOUNT}/mpl"  # zygote_process.MPL_MOUNT: the matplotlib cache the zygote preloads from
ZYGOTE_ROOT = "/.ci-mcp-zygote"
"""Where the zygote sees the sessions' parent directory, the runtime directory and the host's /proc. Each forked
kernel covers it with an empty read-only tmpfs before any of its code runs (zygote_process.py)."""


def zygote_launch(
    *,
    python: str,
    workspaces_dir: Path,
    runtime_dir: Path,
    mpl_cache: Path,
    py_roots: list[Path],
    libraries: bool = True,
) -> ZygoteLaunch:
    """The zygote's sandbox: a kernel's (no network, read-only system, the kernels' environment, uid 65534, no
    capabilities) without a session of its own, plus the sessions' parent and the runtime directory (each child
    binds its own and hides the rest) and the host's /proc read-only (the kernel's fresh /proc may only be mounted
    where a /proc without covered parts is in view: bwrap's own covers some). Not `--disable-userns`: each child
    makes its own user namespace, then disables them for itself and below. With `libraries` (the kernel_preload
    setting) it imports numpy, pandas and matplotlib and draws a chart before forking; without, only the kernel's own
    machinery."""
    launcher_dir = Path(__file__).resolve().parent
    privileges = ["--unshare-user", "--uid", str(KERNEL_UID), "--gid", str(KERNEL_UID), "--cap-drop", "ALL"]
    argv = [*_bwrap_system(py_roots, privileges, launcher_dir), "--dir", DATA_MOUNT]
    argv += ["--ro-bind", str(launcher_dir / "zygote_process.py"), f"{_LAUNCHER_MOUNT}/zygote_process.py"]
    env = kernel_env(home="/tmp", python=python)
    env["MPLCONFIGDIR"] = "/tmp"
    if mpl_cache.is_dir():
        argv += ["--ro-bind", str(mpl_cache), ZYGOTE_MPL]
        env["MPLCONFIGDIR"] = ZYGOTE_MPL
    runtime = str(runtime_dir)
    if not (runtime + "/").startswith("/tmp/"):
        argv += ["--dir", runtime]  # a mount point for each child's own tmpfs there
    argv += [
        "--bind",
        str(workspaces_dir),
        f"{ZYGOTE_ROOT}/workspaces",
        "--bind",
        runtime,
        f"{ZYGOTE_ROOT}/runtime",
        "--ro-bind",
        "/proc",
        f"{ZYGOTE_ROOT}/proc",
        "--remount-ro",
        "/",
        "--remount-ro",
        "/dev",  # shared by every child: only /dev/shm and /dev/pts are theirs, each mounted afresh
        "--chdir",
        "/",
        "--",
        python,
        f"{_LAUNCHER_MOUNT}/zygote_process.py",
        CONTROL_FD,
        ZYGOTE_ROOT,
        runtime,
        json.dumps([str(root) for root in py_roots if (str(root) + "/").startswith("/tmp/")]),
        "libraries" if libraries else "bare",
    ]
    return ZygoteLaunch(tuple(argv), env, runtime_dir, workspaces_dir)
