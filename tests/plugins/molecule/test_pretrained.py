"""The shipped QM9 weights: they load, and property conditioning moves the properties."""

from __future__ import annotations

import json

import pytest
import torch

from diffkit.generate import SampleRequest, generate
from diffkit.loading import load_for_sampling
from diffkit_molecule import chem, properties
from diffkit_molecule.outputs import molecules_from_graphs


@pytest.fixture(scope="module")
def shipped():
    from diffkit_molecule import MoleculeDomain

    domain = MoleculeDomain()
    path = domain.pretrained()
    assert path is not None, "the plugin should ship weights in diffkit_molecule/weights/"
    model, config = load_for_sampling(domain, path)
    return domain, model, config, path


def mean_weight(domain, model, config, cond: str, n: int = 96) -> tuple[float, int]:
    torch.set_num_threads(1)
    request = SampleRequest(n=n, cond=cond, guidance=2.0, seed=0)  # the weights' own sampler and steps
    batch = generate(domain, model, config, request)
    mols = molecules_from_graphs(batch["x"]["nodes"], batch["x"]["edges"], config["data"]["atom_types"])
    valid = [m for m in (chem.sanitized(mol) for mol in mols) if m is not None]
    weights = [properties.compute(m, ["mol_weight"])[0] for m in valid]
    return sum(weights) / max(len(weights), 1), len(valid)


def test_shipped_weights_come_with_their_record(shipped):
    _, model, config, path = shipped
    record = json.loads((path / "config.json").read_text())
    assert record["config"]["data"]["atom_types"] == model.atom_types == config["data"]["atom_types"]
    assert 0 <= record["card"]["scores"]["validity"] <= 1
    assert "validity" in (path / "README.md").read_text()


def test_property_conditioning_shifts_the_property_distribution(shipped):
    domain, model, config, _ = shipped
    light, light_valid = mean_weight(domain, model, config, "mol_weight=105")
    heavy, heavy_valid = mean_weight(domain, model, config, "mol_weight=140")
    assert light_valid > 20 and heavy_valid > 20
    # QM9's molecular weights spread with a standard deviation of about 7.5 around 123.
    assert heavy - light > 5, (light, heavy)


def test_configs_saved_before_the_categorical_defaults_keep_their_settings(domain):
    from diffkit.config import default_config, fill_defaults

    today = default_config(domain)
    assert today["diffusion"]["kind"] == "categorical" and today["sample"]["sampler"] == "discrete_flow"
    saved = default_config(domain)
    del saved["diffusion"]["kind"]
    saved["sample"] = {"sampler": "ddpm", "steps": 50, "guidance": 1.0, "batch_size": 1000, "resample": 3}
    filled = fill_defaults(domain, saved)
    assert filled["diffusion"]["kind"] == "gaussian"
    assert {key: filled["sample"][key] for key in ("sampler", "steps", "spacing", "options", "precision")} == {
        "sampler": "ddpm", "steps": 50, "spacing": "auto", "options": {}, "precision": "float32"}
