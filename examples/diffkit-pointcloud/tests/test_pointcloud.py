"""Tests of the pointcloud domain; run them with `python -m pytest` in this folder."""

import math

import pytest
import torch

from diffkit.plugins import make_plugin_manager
from diffkit.testing import assert_domain_conforms
from diffkit_pointcloud import SHAPES, PointCloudDomain, SetDenoiser, chamfer_distance, make_shapes, score_clouds

SMALL = {"data": {"count": 64, "points": 32}, "model": {"width": 32, "layers": 1}}


# tutorial: conformance
def test_domain_honours_the_diffkit_contract(tmp_path):
    assert_domain_conforms(PointCloudDomain(), tmp_path, overrides=SMALL)
# end tutorial: conformance


def test_plugin_is_found_through_its_entry_point():
    registry = make_plugin_manager()
    assert isinstance(registry.domain("pointcloud"), PointCloudDomain)


# tutorial: permutation
def test_denoiser_is_permutation_equivariant():
    model = SetDenoiser(width=32, layers=2, heads=4).eval()
    x, t = torch.randn(3, 20, 2), torch.rand(3)
    order = torch.randperm(20)
    with torch.no_grad():
        assert torch.allclose(model(x[:, order], t), model(x, t)[:, order], atol=1e-5)
# end tutorial: permutation


def test_shapes_lie_on_their_outlines():
    clouds, labels = make_shapes(40, 50, seed=3)
    radius = clouds.norm(dim=2)
    circles = radius[labels == SHAPES.index("circle")]
    # a circle's points are all (up to jitter) at the same distance from the centre
    assert (circles.std(dim=1) < 0.03).all()
    crosses = clouds[labels == SHAPES.index("cross")]
    # a cross's points lie on one of two perpendicular lines through the centre
    direction = crosses[:, :1] / crosses[:, :1].norm(dim=2, keepdim=True)
    along = (crosses * direction).sum(2).abs()
    across = (crosses[..., 0] * direction[..., 1] - crosses[..., 1] * direction[..., 0]).abs()
    assert (torch.minimum(along, across) < 0.05).float().mean() > 0.95


def test_chamfer_distance_against_a_direct_computation():
    a, b = torch.randn(3, 5, 2), torch.randn(4, 7, 2)
    expected = torch.empty(3, 4)
    for i in range(3):
        for j in range(4):
            d = [[float(((p - q) ** 2).sum()) for q in b[j]] for p in a[i]]
            expected[i, j] = sum(min(row) for row in d) / 5 + sum(min(col) for col in zip(*d)) / 7
    assert torch.allclose(chamfer_distance(a, b), expected, atol=1e-5)
    assert torch.allclose(chamfer_distance(a, a).diagonal(), torch.zeros(3), atol=1e-5)


def test_true_shapes_score_better_than_blobs():
    reference, reference_labels = make_shapes(200, 32, seed=1)
    shapes, labels = make_shapes(40, 32, seed=2)
    blobs = 0.5 * torch.randn(40, 32, 2, generator=torch.Generator().manual_seed(0))
    good = score_clouds(shapes, reference, labels, reference_labels)
    bad = score_clouds(blobs, reference, labels, reference_labels)
    assert good["mmd_cd"] < bad["mmd_cd"] / 3
    assert good["label_agreement"] > 0.9


def test_written_samples_read_back_as_training_data(tmp_path):
    domain = PointCloudDomain()
    config = {"data": {"points": 16, "count": 8, "seed": 0}}
    clouds, labels = make_shapes(8, 16)
    written = domain.write_samples({"x": clouds, "cond": labels}, tmp_path / "out", config)
    assert [(o.path.name, o.kind, o.role) for o in written] == [("samples.npz", "data", "samples"),
                                                                 ("samples.png", "image", "overview")]
    dataset = domain.build_dataset(config, str(written[0].path))
    assert torch.equal(torch.stack([dataset[i]["x"] for i in range(8)]), clouds)
    assert [int(dataset[i]["cond"]) for i in range(8)] == labels.tolist()
    with pytest.raises(FileExistsError, match="samples.npz.* already exists"):
        domain.write_samples({"x": clouds, "cond": labels}, tmp_path / "out", config)


def test_inpainting_keeps_the_chosen_half():
    domain = PointCloudDomain()
    config = {"data": {"points": 40}}
    batch = domain.load_known("circle", "left", 3, config)
    kept = batch["keep"][0, :, 0].bool()
    assert torch.equal(kept, batch["x"][0, :, 0] < 0)
    assert batch["x"].shape == (3, 40, 2) and kept.sum() == 20
    assert torch.allclose(batch["x"].norm(dim=2), torch.ones(3, 40), atol=1e-3)  # a 96-gon
    assert batch["cond"].tolist() == [SHAPES.index("circle")] * 3
    assert math.isclose(float(batch["x"][..., 1].mean()), 0.0, abs_tol=1e-5)


def test_sampling_asks_for_the_shape_named_by_cond_or_for_none():
    domain = PointCloudDomain()
    config = {"data": {"points": 10}}
    assert domain.prepare_sampling(None, 3, config, cond="cross")["cond"].tolist() == [3, 3, 3]
    unconditional = domain.prepare_sampling(None, 2, config)
    assert unconditional["x"].shape == (2, 10, 2) and unconditional["cond"].tolist() == [len(SHAPES)] * 2
    with pytest.raises(ValueError, match="'star' is not a class of this model; classes: circle, square"):
        domain.prepare_sampling(None, 1, config, cond="star")
