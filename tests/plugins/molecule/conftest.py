"""Shared fixtures of the molecule domain's tests: small molecule files and a private cache."""

from __future__ import annotations

import gzip
import itertools
from pathlib import Path

import pytest

from diffkit.config import default_config
from diffkit_molecule import MoleculeDomain
from diffkit_molecule.sources import bundled_path

# Drug-like and QM9-like molecules with aromatic rings, charges, triple bonds and halogens.
VALID_SMILES = [
    "CCO", "c1ccccc1", "CC(=O)O", "C#N", "OC1CC1", "c1ccncc1", "CC(=O)[O-]", "C[NH3+]",
    "O=C1NC=CC1=O", "CC#CC", "FC(F)F", "c1cc[nH]c1", "COC(=O)C1=CCCN1", "CC1=CC(=O)N=C1",
    "[NH3+]CC([O-])=O", "C1CC2CC12", "ClC(Cl)Cl", "Cc1ccc(O)cc1", "N#CC(=O)N", "CC(C)(C)O",
]
INVALID_SMILES = ["C1CC", "C(C)(C)(C)(C)C", "not_a_smiles", "c1cccc1"]




@pytest.fixture
def valid_smiles() -> list[str]:
    return list(VALID_SMILES)


@pytest.fixture
def invalid_smiles() -> list[str]:
    return list(INVALID_SMILES)


@pytest.fixture
def domain() -> MoleculeDomain:
    return MoleculeDomain()


@pytest.fixture
def smiles_file(tmp_path: Path) -> Path:
    path = tmp_path / "molecules.smi"
    path.write_text("".join(f"{s} mol{i}\n" for i, s in enumerate(VALID_SMILES)))
    return path


@pytest.fixture
def qm9_sample_file(tmp_path: Path) -> Path:
    """The first 300 molecules of the bundled QM9 subset, as a plain file."""
    with gzip.open(bundled_path(), "rt") as file:
        lines = list(itertools.islice(file, 300))
    path = tmp_path / "qm9_300.smi"
    path.write_text("".join(lines))
    return path


@pytest.fixture
def config(domain, tmp_path) -> dict:
    """The default config, shrunk for speed, with a cache private to the test."""
    config = default_config(domain)
    config["data"]["cache_dir"] = str(tmp_path / "cache")
    config["model"].update(hidden=32, edge_hidden=16, heads=4, layers=2)
    return config


@pytest.fixture
def gaussian_config(config) -> dict:
    """The shrunk config with Gaussian diffusion on the one-hot state (the domain's default is
    categorical) and the core's sampling settings."""
    config["diffusion"]["kind"] = "gaussian"
    config["sample"].update(sampler="ddpm", spacing="auto", options={}, precision="float32")
    return config
