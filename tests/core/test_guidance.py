"""Guidance and editing: classifier-free guidance, inpainting, SDEdit, interpolation."""

import functools
import math

import pytest
import torch

from diffkit import Diffusion, drop_condition, slerp
from diffkit.denoiser import Denoiser
from diffkit.gmm import GaussianMixture


class LabelModel(torch.nn.Module):
    """Output depends on x, t and a class label; label 0 (or ``cond=None``) is the null label."""

    def __init__(self):
        super().__init__()
        self.table = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
        self.batch_sizes = []

    def forward(self, x, t, cond=None):
        self.batch_sizes.append(x.shape[0])
        labels = torch.zeros(x.shape[0], dtype=torch.long) if cond is None else cond
        return torch.tanh(x) * t[:, None] + self.table[labels]


def _denoiser(model, **kwargs):
    return Denoiser(model, Diffusion().schedule, "eps", **kwargs)


def test_guidance_one_is_the_conditional_model():
    model, x = LabelModel(), torch.randn(5, 3)
    labels = torch.tensor([1, 2, 3, 1, 2])
    guided = _denoiser(model, cond=labels, guidance=1.0, uncond=torch.zeros(5, dtype=torch.long))
    plain = _denoiser(model, cond=labels)
    for a, b in zip(guided(x, 0.4), plain(x, 0.4)):
        assert torch.equal(a, b)
    assert model.batch_sizes == [5, 5]  # no unconditional call was made


@pytest.mark.parametrize("w", [0.0, 2.5, 7.0])
def test_batched_guidance_equals_two_calls_and_the_formula(w):
    model, x = LabelModel(), torch.randn(6, 3)
    labels, t = torch.tensor([1, 2, 3, 3, 2, 1]), torch.full((6,), 0.3)
    batched = _denoiser(model, cond=labels, guidance=w, uncond=torch.zeros(6, dtype=torch.long))
    two_calls = _denoiser(model, cond=labels, guidance=w)
    out_batched = batched.model_output(x, t)
    assert model.batch_sizes == [12]  # conditional and unconditional halves in one call
    out_two = two_calls.model_output(x, t)
    assert model.batch_sizes[1:] == [6, 6]
    expected = model(x, t, None) + w * (model(x, t, labels) - model(x, t, None))
    assert torch.allclose(out_batched, expected, atol=1e-6)
    assert torch.allclose(out_two, expected, atol=1e-6)


def test_guided_sampling_batched_equals_two_calls():
    diffusion, model = Diffusion(), LabelModel()
    labels = torch.tensor([1, 2, 3])
    x_T = torch.randn(3, 3, generator=torch.Generator().manual_seed(1))
    common = dict(sampler="dpmpp_2m", steps=6, x_T=x_T, cond=labels, guidance=3.0)
    batched = diffusion.sample(model, x_T, uncond=torch.zeros(3, dtype=torch.long), **common)
    two_calls = diffusion.sample(model, x_T, **common)
    assert torch.allclose(batched, two_calls, atol=1e-5)


def test_drop_condition():
    cond = {"label": torch.arange(1, 1001), "vec": torch.ones(1000, 2)}
    uncond = {"label": torch.zeros(1), "vec": torch.zeros(1, 2)}
    assert drop_condition(cond, uncond, 0.0) is cond
    assert drop_condition(None, uncond, 0.5) is None
    dropped = drop_condition(cond, uncond, 1.0)
    assert (dropped["label"] == 0).all() and (dropped["vec"] == 0).all()
    some = drop_condition(cond, uncond, 0.3, generator=torch.Generator().manual_seed(2))
    gone = some["label"] == 0
    assert abs(float(gone.float().mean()) - 0.3) < 0.05
    assert torch.equal(gone, (some["vec"] == 0).all(dim=1))  # the leaves are dropped together
    assert torch.equal(some["label"][~gone], cond["label"][~gone])


# -- inpainting with a correlated Gaussian, whose conditionals are known ------------------------

MEAN = torch.tensor([0.5, -0.3], dtype=torch.float64)
STD1, STD2, RHO = 1.0, 0.8, 0.8
KNOWN_VALUE = 1.2
COND_MEAN = float(MEAN[1]) + RHO * STD2 / STD1 * (KNOWN_VALUE - float(MEAN[0]))  # 0.148
COND_STD = STD2 * math.sqrt(1 - RHO**2)                                           # 0.48


@functools.lru_cache(maxsize=None)
def _inpaint(resample, n=2000, steps=50, seed=3):
    cov = torch.tensor([[STD1**2, RHO * STD1 * STD2], [RHO * STD1 * STD2, STD2**2]], dtype=torch.float64)
    diffusion = Diffusion("cosine", "eps")
    model = GaussianMixture(torch.ones(1), MEAN[None], cov[None]).denoiser(diffusion.schedule)
    known = torch.zeros(n, 2)
    known[:, 0] = KNOWN_VALUE
    mask = torch.zeros(n, 2)
    mask[:, 0] = 1
    out = diffusion.inpaint(model, known, mask, sampler="ddpm", steps=steps, resample=resample,
                            generator=torch.Generator().manual_seed(seed))
    assert torch.equal(out[:, 0], known[:, 0])  # the known part is kept exactly
    return out[:, 1].double()


def test_inpainting_with_resampling_reproduces_the_analytic_conditional():
    generated = _inpaint(resample=10)
    assert abs(float(generated.mean()) - COND_MEAN) < 0.04
    assert abs(float(generated.std()) / COND_STD - 1) < 0.05


def test_inpainting_by_replacement_alone_is_biased():
    """Replacement alone (resample=1) lets the generated part drift from the known one: here
    it misses the conditional mean by several times what resampling leaves."""
    replaced = _inpaint(resample=1)
    resampled = _inpaint(resample=10)
    error_replaced = abs(float(replaced.mean()) - COND_MEAN)
    error_resampled = abs(float(resampled.mean()) - COND_MEAN)
    assert error_replaced > 0.1
    assert error_replaced > 3 * error_resampled


def test_inpainting_dict_states_with_one_mask_tensor():
    diffusion = Diffusion()
    model = lambda x, t, cond=None: {k: torch.zeros_like(v) for k, v in x.items()}  # noqa: E731
    known = {"a": torch.ones(2, 3, 4), "b": torch.ones(2, 3, 4)}
    mask = torch.zeros(2, 1, 4)
    mask[..., :2] = 1
    out = diffusion.inpaint(model, known, mask, steps=5, generator=torch.Generator().manual_seed(0))
    for leaf in out.values():
        assert torch.equal(leaf[..., :2], torch.ones(2, 3, 2))
        assert not torch.allclose(leaf[..., 2:], torch.ones(2, 3, 2))


def test_resample_must_be_positive():
    with pytest.raises(ValueError, match="resample"):
        Diffusion().inpaint(lambda x, t, cond=None: x, torch.zeros(1, 2), torch.ones(1, 2), resample=0)


# -- SDEdit --------------------------------------------------------------------------------

def _ring():
    angles = torch.arange(4, dtype=torch.float64) * math.pi / 2
    return GaussianMixture(torch.ones(4), torch.stack([angles.cos(), angles.sin()], 1), stds=torch.full((4,), 0.05))


def test_sdedit_at_small_strength_returns_about_the_input():
    diffusion, mixture = Diffusion(), _ring()
    model = mixture.denoiser(diffusion.schedule)
    x0 = mixture.sample(500, torch.Generator().manual_seed(4)).float()
    changes = []
    for strength in (0.2, 0.05, 0.01):
        out = diffusion.edit(model, x0, strength, generator=torch.Generator().manual_seed(5))
        changes.append(float((out - x0).norm(dim=1).mean()))
    assert changes[0] > changes[1] > changes[2]
    assert changes[2] < 0.02


def test_sdedit_at_full_strength_forgets_the_input():
    diffusion, mixture = Diffusion(), _ring()
    model = mixture.denoiser(diffusion.schedule)
    start = torch.full((2000, 2), 3.0)  # far from every component
    out = diffusion.edit(model, start, 1.0, steps=30, generator=torch.Generator().manual_seed(6)).double()
    nearest = torch.cdist(out, mixture.means).argmin(1)
    counts = torch.bincount(nearest, minlength=4).double() / len(out)
    assert torch.allclose(counts, torch.full((4,), 0.25, dtype=torch.float64), atol=0.04)


# -- slerp -----------------------------------------------------------------------------------

def test_slerp_endpoints_and_norm():
    g = torch.Generator().manual_seed(7)
    z0 = {"a": torch.randn(3, 500, generator=g, dtype=torch.float64), "b": torch.randn(3, 2, 50, generator=g, dtype=torch.float64)}
    z1 = {"a": torch.randn(3, 500, generator=g, dtype=torch.float64), "b": torch.randn(3, 2, 50, generator=g, dtype=torch.float64)}
    for key in z0:
        assert torch.allclose(slerp(z0, z1, 0.0)[key], z0[key], atol=1e-12)
        assert torch.allclose(slerp(z0, z1, 1.0)[key], z1[key], atol=1e-12)

    def norm(z):
        return torch.sqrt(sum(leaf.reshape(3, -1).pow(2).sum(1) for leaf in z.values()))

    # equal norms: every point on the arc keeps that norm (linear interpolation would not)
    scale = norm(z0) / norm(z1)
    z1 = {k: v * scale.view(-1, *[1] * (v.ndim - 1)) for k, v in z1.items()}
    for w in (0.25, 0.5, 0.9):
        assert torch.allclose(norm(slerp(z0, z1, w)), norm(z0), rtol=1e-10)
    lerp_norm = norm({k: 0.5 * z0[k] + 0.5 * z1[k] for k in z0})
    assert (lerp_norm < 0.8 * norm(z0)).all()


def test_slerp_of_parallel_noises_is_linear():
    z = torch.randn(2, 10, dtype=torch.float64)
    assert torch.allclose(slerp(z, 2 * z, 0.5), 1.5 * z)
