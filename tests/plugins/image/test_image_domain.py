"""The image domain through the core: the contract, training, sampling, editing, shipped weights."""

from __future__ import annotations

import tomllib

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

import diffkit
from diffkit.generate import SampleRequest, build_diffusion, generate
from diffkit.testing import assert_domain_conforms

from diffkit_image.domain import ImageDomain

from image_helpers import randomize_zero_layers, save
from run_checks import assert_resume_is_exact


def test_the_image_domain_is_registered_as_a_builtin():
    registry = diffkit.make_plugin_manager(entry_points=False)
    assert isinstance(registry.domain("image"), ImageDomain)


def test_the_domain_conforms_to_the_contract(domain, config, tmp_path):
    from PIL import Image

    assert_domain_conforms(domain, tmp_path, overrides={"data": config["data"], "model": config["model"]},
                           object_type=Image.Image)


def test_a_few_training_steps_reduce_the_loss(domain, config):
    torch.manual_seed(0)
    dataset = domain.build_dataset(config)
    model = domain.build_model(config)
    domain.fit_data(model, dataset, config)
    diffusion = build_diffusion(domain, config)
    loader = DataLoader(dataset, batch_size=64, shuffle=True, drop_last=True,
                        generator=torch.Generator().manual_seed(0))
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    fixed = next(iter(DataLoader(dataset, batch_size=256, shuffle=True, generator=torch.Generator().manual_seed(1))))
    probe = {"t": torch.rand(256, generator=torch.Generator().manual_seed(2)),
             "noise": torch.randn(fixed["x"].shape, generator=torch.Generator().manual_seed(3))}

    def held_loss() -> float:
        with torch.no_grad():
            return float(diffusion.loss(model, fixed["x"], cond=fixed["cond"], **probe))

    before = held_loss()
    batches = iter(loader)
    for _ in range(25):
        batch = next(batches)
        loss = diffusion.loss(model, batch["x"], cond=batch["cond"])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = held_loss()
    assert after < 0.7 * before


def test_resume_is_exact_with_dropout(domain, config, tmp_path, monkeypatch):
    config["model"]["dropout"] = 0.1  # the gpu preset's
    config["train"]["batch_size"] = 16
    assert_resume_is_exact(domain, config, tmp_path, monkeypatch)


def test_resume_is_exact_on_a_stored_folder_with_flips_and_the_stored_items_equal_the_decoded_ones(
        domain, config, tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    for i in range(40):
        save(tmp_path / "shapes" / f"c{i % 2}" / f"{i}.png", rng.integers(0, 256, (8, 8), dtype=np.uint8))
    config["data"].update(hflip=True, cache_dir=str(tmp_path / "cache"))  # flips: per-item randomness
    config["train"]["batch_size"] = 16
    assert_resume_is_exact(domain, config, tmp_path, monkeypatch, data=str(tmp_path / "shapes"))
    stored = domain.build_dataset(config, str(tmp_path / "shapes"))
    decoded = domain.build_dataset({**config, "data": {**config["data"], "cache": False}}, str(tmp_path / "shapes"))
    assert stored.images.store is not None and decoded.images.store is None
    for index in range(40):
        torch.manual_seed(index)
        a = stored[index]
        torch.manual_seed(index)
        b = decoded[index]
        assert torch.equal(a["x"], b["x"]) and a["cond"] == b["cond"]


def test_fit_data_records_class_names_and_frequencies(domain, config, tmp_path):
    for name, count in (("ants", 3), ("bees", 1)):
        for i in range(count):
            save(tmp_path / "bugs" / name / f"{i}.png", np.full((8, 8), 40 * i, dtype=np.uint8))
    dataset = domain.build_dataset(config, str(tmp_path / "bugs"))
    model = domain.build_model(config)
    domain.fit_data(model, dataset, config)
    assert model.class_names[:2] == ["ants", "bees"]
    assert model.class_counts[:3].tolist() == [3.0, 1.0, 0.0]
    drawn = domain.prepare_sampling(model, 4000, config, generator=torch.Generator().manual_seed(0))["cond"]
    assert set(drawn.tolist()) == {0, 1}
    assert abs(float((drawn == 0).float().mean()) - 0.75) < 0.03
    by_name = domain.prepare_sampling(model, 3, config, cond="bees")["cond"]
    assert by_name.tolist() == [1, 1, 1]


def test_null_cond_is_the_null_label(domain):
    assert domain.null_cond(torch.tensor([3, 4])).tolist() == [-1, -1]
    assert domain.null_cond(None) is None


def trained_tiny_model(domain, config):
    torch.manual_seed(0)
    model = randomize_zero_layers(domain.build_model(config))
    domain.fit_data(model, domain.build_dataset(config), config)
    return model.eval()


def test_sampling_writes_valid_pngs_with_the_requested_classes(domain, config, tmp_path):
    model = trained_tiny_model(domain, config)
    request = SampleRequest(n=6, steps=3, cond="4,7", guidance=2.0, seed=0)
    batch = generate(domain, model, config, request)
    assert batch["x"].shape == (6, 1, 8, 8) and batch["x"].abs().max() <= 1
    assert batch["cond"].tolist() == [4, 7, 4, 7, 4, 7]
    written = domain.write_samples(batch, tmp_path / "samples", config)
    assert len(written) == 7 and written[-1].path.name == "grid.png" and written[-1].role == "overview"
    for path, x in zip(written, batch["x"]):
        with Image.open(path) as image:
            image.verify()
        with Image.open(path) as image:
            pixels = torch.from_numpy(np.asarray(image).astype(np.float32))
        assert image.size == (8, 8)
        assert (pixels / 127.5 - 1 - x[0]).abs().max() <= 1 / 127.5 + 1e-6


@pytest.mark.parametrize("sampler", ["ddpm", "dpmpp_2m"])
def test_the_same_seed_gives_the_same_digits_whatever_the_batch_size(domain, config, sampler):
    model = trained_tiny_model(domain, config)
    runs = [generate(domain, model, config, SampleRequest(n=8, steps=4, seed=5, sampler=sampler, batch_size=size))
            for size in (1, 3, 8)]
    for run in runs[1:]:
        assert run["cond"].tolist() == runs[0]["cond"].tolist()  # labels drawn per sample as well
        # Equal up to float32 rounding of batched convolutions (about 1e-6 here).
        torch.testing.assert_close(run["x"], runs[0]["x"], rtol=0, atol=1e-4)
    assert len(set(runs[0]["cond"].tolist())) > 1


def test_an_interpolation_strip_is_one_row(domain, config, tmp_path):
    model = trained_tiny_model(domain, config)
    batch = generate(domain, model, config, SampleRequest(steps=2, interpolate=5, cond="3"))
    (path,) = domain.write_samples(batch, tmp_path / "strip.png", config)
    with Image.open(path) as image:
        width, height = image.size
    assert width > 4 * height


def test_inpainting_keeps_the_known_region(domain, config, tmp_path):
    model = trained_tiny_model(domain, config)
    picture = np.zeros((8, 8), dtype=np.uint8)
    picture[:, 4:] = 255
    mask = np.zeros((8, 8), dtype=np.uint8)
    mask[:, :3] = 255  # keep the left three columns
    request = SampleRequest(n=3, steps=4, init=str(save(tmp_path / "in.png", picture)),
                            mask=str(save(tmp_path / "mask.png", mask)), seed=1)
    batch = generate(domain, model, config, request)
    assert "keep" in batch and batch["keep"].shape == (3, 1, 8, 8)
    assert torch.equal(batch["x"][:, :, :, :3], torch.full((3, 1, 8, 3), -1.0))
    assert not torch.equal(batch["x"][:, :, :, 3:], batch["x"][:, :, :, 3:].new_full((3, 1, 8, 5), -1.0))


def test_editing_without_a_mask_is_sdedit_and_low_strength_stays_close(domain, config, tmp_path):
    model = trained_tiny_model(domain, config)
    picture = np.tile(np.linspace(0, 255, 8, dtype=np.uint8), (8, 1))
    init = str(save(tmp_path / "in.png", picture))
    known = domain.load_known(init, None, 2, config)
    assert "keep" not in known and known["x"].shape == (2, 1, 8, 8)
    gentle = generate(domain, model, config, SampleRequest(n=2, steps=20, init=init, strength=0.05))
    strong = generate(domain, model, config, SampleRequest(n=2, steps=20, init=init, strength=1.0))
    close = (gentle["x"] - known["x"]).abs().mean()
    far = (strong["x"] - known["x"]).abs().mean()
    assert close < 0.1 < far


def test_load_known_accepts_a_condition(domain, config, tmp_path):
    init = str(save(tmp_path / "in.png", np.zeros((8, 8), dtype=np.uint8)))
    assert domain.load_known(init, None, 3, config, cond="5")["cond"].tolist() == [5, 5, 5]


def test_the_shipped_weights_load_and_draw_digits_of_the_asked_class(domain, tmp_path):
    """The shipped checkpoint fits the model its recorded config describes, and a logistic
    regression fitted to the real digits reads its samples as the digits asked for."""
    from sklearn.linear_model import LogisticRegression

    from diffkit.loading import load_for_sampling
    from diffkit_image.data import load_digits
    from diffkit_image.files import read_images

    path = domain.pretrained()
    assert path is not None and path.is_dir() and sum(f.stat().st_size for f in path.iterdir()) < 8_000_000
    model, config = load_for_sampling(domain, path)
    from diffkit import checkpoint
    from diffkit.config import fill_defaults

    saved = checkpoint.load_sampling_state(path)["config"]
    assert tomllib.loads(path.with_suffix(".toml").read_text()) == saved and config == fill_defaults(domain, saved)
    assert model.class_names == [str(i) for i in range(10)]
    batch = generate(domain, model, config, SampleRequest(n=30, cond=",".join("0123456789"), steps=15))
    domain.write_samples(batch, tmp_path / "digits", config)
    size = config["data"]["image_size"]
    pictures = read_images(tmp_path / "digits", size, 1).flatten(1).numpy() / 255.0
    digits = load_digits(size, 1)
    reader = LogisticRegression(max_iter=300).fit(digits.pixels.flatten(1).numpy() / 255.0, digits.labels.numpy())
    agreement = (reader.predict(pictures) == batch["cond"].numpy()).mean()
    assert agreement >= 0.8


def test_the_default_preset_fits_the_data_not_only_the_device(domain, tmp_path, monkeypatch):
    import diffkit_image.domain as image_domain

    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    preset, why = domain.default_preset(None, cuda)
    assert preset == "cpu" and "1,797" in why
    for i in range(3):
        save(tmp_path / "pictures" / f"{i}.png", np.full((8, 8), 40 * i, dtype=np.uint8))
    folder = str(tmp_path / "pictures")
    assert domain.default_preset(folder, cuda) == ("cpu", "3 pictures are too few for the gpu preset (sized for 50,000)")
    assert domain.default_preset(folder, cpu)[0] == "cpu"
    monkeypatch.setattr(image_domain, "GPU_PRESET_MIN_PICTURES", 3)
    assert domain.default_preset(folder, cuda)[0] == "gpu"
