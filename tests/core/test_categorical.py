"""Categorical diffusion against exact enumeration.

The yardstick is a law over all 4^3 sequences of length 3 with 4 classes (strongly correlated
neighbours), whose exact denoiser follows from ``transition`` alone by Bayes
(:mod:`diffkit.enumerated`). Samples are scored by ``KL(empirical || law)``; ``n`` exact samples
give ``(M - 1) / (2 n)`` on average with a standard deviation of ``sqrt(2 (M - 1)) / (2 n)``
(``2 n KL`` is asymptotically chi-square with ``M - 1`` degrees of freedom), so "converged" means
within five standard deviations of that floor.
"""

import itertools

import pytest
import torch

from diffkit import SAMPLERS, CategoricalDiffusion, get_sampler, register_sampler
from diffkit.categorical_process import elbo_weight, sample_times, signal
from diffkit.enumerated import EnumeratedLaw
from diffkit.samplers import sampler_names

KINDS = ("uniform", "absorbing", "marginal")
MARGINAL = [0.1, 0.2, 0.3, 0.4]
DOUBLE = torch.float64


def make(kind, schedule="cosine", **options):
    return CategoricalDiffusion(4, kind, marginal=MARGINAL if kind == "marginal" else None, schedule=schedule, **options)


def correlated_law(seed=0) -> EnumeratedLaw:
    """Neighbours tend to agree, the ends tend to differ, plus a random tilt: far from independent."""
    g = torch.Generator().manual_seed(seed)
    s = torch.tensor(list(itertools.product(range(4), repeat=3)))
    score = 1.5 * (s[:, 0] == s[:, 1]) + 1.5 * (s[:, 1] == s[:, 2]) - 1.0 * (s[:, 0] == s[:, 2])
    return EnumeratedLaw((score + 0.7 * torch.randn(64, generator=g, dtype=DOUBLE)).exp(), 4, 3)


def stationary(kind):
    return {"uniform": torch.full((4,), 0.25, dtype=DOUBLE), "marginal": torch.tensor(MARGINAL, dtype=DOUBLE),
            "absorbing": torch.tensor([0, 0, 0, 0, 1.0], dtype=DOUBLE)}[kind]


def signal_from_alpha_bar(schedule, t):
    """``a(t)`` written out from ``alpha_bar``: rescaled to run from 1 at t = 0 to 0 at t = 1."""
    ab = schedule.alpha_bar(torch.tensor([0.0, float(t), 1.0], dtype=DOUBLE))
    return float((ab[1] - ab[2]) / (ab[0] - ab[2]))


def within_floor(law, x, sigmas=5.0):
    mean, sd = law.kl_floor(len(x))
    return law.kl_from(x) <= mean + sigmas * sd


# -- the forward process ------------------------------------------------------------------------

@pytest.mark.parametrize("schedule", ["cosine", "linear", "sigmoid"])
@pytest.mark.parametrize("kind", KINDS)
def test_transitions_run_from_identity_to_the_stationary_law(kind, schedule):
    d = make(kind, schedule)
    m = stationary(kind)
    size = len(m)
    assert torch.equal(d.transition(0.0), torch.eye(size, dtype=DOUBLE))
    assert torch.allclose(d.transition(1.0), m.expand(size, size), atol=1e-15)
    for t in (0.1, 0.5, 0.9):
        a = signal_from_alpha_bar(d.schedule, t)
        expected = a * torch.eye(size, dtype=DOUBLE) + (1 - a) * m.expand(size, size)
        assert torch.allclose(d.transition(t), expected, atol=1e-12)
        assert torch.allclose(m @ d.transition(t), m, atol=1e-12)  # m is stationary
    batched = d.transition(torch.tensor([0.2, 0.7]))
    assert batched.shape == (2, size, size)
    assert torch.allclose(batched[1], d.transition(0.7))


@pytest.mark.parametrize("kind", KINDS)
def test_the_forward_process_is_markov_between_any_two_times(kind):
    d = make(kind)
    q_s, q_t = d.transition(0.3), d.transition(0.8)
    step = torch.linalg.solve(q_s, q_t)                                   # Q_s Q_{t|s} = Q_t
    assert (step > -1e-12).all() and torch.allclose(step.sum(1), torch.ones(len(step), dtype=DOUBLE))
    r = signal_from_alpha_bar(d.schedule, 0.8) / signal_from_alpha_bar(d.schedule, 0.3)
    m = stationary(kind)
    assert torch.allclose(step, r * torch.eye(len(m), dtype=DOUBLE) + (1 - r) * m.expand(len(m), len(m)), atol=1e-10)


@pytest.mark.parametrize("kind", KINDS)
def test_q_sample_draws_rows_of_the_transition_matrix(kind):
    d, n, t = make(kind), 20_000, 0.45
    x0 = torch.arange(4).repeat_interleave(n).reshape(4, n)
    x_t = d.q_sample(x0, torch.full((4,), t), generator=torch.Generator().manual_seed(0))
    expected = d.transition(t)[:4]
    observed = torch.stack([torch.bincount(row, minlength=expected.shape[1]) for row in x_t]).double() / n
    tolerance = 5 * (expected * (1 - expected) / n).sqrt() + 1e-12
    assert ((observed - expected).abs() <= tolerance).all(), (observed, expected)


def test_q_sample_is_the_inverse_cdf_of_the_given_uniforms():
    d = make("marginal")
    row = d.transition(0.6)[2]                                            # x_0 = 2
    cdf = torch.cat([torch.zeros(1, dtype=DOUBLE), row.cumsum(0)])
    for j in range(4):
        inside = torch.tensor([[cdf[j] + 0.01 * (cdf[j + 1] - cdf[j]), (cdf[j] + cdf[j + 1]) / 2]])
        x_t = d.q_sample(torch.full((1, 2), 2), torch.tensor([0.6]), noise=inside)
        assert x_t.tolist() == [[j, j]]


# -- the posterior ------------------------------------------------------------------------------

def bayes_posterior(d, i, k, t, s):
    """q(x_s = . | x_t = k, x_0 = i) from matrices alone: Q_s[i, j] Q_{t|s}[j, k] / Q_t[i, k]."""
    q_s, q_t = d.transition(s), d.transition(t)
    step = torch.linalg.solve(q_s, q_t) if s > 0 else q_t
    return q_s[i] * step[:, k] / q_t[i, k]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("t, s", [(0.7, 0.3), (1.0, 0.5), (0.4, 0.0), (0.05, 0.01)])
def test_posterior_matches_bayes_on_every_triple(kind, t, s):
    d = make(kind)
    process = d.transitions
    at_t, at_s = signal(d.schedule, t), signal(d.schedule, s)
    size = d.num_states()
    for i in range(4):
        for k in range(size):
            if d.transition(t)[i, k] == 0:
                continue
            got = process.posterior(torch.eye(4, dtype=DOUBLE)[i], torch.tensor(k), at_t, at_s)
            assert torch.allclose(got, bayes_posterior(d, i, k, t, s), atol=1e-9), (i, k)


@pytest.mark.parametrize("kind", KINDS)
def test_reverse_kernels_average_the_posterior_over_consistent_x0_and_keep_the_forward_marginals(kind):
    d = make(kind)
    process, t, s = d.transitions, 0.6, 0.25
    at_t, at_s = signal(d.schedule, t), signal(d.schedule, s)
    p = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=DOUBLE)
    q_t = d.transition(t)
    for k in range(d.num_states()):
        consistent = p * (q_t[:4, k] > 0)
        expected = sum(consistent[i] / consistent.sum() * bayes_posterior(d, i, k, t, s) for i in range(4) if consistent[i] > 0)
        assert torch.allclose(process.posterior(p, torch.tensor(k), at_t, at_s), expected, atol=1e-9)
    # Both kernels carry q(x_t | x_0) to q(x_s | x_0) for every x_0.
    for kernel in (process.posterior, process.jump):
        for i in range(4):
            one_hot = torch.eye(4, dtype=DOUBLE)[i]
            moved = sum(q_t[i, k] * kernel(one_hot, torch.tensor(k), at_t, at_s) for k in range(d.num_states()) if q_t[i, k] > 0)
            assert torch.allclose(moved, d.transition(s)[i], atol=1e-9), (kernel.__name__, i)


@pytest.mark.parametrize("kind", KINDS)
def test_target_guidance_multiplies_each_move_to_x0_by_its_closed_form_gain(kind):
    d = make(kind)
    process, t, s, weight = d.transitions, 0.6, 0.45, 0.3
    at_t, at_s = signal(d.schedule, t), signal(d.schedule, s)
    m = torch.as_tensor(stationary(kind), dtype=DOUBLE)
    p = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=DOUBLE)
    for k in range(d.num_states()):
        x_t = torch.tensor(k)
        plain, guided = process.jump(p, x_t, at_t, at_s), process.jump(p, x_t, at_t, at_s, weight)
        assert torch.allclose(guided.sum(), torch.tensor(1.0, dtype=DOUBLE)) and (guided >= 0).all()
        # Z: the states x_0 = i can have become, i.e. those m reaches and i itself.
        z = (m > 0).sum() + (m[:4] == 0).to(DOUBLE)
        for i in range(4):
            if i != k and plain[i] > 0:
                assert torch.isclose(guided[i], plain[i] * (1 + weight / (z[i] * m[k])), atol=1e-12), (k, i)
    # A strong guidance moves an entry whose x_0 is elsewhere (under absorbing noise: a masked one) at once.
    strong = process.jump(torch.eye(4, dtype=DOUBLE)[0], torch.tensor(d.num_states() - 1), at_t, at_s, 1e6)
    assert torch.allclose(strong, torch.eye(d.num_states(), dtype=DOUBLE)[0])


# -- the loss -----------------------------------------------------------------------------------

def every_pair(d, law, t):
    """All (x_0, x_t) pairs with their probability p(x_0) q(x_t | x_0) and uniforms that make
    ``q_sample`` produce exactly that x_t: an exact expectation through the loss itself."""
    q = d.transition(t)
    size = q.shape[0]
    noisy = torch.tensor(list(itertools.product(range(size), repeat=3)))
    x0 = law.states.repeat_interleave(len(noisy), 0)
    x_t = noisy.repeat(len(law.states), 1)
    weight = law.probs.repeat_interleave(len(noisy)) * q[x0, x_t].prod(-1)
    cdf = torch.cat([torch.zeros(size, 1, dtype=DOUBLE), q.cumsum(1)], dim=1)
    u = (cdf[x0, x_t] + cdf[x0, x_t + 1]) / 2
    keep = weight > 0
    return x0[keep], u[keep], x_t[keep], weight[keep]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("t", [0.3, 0.75])
def test_the_loss_is_least_for_the_true_posterior_and_equals_the_conditional_entropy(kind, t):
    d, law = make(kind), correlated_law()
    x0, u, x_t, weight = every_pair(d, law, t)
    times = torch.full((len(x0),), t, dtype=DOUBLE)
    assert torch.equal(d.q_sample(x0, times, noise=u), x_t)
    exact = law.denoiser(d)

    def expected_loss(model):
        return float((weight * d.loss(model, x0, t=times, noise=u, reduction="none")).sum())

    entropy = law.conditional_entropy(d.transition(t))
    if kind == "absorbing":  # ELBO weight -a'(t) / (1 - a(t)), here by central differences
        h = 1e-5
        slope = (signal_from_alpha_bar(d.schedule, t + h) - signal_from_alpha_bar(d.schedule, t - h)) / (2 * h)
        entropy *= -slope / (1 - signal_from_alpha_bar(d.schedule, t))
    assert expected_loss(exact) == pytest.approx(entropy, rel=1e-6)
    g, size = torch.Generator().manual_seed(1), d.num_states()
    for scale in (0.05, 0.5):
        # A perturbation that depends on x_t alone, as any model's output does.
        table = scale * torch.randn(size**3, 3, 4, generator=g, dtype=DOUBLE)
        perturbed = lambda x, t_, cond=None: exact(x, t_) + table[(x * size ** torch.arange(3)).sum(-1)]  # noqa: E731
        assert expected_loss(perturbed) > expected_loss(exact)


def random_logits(x, t, cond=None):
    g = torch.Generator().manual_seed(int(x.sum()) + 7)
    return torch.randn(*x.shape, 4, generator=g, dtype=DOUBLE)


def test_the_bound_term_equals_the_elbo_weighted_cross_entropy_for_masks():
    law, g = correlated_law(), torch.Generator().manual_seed(2)
    x0 = law.sample(256, g)
    t, u = torch.rand(256, generator=g, dtype=DOUBLE) * 0.98 + 0.02, torch.rand(256, 3, generator=g, dtype=DOUBLE)
    # Discrete time: the bound's term T KL(q(x_s | x_t, x_0) || p(x_s | x_t)) is the ELBO weight exactly.
    discrete = {"name": "cosine", "num_steps": 50}
    t_grid = (t * 50).ceil() / 50
    with_bound = make("absorbing", discrete, weighting="uniform", vb_weight=1.0)
    plain = make("absorbing", discrete, weighting="uniform")
    bound = (with_bound.loss(random_logits, x0, t=t_grid, noise=u, reduction="none")
             - plain.loss(random_logits, x0, t=t_grid, noise=u, reduction="none"))
    elbo = make("absorbing", discrete).loss(random_logits, x0, t=t_grid, noise=u, reduction="none")
    assert torch.allclose(bound, elbo, atol=1e-9)
    # Continuous time: the same as the steps shrink (the gap falls as 1 / T: 1e-2 at T = 1e4).
    fine = make("absorbing", weighting="uniform", vb_weight=1.0, vb_steps=1_000_000)
    bound = (fine.loss(random_logits, x0, t=t, noise=u, reduction="none")
             - make("absorbing", weighting="uniform").loss(random_logits, x0, t=t, noise=u, reduction="none"))
    elbo = make("absorbing").loss(random_logits, x0, t=t, noise=u, reduction="none")
    assert torch.allclose(bound, elbo, rtol=1e-3, atol=1e-6)


def test_a_model_that_knows_x0_has_no_loss_and_a_positive_bound_otherwise():
    law, g = correlated_law(), torch.Generator().manual_seed(3)
    x0 = law.sample(128, g)
    d = make("uniform", vb_weight=1.0)
    oracle = lambda x, t, cond=None: 60.0 * torch.nn.functional.one_hot(x0, 4).double()  # noqa: E731
    assert float(d.loss(oracle, x0, generator=g)) < 1e-20
    assert float(make("uniform", weighting="uniform").loss(random_logits, x0, generator=g)) > 0.1
    bound = d.loss(random_logits, x0, generator=g, reduction="none") - make("uniform").loss(
        random_logits, x0, generator=torch.Generator().manual_seed(3), reduction="none")
    assert bound.shape == (128,)


def test_elbo_weight_of_a_discrete_schedule_is_the_difference_quotient():
    d = make("absorbing", {"name": "linear", "num_steps": 100})
    t = torch.tensor([0.01, 0.5, 1.0], dtype=DOUBLE)
    a = torch.tensor([[signal_from_alpha_bar(d.schedule, float(x) - 0.01), signal_from_alpha_bar(d.schedule, float(x))]
                      for x in t], dtype=DOUBLE)
    assert torch.allclose(elbo_weight(d.schedule, t), 100 * (a[:, 0] - a[:, 1]) / (1 - a[:, 1]), rtol=1e-9)


# -- samplers -----------------------------------------------------------------------------------

@pytest.mark.parametrize("sampler", sampler_names("categorical"))
@pytest.mark.parametrize("kind", KINDS)
def test_samplers_converge_to_the_enumerated_law(kind, sampler):
    d, law, n = make(kind), correlated_law(), 4000
    model = law.denoiser(d)
    kl = {}
    for steps in (2, 32):
        x = d.sample(model, (n, 3), sampler=sampler, steps=steps, generator=torch.Generator().manual_seed(4))
        assert x.dtype == torch.long and x.min() >= 0 and x.max() < 4
        kl[steps] = law.kl_from(x)
    mean, sd = law.kl_floor(n)
    assert kl[2] > mean + 50 * sd                      # two steps: entries drawn nearly independently
    assert kl[32] <= mean + 5 * sd, (kl, mean, sd)


def test_callback_reports_every_step_and_the_signal_spacing_is_uniform_in_a():
    d, law = make("absorbing"), correlated_law()
    seen = []
    d.sample(law.denoiser(d), (16, 3), steps=5, spacing="signal", callback=seen.append)
    assert [info["step"] for info in seen] == list(range(5))
    assert seen[0]["t"] == 1.0 and seen[0]["x0"].shape == (16, 3, 4)
    times = sample_times(d.schedule, 5, "signal")
    a, _ = signal(d.schedule, times.double())
    assert torch.allclose(a, torch.linspace(0, 1, 6, dtype=DOUBLE), atol=1e-5)
    assert torch.allclose(torch.tensor([info["t"] for info in seen]), times[:-1])
    # "auto": signal spacing when every leaf is absorbing, uniform otherwise
    for kind, spacing in (("absorbing", "signal"), ("uniform", "uniform")):
        seen = []
        make(kind).sample(law.denoiser(make(kind)), (4, 3), steps=5, callback=seen.append)
        assert torch.allclose(torch.tensor([info["t"] for info in seen]), sample_times(d.schedule, 5, spacing)[:-1])


def test_discrete_flow_with_eta_one_is_ancestral_sampling():
    d, law = make("uniform"), correlated_law()
    model = law.denoiser(d)
    a = d.sample(model, (500, 3), sampler="ancestral", steps=6, generator=torch.Generator().manual_seed(5))
    b = d.sample(model, (500, 3), sampler="discrete_flow", eta=1.0, steps=6, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="eta"):
        d.sample(model, (2, 3), sampler="discrete_flow", eta=2.0)


def test_the_registry_keeps_gaussian_and_categorical_samplers_apart():
    assert set(sampler_names("categorical")) >= {"ancestral", "discrete_flow"}
    assert not set(sampler_names("categorical")) & set(sampler_names("gaussian"))
    assert SAMPLERS["ancestral"].kind == "categorical" and SAMPLERS["ddpm"].kind == "gaussian"
    with pytest.raises(ValueError, match="'ancestral' is a categorical sampler") as error:
        get_sampler("ancestral")
    assert "ddpm" in str(error.value) and "discrete_flow" not in str(error.value)
    with pytest.raises(ValueError, match="'ddpm' is a gaussian sampler.*valid: ancestral, discrete_flow"):
        make("uniform").sample(lambda x, t, cond=None: None, (2, 3), sampler="ddpm")
    assert get_sampler("ancestral", kind="categorical") is SAMPLERS["ancestral"]
    with pytest.raises(ValueError, match="already registered \\(a categorical one\\)"):
        register_sampler("ancestral", lambda *a, **k: None)
    with pytest.raises(ValueError, match="unknown sampler kind"):
        register_sampler("something", lambda *a, **k: None, kind="continuous")


# -- guidance, inpainting, editing --------------------------------------------------------------

def conditional_laws():
    first, second = correlated_law(0), correlated_law(1)
    mixture = EnumeratedLaw(0.5 * first.probs + 0.5 * second.probs, 4, 3)
    return mixture, [first, second]


def test_guidance_combines_log_probabilities_and_w1_is_the_conditional_model():
    d = make("uniform")
    mixture, laws = conditional_laws()
    model = mixture.denoiser(d, laws)
    g = torch.Generator().manual_seed(6)
    x, cond, null = torch.randint(0, 4, (64, 3), generator=g), torch.randint(0, 2, (64,), generator=g), torch.full((64,), -1)

    def nullable(x, t, cond=None):
        return model(x, t, None if cond is None or (cond < 0).all() else cond)

    t = torch.full((64,), 0.6)
    p_cond, p_uncond = model(x, t, cond).exp(), model(x, t).exp()
    for w in (0.0, 3.0):
        guided = d.denoiser(nullable, x, cond=cond, uncond=None, guidance=w)(x, 0.6)
        written_out = p_uncond ** (1 - w) * p_cond**w
        assert torch.allclose(guided.double(), written_out / written_out.sum(-1, keepdim=True), atol=1e-5)
    n = 4000
    labels = torch.zeros(n, dtype=torch.long)
    conditional = d.sample(model, (n, 3), cond=labels, steps=32, generator=torch.Generator().manual_seed(7))
    guided = d.sample(model, (n, 3), cond=labels, guidance=1.0, uncond=None, steps=32,
                      generator=torch.Generator().manual_seed(7))
    assert torch.equal(conditional, guided)
    assert within_floor(laws[0], guided)
    assert not within_floor(mixture, guided)


@pytest.mark.parametrize("resample", [1, 3])
def test_inpainting_under_absorbing_noise_draws_the_exact_conditional_law(resample):
    d, law, n = make("absorbing"), correlated_law(), 4000
    known = torch.tensor([2, 0, 1]).expand(n, 3)
    keep = torch.tensor([True, False, False]).expand(n, 3)
    x = d.inpaint(law.denoiser(d), known, keep, steps=32, resample=resample,
                  generator=torch.Generator().manual_seed(8))
    assert (x[:, 0] == 2).all()
    target = law.condition(torch.tensor([True, False, False]), torch.tensor([2, 0, 0]))
    assert within_floor(target, x)


@pytest.mark.parametrize("kind", ["uniform", "marginal"])
def test_inpainting_keeps_the_known_tokens_and_moves_towards_the_conditional_law(kind):
    d, law, n = make(kind), correlated_law(), 4000
    known = torch.tensor([0, 0, 3]).expand(n, 3)
    keep = torch.tensor([False, False, True]).expand(n, 3)
    x = d.inpaint(law.denoiser(d), known, keep, steps=32, generator=torch.Generator().manual_seed(9))
    assert (x[:, 2] == 3).all()
    target = law.condition(keep[0], known[0])
    unconditional_rest = law.sample(n, torch.Generator().manual_seed(10))
    unconditional_rest[:, 2] = 3
    assert target.kl_from(x) < target.kl_from(unconditional_rest)
    # RePaint's rounds let the generated entries agree with the kept one: closer still.
    resampled = d.inpaint(law.denoiser(d), known, keep, steps=32, resample=4, generator=torch.Generator().manual_seed(9))
    assert (resampled[:, 2] == 3).all()
    assert target.kl_from(resampled) < 0.5 * target.kl_from(x)


def test_editing_exact_samples_keeps_the_law_and_small_strengths_keep_the_input():
    d, law, n = make("absorbing"), correlated_law(), 4000
    x0 = law.sample(n, torch.Generator().manual_seed(11))
    model = law.denoiser(d)
    edited = d.edit(model, x0, 0.5, steps=32, generator=torch.Generator().manual_seed(12))
    assert within_floor(law, edited)          # noising data and denoising exactly gives data again
    light = d.edit(model, x0, 0.05, steps=32, generator=torch.Generator().manual_seed(13))
    assert (light != x0).double().mean() < 0.01
    with pytest.raises(ValueError, match="strength"):
        d.edit(model, x0, 0.0)


# -- dict states, padding, symmetric noise ------------------------------------------------------

NODES = 4


def graph_batch(n, seed):
    """Nodes with 3 classes, symmetric edges with 2 classes, padding past each graph's size."""
    g = torch.Generator().manual_seed(seed)
    sizes = torch.randint(2, NODES + 1, (n,), generator=g)
    node_mask = torch.arange(NODES)[None] < sizes[:, None]
    pair = node_mask[:, :, None] & node_mask[:, None, :] & ~torch.eye(NODES, dtype=torch.bool)
    nodes = torch.randint(0, 3, (n, NODES), generator=g) * node_mask
    upper = torch.randint(0, 2, (n, NODES, NODES), generator=g).triu(1)
    edges = (upper + upper.transpose(1, 2)) * pair
    return {"nodes": nodes, "edges": edges}, {"nodes": node_mask, "edges": pair}


def symmetric_uniforms(like, generator=None, **_):
    nodes = torch.rand(like["nodes"].shape, generator=generator, dtype=DOUBLE)
    upper = torch.rand(like["edges"].shape, generator=generator, dtype=DOUBLE).triu(1)
    return {"nodes": nodes, "edges": upper + upper.transpose(1, 2)}


def graph_diffusion(**options):
    return CategoricalDiffusion({"nodes": 3, "edges": 2}, {"nodes": "marginal", "edges": "uniform"},
                                {"nodes": [0.5, 0.3, 0.2], "edges": None}, noise_fn=symmetric_uniforms, **options)


class SymmetricModel(torch.nn.Module):
    """Logits that depend on the noisy state symmetrically (edge (i, j) sees both directions)."""

    def forward(self, x, t, cond=None):
        nodes = torch.nn.functional.one_hot(x["nodes"], 3).double() + t.double()[:, None, None]
        both = x["edges"] + x["edges"].transpose(1, 2)
        edges = torch.stack([both.double(), 1.0 - both.double() * t.double()[:, None, None]], dim=-1)
        return {"nodes": nodes, "edges": edges}


def test_dict_states_keep_symmetry_and_padding_in_q_sample_and_sampling():
    d = graph_diffusion()
    x0, mask = graph_batch(64, 14)
    x_t = d.q_sample(x0, torch.full((64,), 0.7), generator=torch.Generator().manual_seed(15), mask=mask)
    assert torch.equal(x_t["edges"], x_t["edges"].transpose(1, 2))
    for key in x0:
        assert torch.equal(x_t[key][~mask[key]], x0[key][~mask[key]])
    assert (x_t["edges"] != x0["edges"])[mask["edges"]].any()
    for sampler in sampler_names("categorical"):
        x = d.sample(SymmetricModel(), x0, mask=mask, sampler=sampler, steps=8, generator=torch.Generator().manual_seed(16))
        assert torch.equal(x["edges"], x["edges"].transpose(1, 2))
        for key in x0:
            assert torch.equal(x[key][~mask[key]], x0[key][~mask[key]])
        assert x["nodes"].max() < 3 and x["edges"].max() < 2


def test_dict_loss_is_the_masked_cross_entropy_summed_with_leaf_weights():
    d = graph_diffusion()
    x0, mask = graph_batch(32, 17)
    g = torch.Generator().manual_seed(18)
    logits = {"nodes": torch.randn(32, NODES, 3, generator=g, dtype=DOUBLE),
              "edges": torch.randn(32, NODES, NODES, 2, generator=g, dtype=DOUBLE)}
    fixed = lambda x, t, cond=None: logits  # noqa: E731
    got = d.loss(fixed, x0, mask=mask, leaf_weights={"edges": 5.0}, reduction="none", generator=g)
    expected = 0.0
    for key, weight in (("nodes", 1.0), ("edges", 5.0)):
        ce = -torch.log_softmax(logits[key], -1).gather(-1, x0[key][..., None])[..., 0]
        m = mask[key].double()
        expected = expected + weight * (ce * m).flatten(1).sum(1) / m.flatten(1).sum(1)
    assert torch.allclose(got, expected, atol=1e-12)
    changed = {key: torch.where(mask[key], x0[key], torch.ones_like(x0[key])) for key in x0}
    again = d.loss(fixed, changed, mask=mask, leaf_weights={"edges": 5.0}, reduction="none",
                   generator=torch.Generator().manual_seed(18))
    assert torch.allclose(again, expected, atol=1e-12)   # padding values count for nothing


# -- errors -------------------------------------------------------------------------------------

def test_bad_input_is_named():
    with pytest.raises(ValueError, match="unknown categorical transition 'gaussian'"):
        CategoricalDiffusion(4, "gaussian")
    with pytest.raises(ValueError, match="needs marginal="):
        CategoricalDiffusion(4, "marginal")
    with pytest.raises(ValueError, match="only used with transition='marginal'"):
        CategoricalDiffusion(4, "uniform", marginal=MARGINAL)
    with pytest.raises(ValueError, match="state key 'edges'.*marginal must be 2"):
        CategoricalDiffusion({"nodes": 3, "edges": 2}, "marginal", {"nodes": [1, 1, 1], "edges": [1, 1, 1]})
    with pytest.raises(ValueError, match="weighting='elbo' needs absorbing transitions"):
        CategoricalDiffusion(4, "uniform", weighting="elbo")
    d = make("uniform")
    with pytest.raises(ValueError, match=r"class indices must lie in \[0, 4\)"):
        d.q_sample(torch.tensor([[0, 4]]), torch.tensor([0.5]))
    with pytest.raises(TypeError, match="integer tensor"):
        d.q_sample(torch.zeros(1, 2), torch.tensor([0.5]))
    with pytest.raises(ValueError, match=r"logits of shape \(2, 3, 5\); expected \(2, 3, 4\)"):
        d.sample(lambda x, t, cond=None: torch.zeros(*x.shape, 5), (2, 3), steps=2)
    with pytest.raises(ValueError, match="pass key="):
        graph_diffusion().transition(0.5)
    assert graph_diffusion().transition(0.5, key="nodes").shape == (3, 3)


def test_sampling_and_inpainting_call_the_model_without_autograd():
    d, law = make("uniform"), correlated_law()
    exact, grad_enabled = law.denoiser(d), []

    def model(x, t, cond=None):
        grad_enabled.append(torch.is_grad_enabled())
        return exact(x, t, cond=cond)

    x = d.sample(model, (8, 3), steps=3, generator=torch.Generator().manual_seed(0))
    keep = torch.zeros(8, 3, dtype=torch.long)
    keep[:, 0] = 1
    d.inpaint(model, x, keep, steps=3, generator=torch.Generator().manual_seed(1))
    d.edit(model, x, 0.5, steps=4, generator=torch.Generator().manual_seed(2))
    assert len(grad_enabled) >= 6 and not any(grad_enabled)
    assert torch.is_grad_enabled()
