"""Mixed states: leaves with different processes, one model and one time, against an exact joint law
of a class and a number (a labelled Gaussian mixture), and the tabular template through the runner."""

from __future__ import annotations

import importlib
import sys

import pytest
import torch

from diffkit import CategoricalDiffusion, Diffusion, FlowMatching, MixedProcess
from diffkit.gmm import ExactLabelledModel, GaussianMixture

DOUBLE = torch.float64
WEIGHTS, MEANS, STDS = (0.5, 0.3, 0.2), (-1.0, 0.5, 2.0), (0.3, 0.5, 0.2)
MIXTURE = GaussianMixture(torch.tensor(WEIGHTS), torch.tensor(MEANS)[:, None], stds=torch.tensor(STDS))


def example(n: int) -> dict:
    return {"x": torch.zeros(n, 1, dtype=DOUBLE), "label": torch.zeros(n, dtype=torch.long)}


def conditional_statistics(samples: dict) -> tuple[list[float], list[float], list[float]]:
    labels, x = samples["label"], samples["x"][:, 0]
    share = [float((labels == k).double().mean()) for k in range(3)]
    return share, [float(x[labels == k].mean()) for k in range(3)], [float(x[labels == k].std()) for k in range(3)]


@pytest.mark.parametrize("point, transition, sampler", [
    (FlowMatching(), "uniform", None),
    (FlowMatching("cosine"), "absorbing", "flow_midpoint_is_not_stepwise"),
    (Diffusion("cosine", "v"), "absorbing", "ddim"),
])
def test_samples_follow_the_joint_law_in_its_conditional_statistics(point, transition, sampler):
    """P(label), and the mean and spread of the number given each label, as the exact law has them:
    the number must follow the label drawn with it, not only its own marginal."""
    process = MixedProcess({"x": point, "label": CategoricalDiffusion(3, transition)})
    model = ExactLabelledModel(MIXTURE, process)
    if sampler == "flow_midpoint_is_not_stepwise":
        with pytest.raises(ValueError, match="'flow_midpoint' is not a stepwise sampler"):
            process.sample(model, example(4), sampler="flow_midpoint")
        sampler = "flow_euler"
    samples = process.sample(model, example(4000), steps=40, sampler=sampler, generator=torch.Generator().manual_seed(0))
    share, means, stds = conditional_statistics(samples)
    for k in range(3):
        # 4000 samples: the standard error of a share is at most 0.008, of a conditional mean 0.03
        # (the widest component, 0.5 / sqrt(0.3 * 4000) = 0.014, doubled); 40 steps add a little.
        assert abs(share[k] - WEIGHTS[k]) < 0.03
        assert abs(means[k] - MEANS[k]) < 0.05
        assert abs(stds[k] / STDS[k] - 1) < 0.12


def test_a_step_is_one_model_call_on_the_whole_state_and_options_reach_the_named_sampler():
    process = MixedProcess({"x": Diffusion("cosine", "v"), "label": CategoricalDiffusion(3, "uniform")})
    exact, seen = ExactLabelledModel(MIXTURE, process), []

    def model(state, t, cond=None):
        seen.append((sorted(state), float(t[0])))
        return exact(state, t)

    process.sample(model, example(8), steps=5, sampler="ddim", eta=1.0, generator=torch.Generator().manual_seed(1))
    assert seen == [(["label", "x"], pytest.approx(t)) for t in (1.0, 0.8, 0.6, 0.4, 0.2)]
    plan = process.get_sampler("ddim")
    assert plan["x"].__name__ == "sample_ddim" and plan["label"].__name__ == "sample_discrete_flow"
    assert plan.named == {"x"}
    plan = process.get_sampler({"x": "ddpm", "label": "ancestral"})
    assert plan["x"].__name__ == "sample_ddpm" and plan["label"].__name__ == "sample_ancestral"
    with pytest.raises(ValueError, match="the leaf 'label' runs categorical samplers, not 'ddim'"):
        process.get_sampler({"label": "ddim"})
    with pytest.raises(ValueError, match="uniform or quadratic in t, not 'karras'"):
        process.sample(model, example(2), steps=3, spacing="karras")


def test_the_loss_is_the_sum_of_each_leafs_own_loss():
    point, labels = FlowMatching(), CategoricalDiffusion(3, "absorbing")
    process = MixedProcess({"x": point, "label": labels})
    generator = torch.Generator().manual_seed(2)
    x0 = {"x": torch.randn(16, 1, generator=generator, dtype=DOUBLE),
          "label": torch.randint(0, 3, (16,), generator=generator)}
    t = torch.rand(16, generator=generator, dtype=DOUBLE).clamp(min=0.05)
    noise = {"x": torch.randn(16, 1, generator=generator, dtype=DOUBLE), "label": torch.rand(16, generator=generator, dtype=DOUBLE)}
    model = ExactLabelledModel(MIXTURE, process)
    joint = process.loss(model, x0, t=t, noise=noise, leaf_weights={"label": 0.5}, reduction="none")
    x_t = process.q_sample(x0, t, noise)
    output = model(x_t, t)
    alone_x = point.loss(lambda *_, **__: output["x"], x0["x"], t=t, noise=noise["x"], reduction="none")
    alone_label = labels.loss(lambda *_, **__: output["label"], x0["label"], t=t, noise=noise["label"], reduction="none")
    torch.testing.assert_close(joint, alone_x + 0.5 * alone_label)


def test_inpainting_a_known_label_draws_the_number_from_its_component():
    """Under absorbing transitions a kept label is revealed: the number follows N(mu_k, sd_k^2)."""
    process = MixedProcess({"x": FlowMatching(), "label": CategoricalDiffusion(3, "absorbing")})
    model = ExactLabelledModel(MIXTURE, process)
    known = example(3000)
    known["label"][:] = 2
    keep = {"label": torch.ones(3000)}  # the number, left out, is generated
    out = process.inpaint(model, known, keep, steps=40, sampler="flow_euler", generator=torch.Generator().manual_seed(3))
    assert bool((out["label"] == 2).all())
    assert abs(float(out["x"].mean()) - MEANS[2]) < 0.02 and abs(float(out["x"].std()) / STDS[2] - 1) < 0.08


def test_a_mixed_state_names_its_leaves_and_what_each_process_needs():
    process = MixedProcess({"x": FlowMatching(), "label": CategoricalDiffusion(3)})
    assert process.check_state({"x": torch.zeros(2, 1), "label": torch.zeros(2, 1)}) == [
        "['label'] state leaves of categorical diffusion must hold class indices (an integer dtype), got torch.float32"]
    assert "has the leaves ['label', 'x'], got ['x']" in process.check_state({"x": torch.zeros(2, 1)})[0]
    with pytest.raises(ValueError, match="pass an example state"):
        process.sample(lambda *a, **k: None, (2, 1))


# -- the tabular template through the conformance kit and the runner ----------------------------

@pytest.fixture(scope="module")
def tabular(tmp_path_factory):
    from diffkit.scaffold import create_plugin

    root = create_plugin("tables", tmp_path_factory.mktemp("tabular"), kind="tabular")
    sys.path.insert(0, str(root / "src"))
    try:
        yield importlib.import_module("diffkit_tables.plugin").TablesDomain()
    finally:
        sys.path.remove(str(root / "src"))
        sys.modules.pop("diffkit_tables.plugin", None)
        sys.modules.pop("diffkit_tables", None)


@pytest.mark.parametrize("kind", ["gaussian", "flow"])
def test_the_tabular_template_conforms(tabular, tmp_path, kind):
    from diffkit.testing import check_domain

    small = {"data": {"count": 256}, "model": {"hidden": 32}, "diffusion": {"kind": kind}}
    assert check_domain(tabular, tmp_path, overrides=small) == []


def test_a_tabular_run_resumes_exactly_and_samples_rows_with_a_kept_column(tabular, tmp_path, monkeypatch):
    from diffkit import checkpoint as ckpt
    from diffkit.config import resolve_config
    from diffkit.generate import SampleRequest, generate
    from diffkit.loading import load_for_sampling
    from diffkit.runner import train
    from run_checks import assert_same_weights, final_weights, stop_at_step

    config = resolve_config(tabular, sets=["diffusion.kind=flow", "data.count=256", "model.hidden=32", "train.steps=20",
                                           "train.checkpoint_every=10", "train.batch_size=32", "train.preview_every=0"])
    train(tabular, config, out=tmp_path / "straight", progress=False)
    stop_at_step(15, lambda: train(tabular, config, out=tmp_path / "resumed", progress=False), monkeypatch)
    assert ckpt.resolve(tmp_path / "resumed").name == "step_00000010.pt"
    train(tabular, config, out=tmp_path / "resumed", resume=True, progress=False)
    assert_same_weights(final_weights(tmp_path / "straight"), final_weights(tmp_path / "resumed"), rtol=0, atol=0)
    model, saved = load_for_sampling(tabular, tmp_path / "straight")
    rows = tabular.to_objects(generate(tabular, model, saved, SampleRequest(n=6, seed=0, init="colour=red,weight=2.5")),
                              saved)
    assert [(row["colour"], row["weight"]) for row in rows] == [("red", pytest.approx(2.5))] * 6
    assert {row["size"] for row in rows} <= {"small", "large"}
