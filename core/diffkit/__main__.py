"""``python -m diffkit`` (also what ``torchrun -m diffkit`` runs)."""

from .cli import main

main()
