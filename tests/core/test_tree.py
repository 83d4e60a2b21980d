"""States are a Tensor or a dict of Tensors; every core operation maps over their leaves."""

import pytest
import torch

from diffkit.tree import (append_dims, batch_size, combine, concat, gaussian_like, leaves, scale, split,
                          to_device, tree_map)


def test_append_dims_broadcasts_per_sample_coefficients():
    coef = torch.tensor([1.0, 2.0, 3.0])
    x = torch.ones(3, 2, 4, 5)
    out = append_dims(coef, x.ndim) * x
    assert append_dims(coef, 4).shape == (3, 1, 1, 1)
    for i in range(3):
        assert torch.equal(out[i], torch.full((2, 4, 5), coef[i].item()))


def test_append_dims_refuses_to_drop_dimensions():
    with pytest.raises(ValueError, match="target_ndim"):
        append_dims(torch.ones(2, 3), 1)


def test_tree_map_over_dicts_and_nested_dicts():
    state = {"a": torch.ones(2, 3), "b": {"c": torch.zeros(2)}}
    other = {"a": torch.full((2, 3), 2.0), "b": {"c": torch.ones(2)}}
    out = tree_map(torch.add, state, other)
    assert torch.equal(out["a"], torch.full((2, 3), 3.0))
    assert torch.equal(out["b"]["c"], torch.ones(2))
    assert [leaf.shape for leaf in leaves(out)] == [(2, 3), (2,)]


def test_tree_map_refuses_mismatched_structures():
    with pytest.raises(ValueError, match="structure"):
        tree_map(torch.add, {"a": torch.ones(1)}, {"b": torch.ones(1)})
    with pytest.raises(TypeError, match="Tensor or a dict"):
        tree_map(torch.neg, [torch.ones(1)])


def test_combine_is_the_per_sample_linear_combination():
    x = {"a": torch.randn(4, 3), "b": torch.randn(4, 2, 2)}
    y = {"a": torch.randn(4, 3), "b": torch.randn(4, 2, 2)}
    c = torch.tensor([0.5, -1.0, 2.0, 0.0])
    out = combine((c, x), (3.0, y))
    for key in x:
        expected = torch.stack([c[i] * x[key][i] + 3.0 * y[key][i] for i in range(4)])
        assert torch.allclose(out[key], expected)


def test_combine_broadcasts_and_leaves_its_inputs_alone():
    a, b = torch.ones(2, 1, 3), torch.full((2, 4, 3), 2.0)
    out = combine((1.0, a), (torch.tensor([1.0, -1.0]), b), (0.5, a))
    assert out.shape == (2, 4, 3)
    assert torch.equal(out[0], torch.full((4, 3), 3.5)) and torch.equal(out[1], torch.full((4, 3), -0.5))
    assert torch.equal(a, torch.ones(2, 1, 3)) and torch.equal(b, torch.full((2, 4, 3), 2.0))
    x = torch.randn(3, 2, requires_grad=True)
    combine((2.0, x), (torch.tensor([1.0, 2.0, 3.0]), x)).sum().backward()
    assert torch.allclose(x.grad, torch.tensor([3.0, 4.0, 5.0])[:, None].expand(3, 2))


def test_scale_keeps_the_leaf_dtype():
    x = torch.ones(2, 3, dtype=torch.float32)
    assert scale(torch.tensor([1.0, 2.0], dtype=torch.float64), x).dtype == torch.float32


def test_gaussian_like_copies_structure_and_is_standard_normal():
    like = {"x": torch.zeros(2000, 50, dtype=torch.float64), "y": torch.zeros(2000, 3, 2)}
    noise = gaussian_like(like, torch.Generator().manual_seed(0))
    assert noise["x"].dtype == torch.float64 and noise["y"].shape == (2000, 3, 2)
    values = noise["x"].flatten()
    assert abs(values.mean()) < 0.01 and abs(values.std() - 1) < 0.01
    again = gaussian_like(like, torch.Generator().manual_seed(0))
    assert torch.equal(again["y"], noise["y"])


def test_concat_and_split_are_inverse():
    a = {"x": torch.randn(3, 2), "m": torch.randn(3, 4, 4)}
    b = {"x": torch.randn(5, 2), "m": torch.randn(5, 4, 4)}
    joined = concat([a, b])
    assert batch_size(joined) == 8
    first, rest = split(joined, 3)
    assert torch.equal(first["m"], a["m"]) and torch.equal(rest["x"], b["x"])


def test_to_device_passes_non_tensors_through():
    moved = to_device({"x": torch.ones(1), "name": "abc", "nested": {"y": torch.zeros(2)}}, "cpu")
    assert moved["name"] == "abc" and moved["nested"]["y"].device.type == "cpu"


def test_sample_generators_draw_each_samples_noise_from_its_own_stream():
    from diffkit.tree import SampleGenerators, draw_noise, draw_per_sample, sample_seed

    like = {"a": torch.zeros(3, 2, 4), "b": torch.zeros(3, 5)}
    seen_extra = []

    def noise(state, generator, *, mask, scale):  # a domain noise function with batched extras
        seen_extra.append((mask.shape, scale))
        return gaussian_like(state, generator)

    generators = SampleGenerators.seeded(11, range(4, 7))
    drawn = draw_noise(noise, like, generators, mask=torch.ones(3, 2), scale=0.5)
    for i in range(3):  # sample i is what its own generator draws for a batch of one
        own = torch.Generator().manual_seed(sample_seed(11, 4 + i))
        expected = gaussian_like({"a": like["a"][:1], "b": like["b"][:1]}, own)
        assert torch.equal(drawn["a"][i], expected["a"][0]) and torch.equal(drawn["b"][i], expected["b"][0])
    assert seen_extra == [((1, 2), 0.5)] * 3  # batched extras are sliced, others passed as they are
    labels = draw_per_sample(lambda g, k: torch.randint(0, 1000, (k,), generator=g), 3,
                             SampleGenerators.seeded(11, range(4, 7)))
    assert labels.tolist() == [int(torch.randint(0, 1000, (1,), generator=torch.Generator().manual_seed(sample_seed(11, i))))
                               for i in range(4, 7)]
    assert len({sample_seed(s, i) for s in range(50) for i in range(50)}) == 2500
    with pytest.raises(ValueError, match="2 sample generators for a batch of 3"):
        draw_noise(noise, like, SampleGenerators.seeded(0, range(2)), mask=torch.ones(3, 2), scale=1.0)


def test_a_noise_marked_as_drawing_per_sample_gets_the_generators_in_one_call():
    from diffkit.tree import SampleGenerators, draw_noise, draws_per_sample

    calls = []

    @draws_per_sample
    def noise(state, generator, *, mask):
        calls.append((type(generator).__name__, state.shape, mask.shape))
        if not isinstance(generator, SampleGenerators):
            return gaussian_like(state, generator)
        return torch.stack([torch.randn(state.shape[1:], generator=g) for g in generator])

    like, generators = torch.zeros(3, 4), SampleGenerators.seeded(5, range(3))
    drawn = draw_noise(noise, like, generators, mask=torch.ones(3, 4))
    assert calls == [("SampleGenerators", (3, 4), (3, 4))]
    unmarked = draw_noise(lambda s, g, mask: gaussian_like(s, g), like, SampleGenerators.seeded(5, range(3)),
                          mask=torch.ones(3, 4))
    assert torch.equal(drawn, unmarked)
    single = torch.Generator().manual_seed(0)
    draw_noise(noise, like, single, mask=torch.ones(3, 4))  # a plain generator passes through as before
    assert calls[-1][0] == "Generator"
