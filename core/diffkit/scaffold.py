"""``diffkit new-plugin``: a working plugin package to start from."""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path
from string import Template

# template file -> path in the new package ({name} is filled in), per kind of diffusion
FILES = {
    "gaussian": {
        "pyproject.toml.tmpl": "pyproject.toml",
        "README.md.tmpl": "README.md",
        "plugin.py.tmpl": "src/diffkit_{name}/plugin.py",
        "test_plugin.py.tmpl": "tests/test_{name}.py",
    },
    "categorical": {
        "pyproject.toml.tmpl": "pyproject.toml",
        "README_categorical.md.tmpl": "README.md",
        "plugin_categorical.py.tmpl": "src/diffkit_{name}/plugin.py",
        "test_plugin_categorical.py.tmpl": "tests/test_{name}.py",
    },
    "tabular": {
        "pyproject.toml.tmpl": "pyproject.toml",
        "README_tabular.md.tmpl": "README.md",
        "plugin_tabular.py.tmpl": "src/diffkit_{name}/plugin.py",
        "test_plugin_tabular.py.tmpl": "tests/test_{name}.py",
    },
}
KINDS = tuple(FILES)


def builtin_names() -> set[str]:
    """Names a new plugin may not take: those of the built-in plugins' packages (``diffkit_<name>``),
    which are also their domains' names."""
    from .plugins import BUILTIN_PLUGINS

    return {module.split(".")[0].removeprefix("diffkit_") for module in BUILTIN_PLUGINS}


def create_plugin(name: str, directory: str | Path = ".", kind: str = "gaussian") -> Path:
    """Write the package ``diffkit-<name>`` under ``directory`` and return its folder.

    ``name`` becomes the domain name and the import name ``diffkit_<name>``; an existing folder
    is never overwritten. ``kind`` picks the starting point: ``"gaussian"`` (numeric sequences
    from a CSV file), ``"categorical"`` (DNA-like token sequences from a FASTA file) or
    ``"tabular"`` (tables of numeric and categorical columns from a CSV file, a mixed state).
    """
    if kind not in FILES:
        raise ValueError(f"unknown plugin kind {kind!r}; valid: {', '.join(KINDS)}")
    if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
        raise ValueError(f"plugin name {name!r} must be lowercase letters, digits and underscores, "
                         "starting with a letter (it becomes the Python package diffkit_<name>)")
    if name in builtin_names():
        raise ValueError(f"{name!r} is taken by a built-in plugin (its domain and its package diffkit_{name}); "
                         f"choose another name, e.g. 'my_{name}'")
    root = Path(directory) / f"diffkit-{name}"
    if root.exists():
        raise FileExistsError(f"{root} already exists; choose another name or --dir")
    values = {"name": name, "class_name": "".join(part.capitalize() for part in name.split("_"))}
    templates = resources.files("diffkit") / "templates"
    for template_name, relative in FILES[kind].items():
        target = root / relative.format(name=name)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(Template((templates / template_name).read_text()).substitute(values))
    (root / "src" / f"diffkit_{name}" / "__init__.py").write_text(f'"""The {name} domain for diffkit."""\n')
    return root
