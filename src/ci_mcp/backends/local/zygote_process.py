"""The zygote: one preloaded Python inside the kernels' bwrap sandbox that forks a sandboxed kernel per request.

Run as `python zygote_process.py <control-fd> <private-root> <runtime-dir> <python-paths-under-tmp-json>
libraries|bare` inside a bwrap sandbox built like a kernel's (sandbox.zygote_launch): no network, read-only system,
the kernels' environment, no capabilities. Like kernel_launcher.py it imports nothing from ci_mcp, so it works with
only the Python environment mounted.

It imports what a kernel imports (IPython; with `libraries`, the kernel_preload setting, also numpy, pandas,
matplotlib with the inline backend) and starts
no thread or event loop, then waits on its control socket (a SOCK_SEQPACKET unix socket to the server)
for requests: a JSON header and two file descriptors (the new kernel's status socket and its log file). For each it
forks; the child (`_Child`) takes every isolation the bwrap launch gives a kernel, on its own:

- unshare(user, mount, pid, IPC, network, UTS): a user namespace of its own mapping only the sandbox uid/gid
  (65534) and no capability outside it, its own mounts, processes, IPC objects and (empty) network;
- user namespaces disabled from then on (max_user_namespaces=0 in its own user namespace, which it can no longer
  change once its capabilities are dropped), as bwrap's --disable-userns;
- a fresh /tmp, /dev/shm and /dev/pts, its own session directory at /mnt/data, its own connection directory, and
  an empty read-only tmpfs over the private root where the zygote sees every session and the host's /proc (mounts
  made in a more privileged namespace are locked: no process below can unmount them to see underneath);
- a second fork, the init (pid 1) of the new pid namespace, with a fresh read-only /proc of that namespace;
- the server is told the init's host pid (SCM_CREDENTIALS translates it) and puts it in the session's cgroups;
  then every capability is dropped (bounding and ambient sets included, PR_SET_NO_NEW_PRIVS);
- a third fork, the kernel (pid 2, its host pid told the same way): every inherited descriptor closed, the
  kernel's environment, limits, umask and working directory set, and the IPython worker (kernel_launcher.py) started.

The first child stays outside the new pid namespace and waits; the init reaps orphans and reports the kernel's exit
status on the status socket. Every process dies with its parent (PR_SET_PDEATHSIG), and the zygote with the server
(bwrap).
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import json
import os
import re
import signal
import socket
import sys
from typing import Any, NamedTuple

CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
PR_SET_PDEATHSIG, PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS, PR_CAP_AMBIENT = 1, 24, 38, 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
SANDBOX_ID = 65534
DATA_MOUNT = "/mnt/data"
MPL_MOUNT = "/opt/ci-mcp/mpl"
LAUNCHER_DIR = "/opt/ci-mcp"
KERNEL_START_IMPORTS = (
    "asyncio",
    "faulthandler",
    "getpass",
    "termios",
    "IPython.core.application",
    "IPython.core.completerlib",
    "IPython.core.crashhandler",
    "IPython.core.logger",
    "IPython.core.oinspect",
    "IPython.utils.wildcard",
)
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_void_p]
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    _check(
        _libc.mount(
            source.encode() if source else None,
            target.encode(),
            fstype.encode() if fstype else None,
            flags,
            data.encode() if data else None,
        ),
        f"mount {fstype or source} on {target}",
    )


def unshare(flags: int) -> None:
    _check(_libc.unshare(flags), "unshare")


def prctl(option: int, arg: int = 0, arg3: int = 0) -> None:
    _check(_libc.prctl(option, arg, arg3, 0, 0), f"prctl {option}")


def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def last_cap() -> int:
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            return int(f.read())
    except OSError:
        return 40


def drop_capabilities(cap_last: int) -> None:
    """No capability left in any set: bounding (so no exec can regain one), ambient, then effective, permitted and
    inheritable; and no new privileges through exec (setuid or file capabilities)."""
    for cap in range(cap_last + 1):
        prctl(PR_CAPBSET_DROP, cap)
    prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)
    prctl(PR_SET_NO_NEW_PRIVS, 1)

    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]

    header = Header(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3: two Data words
    data = (Data * 2)()
    _check(_libc.capset(ctypes.byref(header), ctypes.byref(data)), "capset")
    status = _status()
    for key in ("CapEff", "CapPrm", "CapInh", "CapBnd", "CapAmb"):
        if int(status.get(key, "1"), 16) != 0:
            raise OSError(f"{key} is {status.get(key)} after dropping every capability")
    if status.get("NoNewPrivs", "0").strip() != "1":
        raise OSError("no_new_privs is not set")


def _status() -> dict[str, str]:
    with open("/proc/self/status") as f:
        return dict(line.split(":\t", 1) for line in f.read().splitlines() if ":\t" in line)


class _Child:
    """What happens in the forked child (and its own child, the kernel); never returns."""

    def __init__(self, request: dict[str, Any], status: socket.socket, log_fd: int, paths: Paths) -> None:
        self.request = request
        self.status = status
        self.log_fd = log_fd
        self.root = paths.root
        self.runtime = paths.runtime
        self.tmp_roots = paths.tmp_roots

    def run(self) -> None:
        try:
            os.setsid()
            prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            conn_name, ws_name = self.request["conn"], self.request["workspace"]
            if not (_NAME.match(conn_name) and _NAME.match(ws_name)):
                raise ValueError("bad names in the request")
            self.isolate(conn_name, ws_name)
        except BaseException as exc:
            self.fail(exc)
        init = os.fork()
        if init == 0:
            self.become_init()  # never returns
        os.close(self.log_fd)
        code = _wait_for(init)
        try:
            self.status.send(f"exit {code}".encode())  # only read when the init could not say it first
        finally:
            os._exit(0)

    def fail(self, exc: BaseException) -> None:
        try:
            self.status.send(f"error {type(exc).__name__}: {exc}"[:2000].encode())
        finally:
            os._exit(127)

    def isolate(self, conn_name: str, ws_name: str) -> None:
        uid, gid = os.getuid(), os.getgid()
        unshare(CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWNET | CLONE_NEWUTS)
        _write("/proc/self/setgroups", "deny")
        _write("/proc/self/uid_map", f"{SANDBOX_ID} {uid} 1")
        _write("/proc/self/gid_map", f"{SANDBOX_ID} {gid} 1")
        # No further user namespace (bwrap's --disable-userns): a limit of 0 in this user namespace holds for every
        # process in it and below; once capabilities are dropped nobody here can raise it again.
        _write("/proc/sys/user/max_user_namespaces", "0")
        mount(None, "/", None, MS_REC | MS_PRIVATE)
        # A fresh /tmp covers the Python paths bound under it (a virtual environment in /tmp): keep a handle on
        # each, and bind it again, read-only, on the new /tmp.
        kept = [(path, os.open(path, os.O_PATH)) for path in self.tmp_roots if os.path.exists(path)]
        mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755")
        for path, fd in kept:
            if os.path.isdir(f"/proc/self/fd/{fd}"):
                os.makedirs(path, exist_ok=True)
            else:
                os.makedirs(os.path.dirname(path), exist_ok=True)
                open(path, "a").close()
            mount(f"/proc/self/fd/{fd}", path, None, MS_BIND)
            mount(None, path, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)
            os.close(fd)
        if not (self.runtime + "/").startswith("/tmp/"):
            mount("tmpfs", self.runtime, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755")
        conn_dir = f"{self.runtime}/{conn_name}"
        os.makedirs(conn_dir, mode=0o755)
        mount(f"{self.root}/runtime/{conn_name}", conn_dir, None, MS_BIND | MS_NOSUID | MS_NODEV)
        mount(f"{self.root}/workspaces/{ws_name}", DATA_MOUNT, None, MS_BIND | MS_NOSUID | MS_NODEV)
        if os.path.isdir(f"{conn_dir}/mpl") and os.path.isdir(MPL_MOUNT):
            mount(f"{conn_dir}/mpl", MPL_MOUNT, None, MS_BIND | MS_NOSUID | MS_NODEV)
        mount("tmpfs", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777")
        mount("devpts", "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC, "newinstance,ptmxmode=0666,mode=620")

    def become_init(self) -> None:
        """Pid 1 of the kernel's pid namespace, as bwrap's own init: it makes the namespace's /proc, hides the
        private root, waits for the server's word, drops every capability, then forks the kernel (pid 2) and reaps
        whatever is orphaned there until the kernel ends, whose status it reports. The kernel thus dies of the
        signals it sends itself (pid 1 would ignore them), and when it ends the namespace goes with it."""
        try:
            prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
            cap_last = last_cap()
            # The fresh /proc of this pid namespace needs a fully visible proc mount in the mount namespace (the
            # host's, read-only, in the private root); the root is covered only after.
            mount("proc", "/proc", "proc", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC)
            mount("tmpfs", self.root, "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, "mode=0555,size=4k")
            self.status.send(b"hello")  # carries this process's credentials: the server learns its host pid
            if self.status.recv(16) != b"go":  # the server has put this process in its cgroups
                raise OSError("the server did not confirm the kernel's cgroups")
            with contextlib.suppress(OSError):
                unshare(CLONE_NEWCGROUP)  # its own cgroup as the root of its cgroup view, as bwrap's
            drop_capabilities(cap_last)
            if os.getuid() != SANDBOX_ID or os.getgid() != SANDBOX_ID:
                raise OSError(f"uid {os.getuid()} gid {os.getgid()} in the kernel's user namespace")
        except BaseException as exc:
            self.fail(exc)
        kernel = os.fork()
        if kernel == 0:
            try:
                prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
                self.status.send(b"kernel")  # its host pid, by its credentials
            except BaseException as exc:
                self.fail(exc)
            self.status.close()
            self.start_kernel()  # never returns
        os.close(self.log_fd)
        code = _wait_for(kernel, reap=True)
        try:
            self.status.send(f"exit {code}".encode())
        finally:
            os._exit(0)

    def start_kernel(self) -> None:
        request = self.request
        null = os.open("/dev/null", os.O_RDWR)
        os.dup2(null, 0)
        os.dup2(null, 1)
        os.dup2(self.log_fd, 2)
        os.closerange(3, 1 << 16)  # nothing of the zygote's: no control socket, no other session's descriptor
        os.environ.clear()
        os.environ.update(request["env"])
        os.environ["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"
        if os.path.isdir(MPL_MOUNT):
            os.environ["MPLCONFIGDIR"] = MPL_MOUNT
        os.chdir(DATA_MOUNT)
        numpy_random = sys.modules.get("numpy.random")
        if numpy_random is not None:
            numpy_random.seed()  # the zygote's global RandomState would repeat in every kernel
        import kernel_launcher

        sys.argv = ["ci-mcp-kernel", json.dumps(request["limits"]), *request["argv"]]
        code = 0
        try:
            kernel_launcher.main()
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:
            import traceback

            traceback.print_exc()
            code = 1
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def _wait_for(pid: int, reap: bool = False) -> int:
    """The exit code of child `pid` (negative: the signal that ended it); with `reap`, every other child that
    exits meanwhile is reaped too (the orphans an init inherits)."""
    while True:
        try:
            done, status = os.waitpid(-1 if reap else pid, 0)
        except ChildProcessError:
            return 255
        except InterruptedError:
            continue
        if done == pid:
            return os.waitstatus_to_exitcode(status)


def preload(libraries: bool = True) -> None:
    """Import what a kernel imports, without starting a thread or event loop; with `libraries`, also numpy, pandas
    and matplotlib, and draw one figure off pyplot (see warm_charts) so a kernel's first chart does not pay for it."""
    os.environ["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"  # as the worker sets it before import
    if LAUNCHER_DIR not in sys.path:
        sys.path.insert(0, LAUNCHER_DIR)
    import kernel_launcher  # noqa: F401
    from IPython.core import displayhook, displaypub, interactiveshell  # noqa: F401

    # What the worker's start imports besides (measured in a forked kernel): each spare forked would import them
    # again, on the CPU a session's first chart runs on while the pool refills. Importing starts nothing.
    for name in KERNEL_START_IMPORTS:
        with contextlib.suppress(Exception):
            __import__(name)

    try:  # IPython's own magics, imported at the first magic a kernel runs (the first `%config`: 0.1-0.2 s)
        from IPython.core import magics

        for module in sorted(set(getattr(magics, "MAGICS_CLASSES", {}).values())):
            __import__(module)
    except Exception:  # noqa: S110 - only a head start
        pass
    if not libraries:
        return
    # Not matplotlib_inline.backend_inline: it hooks itself into the IPython shell at import, which exists only in
    # the kernel (pyplot imports it there at the first figure).
    for name in ("numpy", "pandas", "matplotlib", "matplotlib.pyplot"):
        try:
            __import__(name)
        except Exception:  # noqa: S112 - a library the kernel's Python lacks is not the zygote's concern
            continue
    with contextlib.suppress(Exception):  # only a warm-up
        warm_charts()


def warm_charts() -> None:
    """Draw, off pyplot, the kind of chart a session's first run makes, so that what the first chart in each kernel
    would pay for once is paid here, before any fork: pandas' plotting module, a bar plot with rotated tick labels, a
    title, axis labels and a legend (text layout, font lookups and their caches), the Agg draw, and the PNG the
    inline backend makes (kernel_launcher's one-draw tight crop, Pillow's encoder, base64). Nothing of it is left for
    a session to see: the figure never reaches pyplot's figure manager (no open figure, no backend chosen: pyplot
    picks the inline backend in the kernel, where the shell exists), rcParams are restored, nothing is written to
    a file, and pandas' call to `pyplot.draw_if_interactive` (which would choose the backend) is held off."""
    import base64
    import io

    import matplotlib
    import matplotlib.pyplot as plt
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    with matplotlib.rc_context():
        fig = Figure()
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        ax.plot([0, 1, 2], [0, 1, 0], label="line")
        try:
            import numpy as np
            import pandas as pd

            usual, plt.draw_if_interactive = plt.draw_if_interactive, lambda *a, **k: None
            try:
                frame = pd.DataFrame({"group": np.arange(60) % 12, "value": np.linspace(0.0, 1.0, 60)})
                frame.groupby("group")["value"].sum().plot.bar(ax=ax, label="bars")
            finally:
                plt.draw_if_interactive = usual
        except ImportError:
            pass
        ax.set_title("warm-up")
        ax.set_xlabel("x")
        ax.set_ylabel("y")
        ax.legend()
        fig.canvas.draw()
        import kernel_launcher

        data = kernel_launcher.tight_png_in_one_draw(fig, fig.dpi, float(matplotlib.rcParams["savefig.pad_inches"]))
        if data is None:
            buf = io.BytesIO()
            fig.savefig(buf, format="png", bbox_inches="tight")
            data = buf.getvalue()
        base64.b64encode(data)
        with contextlib.suppress(ImportError):
            from IPython.core import display, pylabtools  # noqa: F401 - what the inline backend uses to show it
        fig.clear()


class Paths(NamedTuple):
    root: str
    """The private root: the sessions' parent (workspaces/), the runtime directory (runtime/), the host's /proc."""
    runtime: str
    """The runtime directory's own path, where each kernel finds its connection directory."""
    tmp_roots: list[str]
    """Python paths bound under /tmp, bound again over each kernel's fresh /tmp."""


def serve(control: socket.socket, paths: Paths) -> None:
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped by the kernel; each reports its own exit
    threads = len(os.listdir("/proc/self/task"))
    control.send(json.dumps({"ready": True, "threads": threads}).encode())
    while True:
        try:
            data, fds, _, _ = socket.recv_fds(control, 1 << 20, 2)
        except InterruptedError:
            continue
        if not data:
            return  # the server is gone
        if len(fds) != 2:
            for fd in fds:
                os.close(fd)
            continue
        status = socket.socket(fileno=fds[0])
        pid = os.fork()
        if pid == 0:
            control.close()
            _Child(json.loads(data), status, fds[1], paths).run()
            os._exit(1)  # not reached
        status.close()
        os.close(fds[1])


def main() -> None:
    control_fd, paths = int(sys.argv[1]), Paths(sys.argv[2], sys.argv[3], json.loads(sys.argv[4]))
    libraries = sys.argv[5:6] != ["bare"]
    prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    control = socket.socket(fileno=control_fd)
    try:
        preload(libraries)
        gc.collect()
        gc.freeze()  # what the zygote made stays out of the kernels' collections: fewer pages copied per kernel
    except Exception as exc:
        control.send(json.dumps({"ready": False, "error": f"{type(exc).__name__}: {exc}"}).encode())
        raise
    serve(control, paths)


if __name__ == "__main__":
    main()
