"""The session-directory walk (backends/local/workspace.py): by directory file descriptors, and by paths (Windows).

    python benchmarks/bench_walk.py [--repeat 15]

Builds working directories of a typical and of the largest size the walk looks at (10,000 entries), snapshots each
with both walks, and prints the median and p95 time of one snapshot in milliseconds as a Markdown table (a run takes
two snapshots: before and after). Paste it into benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

from ci_mcp.backends.local import workspace

SHAPES = {  # name -> (directories, files per directory)
    "typical: 20 files, 2 dirs": (2, 10),
    "500 files in 10 dirs": (10, 50),
    "9,900 files in 99 dirs (the entry cap)": (99, 100),
}


def build(root: Path, dirs: int, files: int) -> None:
    for d in range(dirs):
        sub = root / f"d{d:03d}"
        sub.mkdir()
        for f in range(files):
            (sub / f"f{f:03d}.csv").write_bytes(b"x" * 100)


def timings(root: Path, repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        start = time.perf_counter()
        snap = workspace.snapshot(root, deadline_s=60)
        out.append((time.perf_counter() - start) * 1000)
        assert snap.stopped is None, snap.stopped
    return out


def _load() -> str:
    getloadavg = getattr(os, "getloadavg", None)  # POSIX only: this also runs on Windows, where the path walk is used
    return f"{getloadavg()[0]:.1f}" if getloadavg else "unknown"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()
    native = workspace.DIR_FDS
    when = time.strftime("%Y-%m-%d", time.gmtime())
    print(f"`python benchmarks/bench_walk.py --repeat {args.repeat}` on {platform.machine()}, {os.cpu_count()} cores,")
    print(f"Python {sys.version.split()[0]}, {platform.system()}, {when}; load average {_load()}.\n")
    print("| directory | walk by fds p50 ms | p95 | walk by paths p50 ms | p95 |")
    print("|---|---|---|---|---|")
    for name, (dirs, files) in SHAPES.items():
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            build(root, dirs, files)
            row = [name]
            for by_fds in (True, False):
                if by_fds and not native:
                    row += ["n/a", "n/a"]
                    continue
                workspace.DIR_FDS = by_fds
                ms = timings(root, args.repeat)
                row += [f"{statistics.median(ms):.2f}", f"{statistics.quantiles(ms, n=20)[-1]:.2f}"]
            workspace.DIR_FDS = native
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
