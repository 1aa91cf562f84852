"""Virtual environments for kernel-interpreter tests: real venvs on the test interpreter's base Python."""

from __future__ import annotations

import site
import subprocess
import sys
from pathlib import Path


def make_venv(root: Path, *, hide: tuple[str, ...] = ()) -> Path:
    """A venv at `root` (no pip) that imports the test environment's packages through a .pth file, so IPython
    is there; `hide` names top-level packages it must not be able to import, as if they were not installed.
    Returns its `bin/python`."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True, timeout=120)
    python = root / "bin" / "python"
    found = subprocess.run(
        [str(python), "-c", "import site; print(site.getsitepackages()[0])"],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    own = Path(found.stdout.strip())
    (own / "shared-packages.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    if hide:
        # `import` lines of a .pth file run at start-up; None in sys.modules makes `import numpy` fail and
        # importlib.util.find_spec('numpy') return None, as for a package that is not installed.
        (own / "zz-hide.pth").write_text(f"import sys; sys.modules.update(dict.fromkeys({list(hide)!r}))\n")
    return python
