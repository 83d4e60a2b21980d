"""Evaluation: the Fréchet distance against closed forms, the memorisation check, and `evaluate`."""

from __future__ import annotations

import math

import pytest
import torch

from diffkit_image.data import ImageSet, load_digits, to_unit_range
from diffkit_image.evaluation import FeatureNet, feature_network, memorisation, nearest_distances, score


def gaussian(n: int, mean, std, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, len(mean), generator=generator, dtype=torch.float64) * torch.tensor(std) + torch.tensor(mean)


def test_nearest_distances_match_a_direct_computation():
    generator = torch.Generator().manual_seed(0)
    queries, pool = torch.randn(7, 5, generator=generator), torch.randn(30, 5, generator=generator)
    direct = torch.cdist(queries.double(), pool.double()).sort(dim=1).values[:, :2]
    assert torch.allclose(nearest_distances(queries, pool, k=2, chunk=3), direct, atol=1e-9)
    self_excluded = nearest_distances(pool[:4], pool, exclude_self=True)[:, 0]
    direct_self = torch.cdist(pool[:4].double(), pool.double()) + torch.eye(4, 30, dtype=torch.float64) * 1e9
    assert torch.allclose(self_excluded, direct_self.min(dim=1).values, atol=1e-9)


EPOCHS = 6  # as in the conftest config, so that the classifier is trained once and then cached


@pytest.fixture(scope="module")
def digits():
    return load_digits(8, 1)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """The session cache of the conftest, shared by every test of this module."""
    return tmp_path_factory.getbasetemp() / "cache" / "image"


def test_copies_are_memorised_and_noise_is_not(digits):
    copies = digits.pixels[:50]
    copied = memorisation(copies, digits.pixels)
    assert copied["memorised_fraction"] == 1.0 and copied["nn_distance_ratio"] < 1e-6
    noise = torch.randint(0, 256, (50, 1, 8, 8), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    noisy = memorisation(noise, digits.pixels)
    assert noisy["memorised_fraction"] == 0.0 and noisy["nn_distance_ratio"] > 2


def test_new_pictures_from_the_same_distribution_look_new(digits):
    first, second = digits.pixels[:900], digits.pixels[900:]
    scores = memorisation(second, first)
    assert 0.7 < scores["nn_distance_ratio"] < 1.5
    assert scores["memorised_fraction"] < 0.05


def test_the_feature_network_learns_the_digits_and_is_cached(digits, cache):
    net, accuracy = feature_network(digits, epochs=EPOCHS, cache=cache)
    assert accuracy > 0.8
    stored = sorted((cache / "classifiers").glob("*.pt"))
    assert stored
    cached, again = feature_network(digits, epochs=EPOCHS, cache=cache)
    assert sorted((cache / "classifiers").glob("*.pt")) == stored
    assert again == accuracy
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), cached.state_dict().values()))


def squares_and_rings(count: int, side: int) -> ImageSet:
    """Filled squares (label 0) and rings (1) of half the side, in random colours on random
    paper at random places: the class is the shape alone."""
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(2, (count,), generator=generator)
    size = side // 2
    ink = torch.zeros(count, 1, side, side)
    for index, (top, left) in enumerate(torch.randint(0, side - size + 1, (count, 2), generator=generator).tolist()):
        ink[index, :, top:top + size, left:left + size] = 1
        if labels[index]:
            ink[index, :, top + 3:top + size - 3, left + 3:left + size - 3] = 0
    paper, colour = torch.rand(2, count, 3, 1, 1, generator=generator)
    colour = torch.where((colour - paper).abs() < 0.4, 1 - paper, colour)  # ink that stands out
    pixels = ((paper * (1 - ink) + colour * ink) * 255).round().to(torch.uint8)
    return ImageSet(pixels, labels, ["square", "ring"])


def test_the_feature_network_learns_pictures_larger_than_16x16():
    net, accuracy = feature_network(squares_and_rings(400, 32), epochs=10, cache=None)
    assert accuracy > 0.7  # chance: 0.5; 0.85 measured
    assert net.features(torch.zeros(2, 3, 32, 32)).shape == (2, 64)


def test_larger_pictures_get_a_stem_of_pools_and_group_norms_and_small_ones_the_plain_network():
    def count(net, kind):
        return sum(isinstance(module, kind) for module in net.modules())

    for side, pools, norms in ((8, 1, 0), (16, 1, 0), (17, 2, 5), (32, 2, 5), (64, 3, 6)):
        net = FeatureNet(3, 10, side)
        assert (count(net, torch.nn.MaxPool2d), count(net, torch.nn.GroupNorm)) == (pools, norms), side
        features = net.features(torch.zeros(2, 3, side, side))
        assert features.shape == (2, 64)
    # 16x16: the network of the scores measured before the stem, parameter for parameter.
    plain = {name: tuple(value.shape) for name, value in FeatureNet(1, 10, 16).state_dict().items()}
    assert plain == {"body.0.weight": (32, 1, 3, 3), "body.0.bias": (32,), "body.2.weight": (32, 32, 3, 3),
                     "body.2.bias": (32,), "body.5.weight": (64, 32, 3, 3), "body.5.bias": (64,),
                     "body.7.weight": (64, 64, 3, 3), "body.7.bias": (64,), "body.11.weight": (64, 1024),
                     "body.11.bias": (64,), "classify.weight": (10, 64), "classify.bias": (10,)}


def test_unlabelled_references_use_fixed_random_features(digits, tmp_path):
    unlabelled = ImageSet(digits.pixels[:200], torch.zeros(200, dtype=torch.long), ["all"])
    first, accuracy = feature_network(unlabelled, epochs=EPOCHS, cache=None)
    second, _ = feature_network(unlabelled, epochs=EPOCHS, cache=None)
    assert math.isnan(accuracy)
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values()))
    scores = score(digits.pixels[:100], unlabelled, epochs=EPOCHS, cache=tmp_path)
    assert "classifier_accuracy" not in scores and scores["frechet_distance"] > 0


def test_the_distance_is_zero_for_data_against_itself_small_for_a_split_and_large_for_noise(digits, cache):
    same = score(digits.pixels, digits, epochs=EPOCHS, cache=cache)
    assert abs(same["frechet_distance"]) < 1e-4  # round-off only
    order = torch.randperm(1797, generator=torch.Generator().manual_seed(0))
    half = score(digits.pixels[order[:500]], digits, epochs=EPOCHS, cache=cache)
    noise = torch.randint(0, 256, (500, 1, 8, 8), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    noisy = score(noise, digits, epochs=EPOCHS, cache=cache)
    blank = score(torch.full((500, 1, 8, 8), 255, dtype=torch.uint8), digits, epochs=EPOCHS, cache=cache)
    assert noisy["frechet_distance"] > 20 * max(half["frechet_distance"], 1e-3)
    assert blank["frechet_distance"] > 20 * max(half["frechet_distance"], 1e-3)
    assert same["classifier_accuracy"] > 0.8 and same["samples"] == 1797.0


def test_evaluate_reads_a_sample_folder_written_by_the_domain(domain, config, digits, tmp_path):
    order = torch.randperm(1797, generator=torch.Generator().manual_seed(2))
    real, noise = tmp_path / "real", tmp_path / "noise"
    domain.write_samples({"x": to_unit_range(digits.pixels[order[:300]])}, real, config)
    domain.write_samples({"x": torch.rand(300, 1, 8, 8) * 2 - 1}, noise, config)
    real_scores = domain.evaluate(real, None, config)
    noise_scores = domain.evaluate(noise, None, config)
    assert real_scores["samples"] == 300.0  # grid.png is not counted
    assert real_scores["memorised_fraction"] == 1.0  # these are training pictures
    assert noise_scores["frechet_distance"] > 20 * real_scores["frechet_distance"]


def test_evaluate_against_a_reference_folder_and_refuses_a_mismatch(domain, config, digits, tmp_path):
    reference = tmp_path / "reference"
    for label in range(3):
        picked = digits.pixels[digits.labels == label][:30]
        domain.write_samples({"x": to_unit_range(picked)}, reference / f"digit{label}", config)
    scores = domain.evaluate(reference / "digit1", reference, config)
    assert scores["samples"] == 30.0 and scores["memorised_fraction"] == 1.0
    with pytest.raises(ValueError, match="samples are"):
        score(torch.zeros(4, 3, 8, 8, dtype=torch.uint8), digits, epochs=1, cache=None)
    with pytest.raises(ValueError, match="no sample pictures"):
        (tmp_path / "nothing").mkdir()
        domain.evaluate(tmp_path / "nothing", None, config)


def test_evaluate_reads_the_asked_labels_from_the_sample_record(domain, config, digits, tmp_path):
    """Real digits asked for as their own labels are read as asked about as often as the classifier
    is right on held-out digits; asked for as shifted labels, almost never."""
    import json

    from click.testing import CliRunner

    from diffkit.cli import cli

    order = torch.randperm(1797, generator=torch.Generator().manual_seed(3))[:200]
    folder = tmp_path / "asked"
    domain.write_samples({"x": to_unit_range(digits.pixels[order])}, folder, config)
    true_labels = ",".join(str(int(label)) for label in digits.labels[order])
    (folder / "samples.json").write_text(json.dumps({"cond": true_labels}))
    run = lambda *extra: CliRunner().invoke(  # noqa: E731
        cli, ["evaluate", "--domain", "image", "--samples", str(folder), "--set", "data.image_size=8", "--json", *extra],
        catch_exceptions=False)
    asked = json.loads(run().output)
    assert asked["asked_label_accuracy"] > 0.85
    assert asked["asked_label_accuracy"] == pytest.approx(asked["classifier_accuracy"], abs=0.08)
    shifted = ",".join(str((int(label) + 1) % 10) for label in digits.labels[order])
    assert json.loads(run("--cond", shifted).output)["asked_label_accuracy"] < 0.1
