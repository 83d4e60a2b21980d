"""A virtual environment on top of the one running the tests, to install packages into without
touching the running one."""

from __future__ import annotations

import site
import subprocess
import sys
from pathlib import Path


def nested_venv(folder: Path) -> str:
    """Create a virtual environment at ``folder`` that sees every package the running interpreter
    sees, and return its python.

    ``--system-site-packages`` would reach the base interpreter's packages only, not those of a
    virtual environment the tests run in (the usual way to install diffkit). Instead a ``.pth`` file
    adds the running interpreter's site folders after the new environment's own, processing their
    ``.pth`` files too (editable installs are made of them)."""
    subprocess.run([sys.executable, "-m", "venv", str(folder)], check=True)
    python = folder / "bin" / "python"
    own = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                         capture_output=True, text=True, check=True).stdout.strip()
    outer = site.getsitepackages() + ([site.getusersitepackages()] if site.ENABLE_USER_SITE else [])
    lines = "".join(f"import site; site.addsitedir({path!r})\n" for path in outer if Path(path).is_dir())
    (Path(own) / "_outer_environment.pth").write_text(lines)
    return str(python)
