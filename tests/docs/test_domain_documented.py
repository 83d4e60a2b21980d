"""Every method of ``diffkit.Domain`` is in the plugin tutorial with its parameters, so that an
author needs no source to learn what a method gets."""

from __future__ import annotations

import inspect
import re

import pytest

from diffkit import Domain
from doctools import DOCS

METHODS = sorted(name for name, value in vars(Domain).items() if inspect.isfunction(value) and not name.startswith("_"))


def test_the_methods_are_found():
    assert {"build_dataset", "decode", "fit_data", "write_samples"} <= set(METHODS)


@pytest.mark.parametrize("method", METHODS)
def test_the_tutorial_shows_the_method_with_all_its_parameters(method):
    parameters = [name for name in inspect.signature(getattr(Domain, method)).parameters if name != "self"]
    shown = re.findall(rf"\b{method}\(([^)]*)\)", (DOCS / "writing-a-plugin.md").read_text())
    assert shown, f"docs/writing-a-plugin.md does not show {method}(...)"
    assert any(all(re.search(rf"\b{name}\b", arguments) for name in parameters) for arguments in shown), (
        f"docs/writing-a-plugin.md shows {method} without all of its parameters {parameters}: {shown}")


@pytest.mark.parametrize("method", METHODS)
def test_the_method_has_a_docstring(method):
    assert len((inspect.getdoc(getattr(Domain, method)) or "").split()) >= 8, f"Domain.{method} needs a docstring"
