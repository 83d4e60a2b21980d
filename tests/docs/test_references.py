"""Every dotted ``diffkit.`` name the docs mention in backticks exists."""

from __future__ import annotations

import importlib
import re

import pytest

from doctools import DOCS

REFERENCE = re.compile(r"`(diffkit(?:\.[A-Za-z_]\w*)+)")


def resolve(dotted: str):
    """The object a dotted name refers to: the longest importable module, then attributes."""
    parts = dotted.split(".")
    for split in range(len(parts), 0, -1):
        try:
            target = importlib.import_module(".".join(parts[:split]))
        except ModuleNotFoundError:
            continue
        for attribute in parts[split:]:
            target = getattr(target, attribute)
        return target
    raise ModuleNotFoundError(dotted)


PAGES = sorted(DOCS.glob("*.md"))


@pytest.mark.parametrize("page", PAGES, ids=[page.name for page in PAGES])
def test_dotted_names_in_docs_exist(page):
    names = sorted(set(REFERENCE.findall(page.read_text())))
    missing = []
    for name in names:
        try:
            resolve(name)
        except (ModuleNotFoundError, AttributeError):
            missing.append(name)
    assert not missing, f"{page.name} mentions names that do not exist: {missing}"


def test_the_reference_pattern_catches_a_missing_name():
    assert REFERENCE.findall("see `diffkit.process.q_sample` and `diffkit.nowhere.thing`") == [
        "diffkit.process.q_sample", "diffkit.nowhere.thing"]
    with pytest.raises((ModuleNotFoundError, AttributeError)):
        resolve("diffkit.process.no_such_function")
