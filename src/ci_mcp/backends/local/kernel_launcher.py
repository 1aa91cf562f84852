"""Entry point of a kernel process: apply resource limits, then become an ipykernel.

Run as `python -m ci_mcp.backends.local.kernel_launcher <limits-json> -f <connection-file>`. It imports nothing
from ci_mcp besides this file, so it works inside the sandbox with only the Python environment mounted.
"""

from __future__ import annotations

import json
import os
import resource
import sys


def apply_limits(limits: dict[str, int]) -> None:
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
            resource.setrlimit(rlimit, (soft, hard))


def die_with_parent() -> None:
    """Linux: get SIGKILL when the server dies, so no kernel outlives a killed server (bwrap does this too)."""
    try:
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def main() -> None:
    die_with_parent()
    limits = json.loads(sys.argv[1])
    apply_limits(limits)
    os.umask(0o077)
    sys.argv = [sys.argv[0], *sys.argv[2:]]
    from ipykernel import kernelapp

    kernelapp.launch_new_instance()


if __name__ == "__main__":
    main()
