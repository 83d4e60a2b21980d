"""Conditions, parsed the same way for every domain.

Two kinds, each with a null value that classifier-free guidance uses for "no condition":

* **class labels**: ``"7"`` or a class name; ``"0,1,2"`` is a per-sample list, cycled over the
  samples; ``"none"`` asks for unconditional samples. Labels are ``(n,)`` long tensors and the
  null label is ``-1``. From Python: an int, a name, or a list of them.
* **continuous values** (e.g. molecular properties): ``"qed=0.6,logp=1"`` sets values for every
  sample; ``"qed=0.5;qed=0.7"`` is a per-sample list separated by ``;``, cycled; a value left out
  is free. Every value given must be a finite number. Values are ``(n, P)`` float tensors and the
  null value is NaN. From Python: a dict, or a list of dicts.

An empty condition is an error: ``none`` says "unconditional" explicitly.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
from torch import Tensor

from ..tree import draw_per_sample

NULL_LABEL = -1
UNCONDITIONAL_WORDS = ("none", "null", "uncond", "unconditional")


def is_unconditional(cond: Any) -> bool:
    return isinstance(cond, str) and cond.strip().lower() in UNCONDITIONAL_WORDS


# -- class labels -------------------------------------------------------------------------------

def parse_labels(cond: Any, class_names: Sequence[str], n: int) -> Tensor:
    """The labels ``(n,)`` that ``cond`` asks for (see the module docstring); a list is cycled."""
    if isinstance(cond, Tensor):
        cond = cond.reshape(-1).tolist()
    if isinstance(cond, str):
        tokens = [token.strip() for token in cond.split(",")]
        if not any(tokens):
            raise ValueError("--cond is empty; give a class label, e.g. --cond 3, or 'none' for unconditional samples")
        cond = tokens
    elif not isinstance(cond, (list, tuple)):
        cond = [cond]
    if not cond:
        raise ValueError("the condition is an empty list; give at least one class label")
    labels = [label_index(item, class_names) for item in cond]
    return torch.tensor([labels[i % len(labels)] for i in range(n)], dtype=torch.long)


def label_index(item: Any, class_names: Sequence[str]) -> int:
    """One label: a class name, an index, or an unconditional word (the null label)."""
    text = str(item).strip()
    if is_unconditional(text):
        return NULL_LABEL
    if text in class_names:
        return list(class_names).index(text)
    if text.lstrip("-").isdigit() and 0 <= int(text) < len(class_names):
        return int(text)
    shown = ", ".join(class_names[:20]) + (" ..." if len(class_names) > 20 else "")
    raise ValueError(f"--cond {text!r} is not a class of this model; classes: {shown or 'none known'} "
                     f"(or a label 0..{len(class_names) - 1}, or 'none')")


def draw_labels(n: int, num_classes: int, counts: Tensor | None = None, generator=None) -> Tensor:
    """Labels for samples that ask for none: drawn with the training data's class frequencies
    ``counts`` (uniformly when they are unknown or all zero); null labels when there are no classes.
    ``generator`` may be a :class:`diffkit.SampleGenerators` (one draw per sample's generator)."""
    if num_classes == 0:
        return torch.full((n,), NULL_LABEL, dtype=torch.long)
    weights = torch.ones(num_classes) if counts is None else counts.detach().float().cpu()[:num_classes]
    if weights.sum() <= 0:
        weights = torch.ones(num_classes)

    def draw(g: torch.Generator | None, count: int) -> Tensor:
        device = g.device if g is not None else torch.device("cpu")
        return torch.multinomial(weights.to(device), count, replacement=True, generator=g).cpu()

    return draw_per_sample(draw, n, generator)


def label_texts(labels: Tensor | None, class_names: Sequence[str], n: int | None = None) -> list[str]:
    """Readable labels (for file names and records): the class name, else the index, or ``uncond``."""
    if labels is None:
        return ["uncond"] * (n or 0)
    return ["uncond" if label < 0 else (class_names[label] if label < len(class_names) else str(label))
            for label in labels.reshape(-1).tolist()]


# -- continuous values --------------------------------------------------------------------------

def parse_values(cond: Any, names: Sequence[str], n: int, *,
                 extra_keys: Sequence[str] = ()) -> tuple[Tensor, list[dict[str, float]]]:
    """``(values (n, P), extras)`` for a condition on the named values (see the module docstring).

    ``values`` holds NaN where a value is free (the null value). ``extra_keys`` are further keys
    the domain reads itself (e.g. ``atoms``); ``extras`` gives each sample's, as floats."""
    entries = _value_entries(cond)
    allowed = list(names) + list(extra_keys)
    rows, extras = [], []
    for entry in entries:
        unknown = [key for key in entry if key not in allowed]
        if unknown:
            raise ValueError(f"--cond: unknown key {unknown[0]!r}; this model knows: {', '.join(allowed) or 'none'}")
        rows.append([float(entry.get(name, math.nan)) for name in names])
        extras.append({key: float(entry[key]) for key in extra_keys if key in entry})
    values = torch.tensor([rows[i % len(rows)] for i in range(n)], dtype=torch.float32).reshape(n, len(names))
    return values, [extras[i % len(extras)] for i in range(n)]


def _value_entries(cond: Any) -> list[dict[str, float]]:
    """Per-sample dicts of a value condition given as text, a dict or a list of dicts."""
    if cond is None or is_unconditional(cond):
        return [{}]
    if isinstance(cond, dict):
        return [_numbers(cond, str(cond))]
    if isinstance(cond, (list, tuple)):
        if not cond:
            raise ValueError("the condition is an empty list; give at least one dict of values")
        return [entry for item in cond for entry in _value_entries(item)]
    text = str(cond)
    samples = [part for part in text.split(";")]
    if not any(part.strip() for part in samples):
        raise ValueError("--cond is empty; give values such as 'qed=0.6', or 'none' for unconditional samples")
    return [_parse_pairs(part, text) for part in samples if part.strip()]


def _parse_pairs(part: str, text: str) -> dict[str, float]:
    pairs: dict[str, float] = {}
    for piece in filter(None, (piece.strip() for piece in part.split(","))):
        key, sep, raw = piece.partition("=")
        if not sep:
            raise ValueError(f"--cond {text!r}: expected key=value pairs such as 'qed=0.8', got {piece!r}")
        pairs[key.strip().lower()] = raw.strip()
    return _numbers(pairs, text)


def _numbers(pairs: dict, text: str) -> dict[str, float]:
    """The values of ``pairs`` as floats; each must be a finite number (NaN would mean "free",
    which leaving the key out says)."""
    numbers = {}
    for key, raw in pairs.items():
        try:
            number = float(raw)
        except (TypeError, ValueError):
            raise ValueError(f"--cond {text!r}: the value of {key!r} is not a number: {raw!r}") from None
        if not math.isfinite(number):
            raise ValueError(f"--cond {text!r}: the value of {key!r} must be a finite number, got {raw!r}; "
                             "leave a key out to leave it free")
        numbers[str(key).lower()] = number
    return numbers
