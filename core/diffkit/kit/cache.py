"""The cache folder for derived files (decoded data sets, processed graphs, reference networks).

One setting decides where it is: the config key ``data.cache_dir`` when set, else the variable
``DIFFKIT_CACHE_DIR``, else ``$XDG_CACHE_HOME/diffkit``, else ``~/.cache/diffkit``. Each domain
keeps its files in a subfolder named after it.
"""

from __future__ import annotations

import os
from pathlib import Path

ENVIRONMENT_VARIABLE = "DIFFKIT_CACHE_DIR"


def cache_dir(domain: str, config: dict | None = None) -> Path:
    """The cache folder of ``domain`` (not created): see the module docstring for the order."""
    configured = (config or {}).get("data", {}).get("cache_dir", "")
    if configured:
        base = Path(configured).expanduser()
    elif os.environ.get(ENVIRONMENT_VARIABLE):
        base = Path(os.environ[ENVIRONMENT_VARIABLE]).expanduser()
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "diffkit"
    return base / domain
