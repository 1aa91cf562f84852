"""Entry point of a kernel process: apply resource limits, then become an ipykernel.

Run as `python -m ci_mcp.backends.local.kernel_launcher <limits-json> -f <connection-file>`. It imports nothing
from ci_mcp besides this file, so it works inside the sandbox with only the Python environment mounted.
"""

from __future__ import annotations

import json
import os
import sys

try:
    import resource
except ImportError:  # Windows: no rlimits
    resource = None  # type: ignore[assignment]


def apply_limits(limits: dict[str, int]) -> None:
    if resource is None:
        return
    table = {
        "memory_bytes": resource.RLIMIT_AS,
        "cpu_seconds": resource.RLIMIT_CPU,
        "processes": resource.RLIMIT_NPROC,
        "file_bytes": resource.RLIMIT_FSIZE,
    }
    for key, rlimit in table.items():
        value = limits.get(key)
        if value:
            soft = hard = int(value)
            if key == "cpu_seconds":
                hard = soft + 5  # SIGXCPU first, SIGKILL a little later
            ceiling = resource.getrlimit(rlimit)[1]  # never above the hard limit in force (macOS: NPROC's)
            if ceiling != resource.RLIM_INFINITY:
                soft, hard = min(soft, ceiling), min(hard, ceiling)
            resource.setrlimit(rlimit, (soft, hard))


def die_with_parent() -> None:
    """Linux: get SIGKILL when the server dies, so no kernel outlives a killed server (bwrap does this too)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def show_open_figures() -> None:
    """After each execution: when the code switched matplotlib away from the inline backend (for example
    `matplotlib.use('Agg')`), the inline backend no longer sends the figures still open, so send them here, as it
    would, and close them. With the inline backend active this does nothing (it flushes its own figures)."""
    plt = sys.modules.get("matplotlib.pyplot")
    if plt is None:
        return
    try:
        import base64
        import io

        import matplotlib
        from IPython.display import publish_display_data

        if "inline" in matplotlib.get_backend():
            return
        for num in plt.get_fignums():
            fig = plt.figure(num)
            buf = io.BytesIO()
            fig.savefig(buf, format="png", bbox_inches="tight")
            publish_display_data({"image/png": base64.b64encode(buf.getvalue()).decode("ascii")})  # type: ignore[no-untyped-call]
        plt.close("all")
    except Exception as exc:  # a broken figure must not break the run's result
        print(f"(ci-mcp could not render an open figure: {type(exc).__name__}: {exc})", file=sys.stderr)


def main() -> None:
    die_with_parent()
    limits = json.loads(sys.argv[1])
    apply_limits(limits)
    os.umask(0o077)
    from ipykernel.kernelapp import IPKernelApp

    app = IPKernelApp.instance()
    app.initialize(sys.argv[2:])  # type: ignore[no-untyped-call]
    if app.shell is not None:
        app.shell.events.register("post_execute", show_open_figures)
    app.start()  # type: ignore[no-untyped-call]


if __name__ == "__main__":
    main()
