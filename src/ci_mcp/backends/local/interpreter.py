"""What the kernel's Python is: the directories it needs inside the sandbox and the analysis libraries it has.

Learned once, by asking that interpreter itself in a short subprocess with the kernel's scrubbed environment (no
PYTHONPATH, no user site). The interpreter's own answer is the only reliable one: a virtual environment built on
the same base Python resolves to the very same executable, yet has its own prefix, site-packages and `.pth` paths.
`importlib.util.find_spec` locates a package without importing it, so the probe costs one interpreter start.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

ANALYSIS_LIBRARIES = ("numpy", "pandas", "matplotlib", "openpyxl")
"""The libraries analyses expect (installed by the `ci-mcp[analysis]` extra)."""
KERNEL_REQUIREMENTS = ("IPython", "matplotlib_inline")
"""What the kernel itself runs on: ci-mcp's IPython worker (kernel_launcher.py) and its inline figures. A virtual
environment made with ipykernel, as the README says, has both."""
OTHER_LIBRARIES = ("scipy", "seaborn", "sklearn", "statsmodels", "pyarrow", "polars", "PIL", "xlrd")
"""Further libraries worth telling the model about when present."""
_ALREADY_MOUNTED = tuple(Path(p) for p in ("/usr", "/bin", "/sbin", "/lib", "/lib64"))  # /usr and its links

_PROBE = """
import importlib.util, json, site, sys
def has(name):
    try:
        return importlib.util.find_spec(name) is not None
    except Exception:
        return False
print(json.dumps({
    "version": sys.version.split()[0],
    "paths": [sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix, *site.getsitepackages(), *sys.path],
    "libraries": [name for name in sys.argv[1:] if has(name)],
}))
"""


@dataclass(frozen=True)
class Interpreter:
    python: str
    version: str = ""
    mounts: tuple[Path, ...] = ()
    """Paths to bind read-only at the same place in the sandbox (prefixes, import paths, the executable's links)."""
    libraries: frozenset[str] = frozenset()
    """Which of KERNEL_REQUIREMENTS, ANALYSIS_LIBRARIES and OTHER_LIBRARIES the interpreter can import."""
    error: str = ""
    """Why the interpreter could not be examined (empty when it was)."""

    @property
    def missing(self) -> list[str]:
        return [name for name in ANALYSIS_LIBRARIES if name not in self.libraries]

    @property
    def kernel_missing(self) -> list[str]:
        """Which of KERNEL_REQUIREMENTS it lacks (none when it could not be examined: unknown is not missing)."""
        return [] if self.error else [name for name in KERNEL_REQUIREMENTS if name not in self.libraries]


def probe(
    python: str, env: dict[str, str], *, not_containing: tuple[Path, ...] = (), not_inside: tuple[Path, ...] = ()
) -> Interpreter:
    """Ask `python` for its paths and libraries. No mount may be or contain a path of `not_containing` (the
    user's home, the data directory, the kernels' socket directory), nor lie inside one of `not_inside` (the
    data and socket directories); a Python environment inside the home directory is fine."""
    return Probe(python, env, not_containing=not_containing, not_inside=not_inside).result()


class Probe:
    """`probe` started now and read later: the interpreter starts while the server imports the MCP SDK, so the
    server's start does not wait for it one after the other (issue 12)."""

    def __init__(
        self,
        python: str,
        env: dict[str, str],
        *,
        not_containing: tuple[Path, ...] = (),
        not_inside: tuple[Path, ...] = (),
    ) -> None:
        self.python, self._not_containing, self._not_inside = python, not_containing, not_inside
        self._home = tempfile.TemporaryDirectory(prefix="ci-mcp-probe-")
        self._answer: Interpreter | None = None
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[str] | None = None
        try:
            self._proc = subprocess.Popen(
                [python, "-c", _PROBE, *KERNEL_REQUIREMENTS, *ANALYSIS_LIBRARIES, *OTHER_LIBRARIES],
                env={**env, "HOME": self._home.name},
                cwd=self._home.name,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        except OSError as exc:
            self._finish(Interpreter(python, error=f"{python} could not be run ({exc})"))

    def _finish(self, answer: Interpreter) -> Interpreter:
        self._answer = answer
        self._home.cleanup()
        return answer

    def result(self) -> Interpreter:
        with self._lock:
            return self._answer or self._wait()

    def _wait(self) -> Interpreter:
        assert self._proc is not None
        try:
            stdout, stderr = self._proc.communicate(timeout=30)
        except subprocess.TimeoutExpired as exc:
            self._stop()
            return self._finish(Interpreter(self.python, error=f"{self.python} could not be run ({exc})"))
        return self._finish(self._parse(stdout, stderr, self._proc.returncode))

    def cancel(self) -> None:
        """Stop a probe nobody will read (a backend closed before it needed the answer): its process is ended and
        reaped, its pipes closed and its temporary home removed, whether or not it had finished."""
        with self._lock:
            if self._answer is None:
                self._stop()
                self._finish(Interpreter(self.python, error="the probe was cancelled"))

    def _stop(self) -> None:
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.kill()
            self._proc.communicate()  # reaps it and closes its pipes, even when it had already exited

    def _parse(self, stdout: str, stderr: str, returncode: int) -> Interpreter:
        python = self.python
        try:
            facts = json.loads(stdout.strip().splitlines()[-1])
        except (IndexError, ValueError):
            detail = (stderr.strip().splitlines() or [f"exit code {returncode}"])[-1]
            return Interpreter(python, error=f"{python} could not be examined ({detail[:300]})")
        paths = [Path(p) for p in facts.get("paths", []) if p] + _link_dirs(Path(python))
        return Interpreter(
            python,
            version=str(facts.get("version", "")),
            mounts=_mounts(paths, self._not_containing, self._not_inside),
            libraries=frozenset(str(name) for name in facts.get("libraries", [])),
        )


def _link_dirs(python: Path) -> list[Path]:
    """The directory of every link on the way from `python` to the real executable (a venv's bin/python points
    into its base Python), so that each step of the chain exists in the sandbox."""
    dirs = []
    current = Path(os.path.abspath(python))
    for _ in range(40):
        dirs.append(current.parent)
        if not current.is_symlink():
            break
        current = Path(os.path.abspath(current.parent / os.readlink(current)))
    return dirs


def _mounts(paths: list[Path], not_containing: tuple[Path, ...], not_inside: tuple[Path, ...]) -> tuple[Path, ...]:
    """Existing paths, each as seen and as resolved, without what is already mounted or forbidden, and without
    anything inside another chosen path."""
    containing = [p.resolve() for p in not_containing] + [Path(os.path.abspath(p)) for p in not_containing]
    inside = [p.resolve() for p in not_inside] + [Path(os.path.abspath(p)) for p in not_inside]
    candidates: set[Path] = set()
    for path in paths:
        if not path.is_absolute() or not path.exists():
            continue
        for form in (Path(os.path.abspath(path)), path.resolve()):
            if form == Path("/") or any(form.is_relative_to(m) for m in _ALREADY_MOUNTED):
                continue
            if any(p.is_relative_to(form) for p in containing) or any(form.is_relative_to(p) for p in inside):
                continue
            candidates.add(form)
    chosen: list[Path] = []
    for path in sorted(candidates, key=lambda p: len(p.parts)):
        if not any(path.is_relative_to(c) for c in chosen):
            chosen.append(path)
    return tuple(sorted(chosen))


def libraries_sentence(python: Interpreter) -> str:
    """What the kernel can import, for the calling model (and the code-writing model): only what was measured."""
    if python.error:
        return (
            "Which libraries the kernel has is unknown (its Python could not be examined); check with "
            "importlib.util.find_spec before relying on one."
        )
    present = [name for name in (*ANALYSIS_LIBRARIES, *OTHER_LIBRARIES) if name in python.libraries]
    text = f"Python {python.version}" + (
        f" with {', '.join(present)} installed" if present else " with the standard library only"
    )
    if python.missing:
        text += (
            f"; NOT installed: {', '.join(python.missing)} (use the standard library instead, e.g. csv and "
            "statistics; nothing can be installed)"
        )
    return text + "."
