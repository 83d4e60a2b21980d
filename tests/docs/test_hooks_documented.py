"""Every hook is documented in code and in the docs, and exercised by a test."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from diffkit import hookspecs
from doctools import DOCS, ROOT

HOOKS = sorted(name for name, value in vars(hookspecs).items()
               if callable(value) and hasattr(value, "diffkit_spec"))
TESTS = ROOT / "tests"


def test_the_hooks_are_found():
    assert "diffkit_register_domains" in HOOKS and len(HOOKS) >= 4


@pytest.mark.parametrize("hook", HOOKS)
def test_hookspec_has_a_docstring_describing_its_parameters(hook):
    function = getattr(hookspecs, hook)
    doc = inspect.getdoc(function) or ""
    assert len(doc.split()) >= 10, f"{hook} needs a docstring saying what the hook is for"
    for parameter in inspect.signature(function).parameters:
        assert f":param {parameter}:" in doc, f"{hook}: its docstring does not describe {parameter!r}"


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_is_mentioned_in_the_plugin_docs(hook):
    pages = [DOCS / "writing-a-plugin.md", DOCS / "api.md"]
    mention = re.compile(rf"`(diffkit\.hookspecs\.)?{hook}\b")
    assert any(mention.search(page.read_text()) for page in pages if page.exists()), (
        f"{hook} is not mentioned in docs/writing-a-plugin.md or docs/api.md")


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_is_exercised_by_a_test(hook):
    # Meta-tests (this folder) name every hook and do not count.
    users = [path for path in TESTS.rglob("*.py")
             if Path(__file__).parent not in path.parents and hook in path.read_text()]
    assert users, f"no test under tests/ (outside tests/docs) exercises {hook}"
