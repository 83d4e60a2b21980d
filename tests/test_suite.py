"""The test suite itself: every test file runs alone (``python -m pytest tests/<file>``), whatever
else is collected with it."""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).parent


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
        elif isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
    return names


def test_no_test_module_imports_a_conftest():
    """pytest imports every folder's conftest.py as a module named ``conftest``: which one that name
    finds depends on the files collected before, so helpers shared by tests live in plain modules
    (``run_checks.py``, ``image_helpers.py``, ...) and fixtures in conftest.py."""
    offenders = [str(path.relative_to(TESTS)) for path in sorted(TESTS.rglob("*.py"))
                 if "conftest" in imported_modules(path)]
    assert offenders == []

