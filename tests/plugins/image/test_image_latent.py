"""The latent stage on pictures: the autoencoder trained by the runner (exact resume, previews,
logged terms), diffusion of any process on its cached latents, decoding in every front door,
inpainting on the latent grid, and portable folders holding both networks."""

from __future__ import annotations

import copy
import json
import pickle
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

import diffkit
from diffkit import checkpoint as ckpt
from diffkit import latent as latent_module
from diffkit import pretrained
from diffkit.distributed import World
from diffkit.generate import SampleRequest, generate
from diffkit.latent import LatentModel, latent_config, latent_stage
from diffkit.loading import load_for_sampling
from diffkit.runner import train
from diffkit_image.domain import ImageDomain
from image_helpers import randomize_zero_layers, read, save
from latent_helpers import IdentityAutoencoder
from run_checks import assert_resume_is_exact

AUTOENCODER = {"base_channels": 8, "channel_mults": [1, 2], "latent_channels": 2, "groups": 4}
TRAIN = {"steps": 8, "batch_size": 16, "checkpoint_every": 4, "preview_every": 0, "preview_count": 4, "log_every": 2}


def autoencoder_config(config: dict, **autoencoder) -> dict:
    return {**config, "autoencoder": {**config["autoencoder"], **AUTOENCODER, **autoencoder},
            "train": {**config["train"], **TRAIN, "stage": "autoencoder"}}


@pytest.fixture
def autoencoder_run(domain, config, tmp_path_factory):
    """An autoencoder of the 8x8 digits (latents 2x4x4), trained 8 steps."""
    folder = tmp_path_factory.mktemp("autoencoder")
    train(domain, autoencoder_config(config), out=folder, progress=False)
    return folder


def on_latents(domain, config, autoencoder_run, **train_settings):
    return latent_config(domain, autoencoder_run, overrides={"model": config["model"],
                                                              "train": {**TRAIN, **train_settings}})


def test_the_autoencoder_stage_logs_its_terms_and_previews_originals_beside_reconstructions(domain, config, tmp_path):
    settings = autoencoder_config(config)
    settings["train"].update(preview_every=8)
    train(domain, settings, out=tmp_path, progress=False)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert {"loss", "reconstruction", "kl"} <= set(records[-1])
    # The loss is the reconstruction plus the weighted KL.
    assert records[-1]["loss"] == pytest.approx(records[-1]["reconstruction"] + 1e-5 * records[-1]["kl"], rel=1e-5)
    assert json.loads((tmp_path / "config.json").read_text())["autoencoder"]["state_shape"] == [1, 8, 8]
    preview = tmp_path / "previews" / "step_00000008"
    assert len(list(preview.glob("sample-*.png"))) == 8  # four originals, each followed by its reconstruction
    original = read(preview / "sample-00000.png")
    first = domain.build_dataset(config)[0]["x"]
    assert np.array_equal(original, ((first[0] + 1) * 127.5).round().numpy().astype(np.uint8))


def test_an_autoencoder_run_resumes_exactly_with_its_discriminator(domain, config, tmp_path, monkeypatch):
    settings = autoencoder_config(config, adversarial_weight=0.1, adversarial_start=2)
    straight = assert_resume_is_exact(domain, settings, tmp_path, monkeypatch, steps=6, every=2, stop=3)
    assert any(key.startswith("discriminator.") for key in straight["model"])
    # The yardstick can fail: without the adversarial term the autoencoder ends elsewhere.
    train(domain, autoencoder_config(config), out=tmp_path / "plain", progress=False)
    plain = ckpt.load(ckpt.resolve(tmp_path / "plain"))["model"]
    assert not torch.equal(plain["autoencoder.decoder.0.weight"], straight["model"]["autoencoder.decoder.0.weight"])


def test_the_adversarial_term_reaches_the_autoencoder_only_through_the_generator_loss(domain, config):
    from diffkit.autoencoder import AutoencoderObjective

    settings = autoencoder_config(config, adversarial_weight=1.0)
    objective = AutoencoderObjective(settings)
    model = objective.build_model(domain, settings, domain.build_dataset(settings))
    x = torch.rand(4, 1, 8, 8) * 2 - 1
    out = model(x, torch.zeros(4, 2, 4, 4))
    ae_grads = torch.autograd.grad(out["discriminator"].sum(), list(model.autoencoder.parameters()), allow_unused=True)
    assert all(grad is None for grad in ae_grads), "the discriminator's loss must not train the autoencoder"
    d_grads = torch.autograd.grad(out["adversarial"].sum(), list(model.discriminator.parameters()), allow_unused=True)
    assert all(grad is None for grad in d_grads), "the autoencoder's adversarial term must not train the discriminator"


def test_a_diffusion_on_latents_caches_them_and_records_their_scale_and_shift(domain, config, autoencoder_run, tmp_path,
                                                                            monkeypatch):
    monkeypatch.setenv("DIFFKIT_CACHE_DIR", str(tmp_path / "cache"))
    settings = on_latents(domain, config, autoencoder_run)
    train(domain, settings, out=tmp_path / "run", progress=False)
    cached = list((tmp_path / "cache" / "image" / "latents").glob("*.npy"))
    assert len(cached) == 1
    latents = torch.from_numpy(np.load(cached[0]))
    assert latents.shape == (1797, 2, 4, 4)
    state = ckpt.load(ckpt.resolve(tmp_path / "run"))
    assert float(state["ema"]["latent_scale"]) == pytest.approx(1 / float(latents.double().std()), rel=1e-6)
    assert float(state["ema"]["latent_shift"]) == pytest.approx(float(latents.double().mean()), abs=1e-6)
    # The autoencoder travels frozen in the checkpoint, as it was trained.
    trained = ckpt.load(ckpt.resolve(autoencoder_run))["ema"]
    for key, value in state["model"].items():
        if key.startswith("autoencoder."):
            assert torch.equal(value, trained[key])
    # A second run reads the latents from the cache: encoding them again would fail here.
    monkeypatch.setattr(latent_module, "encode_states", lambda *args: pytest.fail("encoded again"))
    train(domain, settings, out=tmp_path / "again", progress=False)


def test_the_data_is_encoded_in_batches_and_its_latents_are_mapped_from_the_cache(domain, config, autoencoder_run,
                                                                                   tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFKIT_CACHE_DIR", str(tmp_path / "cache"))
    settings = on_latents(domain, config, autoencoder_run)
    settings["latent"]["encode_batch"] = 500  # 1,797 digits: the last batch is short
    stage = latent_stage(domain, settings)
    dataset = stage.build_dataset(settings)
    autoencoder, digits = stage.trained_autoencoder(), domain.build_dataset(config)
    for index in (0, 499, 500, 1796):  # one at a time, against the batched encoding
        alone = autoencoder.encode(digits[index]["x"][None]).mean[0]
        torch.testing.assert_close(dataset.latents[index], alone, rtol=1e-5, atol=1e-5)
    (path,) = (tmp_path / "cache" / "image" / "latents").glob("*.npy")
    maps = Path("/proc/self/maps")
    if maps.is_file():  # Linux: the latents are read through a mapping of the cache file, not copied
        assert str(path) in maps.read_text()


def encode_as_two_processes(monkeypatch, encode, *, shared: bool) -> dict[int, list[int]]:
    """``encode(world)`` run by two threads standing in for two torchrun processes (a barrier
    that waits for both, one token, and ``all_true`` over both ranks' flags, or False as where
    each machine keeps its own cache when not ``shared``); the indices each rank's dataset read."""
    gate, flags, read = threading.Barrier(2), {}, {0: [], 1: []}

    def all_true(flag, world):
        flags[world.rank] = flag
        gate.wait()
        answer = shared and all(flags.values())
        gate.wait()
        return answer

    monkeypatch.setattr(latent_module.distributed, "barrier", lambda world: gate.wait())
    monkeypatch.setattr(latent_module.distributed, "broadcast_object", lambda value, world: "token")
    monkeypatch.setattr(latent_module.distributed, "all_true", all_true)
    failures = []

    def rank(number):
        try:
            encode(World(rank=number, size=2), read[number])
        except BaseException as error:  # noqa: BLE001 - reported below
            failures.append(error)
            gate.abort()

    threads = [threading.Thread(target=rank, args=(number,)) for number in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures, failures
    return read


@pytest.mark.parametrize("shared", [True, False])
def test_each_process_encodes_its_own_part_and_the_main_process_joins_them(domain, config, autoencoder_run, tmp_path,
                                                                           monkeypatch, shared):
    digits = domain.build_dataset(config)

    class Counted(torch.utils.data.Dataset):
        def __init__(self, read):
            self.read = read

        def __len__(self):
            return len(digits)

        def __getitem__(self, index):
            self.read.append(index)
            return digits[index]

    autoencoder = latent_stage(domain, on_latents(domain, config, autoencoder_run)).trained_autoencoder()
    path = tmp_path / "latents.npy"
    read = encode_as_two_processes(
        monkeypatch, lambda world, read: latent_module.encode_into_cache(autoencoder, Counted(read), path, 64, world),
        shared=shared)
    halves = [list(range(0, 898)), list(range(898, 1797))]  # 1,797 digits: 898 and 899
    if shared:
        assert read == {0: halves[0], 1: halves[1]}
    else:  # the parts are not seen by every process: each encodes the whole set after its part
        assert read == {rank: halves[rank] + halves[0] + halves[1] for rank in (0, 1)}
    assert [file.name for file in tmp_path.iterdir()] == ["latents.npy"]  # the parts are removed
    alone = torch.cat(list(latent_module.encode_states(autoencoder, digits, 64, torch.device("cpu"))))
    torch.testing.assert_close(torch.from_numpy(np.load(path)), alone, rtol=1e-5, atol=1e-5)


def test_a_latent_dataset_sent_to_a_spawned_worker_maps_the_file_again(domain, config, autoencoder_run, tmp_path,
                                                                       monkeypatch):
    monkeypatch.setenv("DIFFKIT_CACHE_DIR", str(tmp_path / "cache"))
    settings = on_latents(domain, config, autoencoder_run)
    dataset = latent_stage(domain, settings).build_dataset(settings)
    assert "latents" not in dataset.__getstate__()  # the path travels, not the tensor
    copy_of = pickle.loads(pickle.dumps(dataset))
    assert copy_of.path == dataset.path and torch.equal(copy_of.latents, dataset.latents)
    assert copy_of[5]["x"].equal(dataset[5]["x"])


def test_a_diffusion_on_latents_resumes_exactly(domain, config, autoencoder_run, tmp_path, monkeypatch):
    assert_resume_is_exact(domain, on_latents(domain, config, autoencoder_run), tmp_path, monkeypatch,
                           steps=6, every=2, stop=3)


@pytest.mark.parametrize("kind", ["gaussian", "flow"])
def test_any_process_runs_on_latents_and_every_front_door_decodes_the_same_pictures(domain, config, autoencoder_run,
                                                                                     tmp_path, kind):
    settings = on_latents(domain, config, autoencoder_run)
    settings["diffusion"]["kind"] = kind
    settings["sample"]["sampler"] = "dpmpp_2m"
    train(domain, settings, out=tmp_path / "run", progress=False)
    model, saved = load_for_sampling(domain, tmp_path / "run")
    assert isinstance(model, LatentModel)
    batch = generate(domain, model, saved, SampleRequest(n=3, seed=5, steps=4))
    assert batch["x"].shape == (3, 1, 8, 8) and float(batch["x"].abs().max()) <= 1.0
    pipe = diffkit.load(tmp_path / "run")
    pictures = pipe.sample(3, seed=5, steps=4)
    assert [np.asarray(p).shape for p in pictures] == [(8, 8)] * 3
    assert np.array_equal(np.asarray(pictures[0]), ((batch["x"][0, 0] + 1) * 127.5).round().clamp(0, 255).byte().numpy())
    folder = pipe.save_pretrained(tmp_path / "folder")
    again = diffkit.load(folder).sample(3, seed=5, steps=4)
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(pictures, again))


def test_the_exported_folder_holds_both_networks_each_checked_by_its_digest(domain, config, autoencoder_run, tmp_path):
    train(domain, on_latents(domain, config, autoencoder_run), out=tmp_path / "run", progress=False)
    folder = pretrained.export(tmp_path / "run", tmp_path / "folder")
    described = json.loads((folder / "config.json").read_text())
    assert described["autoencoder_weights"] == "autoencoder.safetensors"
    import hashlib

    assert described["autoencoder_sha256"] == hashlib.sha256((folder / "autoencoder.safetensors").read_bytes()).hexdigest()
    from safetensors.torch import load_file

    assert all(key.startswith("autoencoder.") for key in load_file(folder / "autoencoder.safetensors"))
    assert not any(key.startswith("autoencoder.") for key in load_file(folder / "model.safetensors"))
    assert "autoencoder.safetensors" in (folder / "README.md").read_text()
    (folder / "autoencoder.safetensors").write_bytes((folder / "autoencoder.safetensors").read_bytes()[:-4] + b"\0\0\0\0")
    with pytest.raises(pretrained.ChecksumError, match=r"autoencoder\.safetensors.*autoencoder_sha256"):
        pretrained.load_pretrained(folder)


def test_an_autoencoder_does_not_sample_and_a_diffusion_is_no_autoencoder(domain, config, autoencoder_run, tmp_path):
    with pytest.raises(ckpt.CheckpointError, match=r"holds an autoencoder .*--autoencoder"):
        load_for_sampling(domain, autoencoder_run)
    train(domain, {**config, "train": {**config["train"], **TRAIN}}, out=tmp_path / "pixels", progress=False)
    with pytest.raises(ValueError, match="holds a diffusion model, not an autoencoder"):
        latent_config(domain, tmp_path / "pixels")


def test_a_latent_run_keeps_the_autoencoders_data_settings_and_weights(domain, config, autoencoder_run, tmp_path):
    with pytest.raises(ValueError, match=r"data.image_size is 8 there, not 16"):
        latent_config(domain, autoencoder_run, sets=["data.image_size=16"])
    # Where derived files go is not the data: it may change.
    assert latent_config(domain, autoencoder_run, sets=[f"data.cache_dir={tmp_path}"])["data"]["cache_dir"] == str(tmp_path)
    settings = on_latents(domain, config, autoencoder_run)
    # An autoencoder changed since the run was made is refused, naming both digests.
    checkpoint = ckpt.resolve(autoencoder_run)
    state = ckpt.load(checkpoint)
    state["ema"]["autoencoder.decoder.0.bias"] += 1.0
    ckpt.save_atomic(state, checkpoint)
    with pytest.raises(ckpt.CheckpointError, match="is not the one this run was made with"):
        train(domain, settings, out=tmp_path / "run", progress=False)


class IdentityImages(ImageDomain):
    """Pictures whose autoencoder does nothing: their latents are the pictures."""

    def build_autoencoder(self, config, state_shape):
        return IdentityAutoencoder(state_shape)


def identity_latents(config: dict) -> tuple[dict, LatentModel, torch.nn.Module]:
    """A pixel denoiser with random weights, and the same denoiser as a latent model of unit scale."""
    denoiser = randomize_zero_layers(ImageDomain().build_model(config))
    denoiser.set_classes([str(i) for i in range(10)], torch.ones(10))
    settings = copy.deepcopy(config)
    settings["autoencoder"]["state_shape"] = [1, 8, 8]
    on_identity = {**config, "latent": {**config["latent"], "autoencoder": "identity", "settings": settings}}
    return on_identity, LatentModel(denoiser, IdentityImages().build_autoencoder(settings, (1, 8, 8))), denoiser


@pytest.mark.parametrize("kind", ["gaussian", "flow"])
def test_on_an_identity_autoencoder_latent_sampling_is_pixel_sampling(config, kind):
    """The process does not know it runs on latents: with latents equal to pictures (scale 1,
    shift 0) every sample, edit and inpainting is the pixel model's, bit for bit, whatever the process."""
    config = {**config, "diffusion": {**config["diffusion"], "kind": kind}}
    on_identity, model, denoiser = identity_latents(config)
    domain = IdentityImages()
    assert latent_stage(domain, on_identity) is not domain
    request = SampleRequest(n=3, seed=2, steps=5)
    latent = generate(domain, model, on_identity, request)["x"]
    assert torch.equal(latent, generate(domain, denoiser, config, request)["x"])
    # The yardstick can fail: the other process draws other pictures from the same denoiser.
    other = {**config, "diffusion": {**config["diffusion"], "kind": "gaussian" if kind == "flow" else "flow"}}
    assert not torch.allclose(latent, generate(domain, denoiser, other, request)["x"], atol=1e-3)


def test_on_an_identity_autoencoder_inpainting_keeps_what_pixel_inpainting_keeps(config, tmp_path):
    on_identity, model, denoiser = identity_latents(config)
    domain = IdentityImages()
    picture = save(tmp_path / "in.png", np.arange(64).reshape(8, 8) * 4)
    keep = np.zeros((8, 8))
    keep[:, :3] = 255
    mask = save(tmp_path / "mask.png", keep)
    for request in (SampleRequest(n=2, seed=1, steps=4, init=str(picture), mask=str(mask)),
                    SampleRequest(n=2, seed=1, steps=4, init=str(picture), strength=0.5)):
        latent, pixel = generate(domain, model, on_identity, request), generate(domain, denoiser, config, request)
        assert torch.equal(latent["x"], pixel["x"])


def test_inpainting_on_latents_keeps_the_kept_pixels_exactly(domain, config, autoencoder_run, tmp_path):
    train(domain, on_latents(domain, config, autoencoder_run), out=tmp_path / "run", progress=False)
    model, saved = load_for_sampling(domain, tmp_path / "run")
    values = np.arange(64).reshape(8, 8) * 4
    picture = save(tmp_path / "in.png", values)
    keep = np.zeros((8, 8))
    keep[:, :4] = 255
    mask = save(tmp_path / "mask.png", keep)
    batch = generate(domain, model, saved, SampleRequest(n=2, seed=0, steps=4, init=str(picture), mask=str(mask)))
    pixels = ((batch["x"][:, 0] + 1) * 127.5).round().numpy()
    assert np.array_equal(pixels[:, :, :4], np.broadcast_to(values[:, :4], (2, 8, 4)))
    assert not np.array_equal(pixels[0, :, 4:], values[:, 4:])


@pytest.mark.slow
def test_two_processes_train_the_autoencoder_and_its_latent_diffusion_as_one_does(tmp_path):
    from run_checks import assert_same_weights, final_weights, train_in_subprocesses

    small = ["--domain", "image", "--steps", "4", "--batch-size", "16", "--set", "train.checkpoint_every=4",
             "--set", "train.preview_every=0", "--no-progress", "--device", "cpu"]
    stage = [*small, "--stage", "autoencoder", "--set", "data.image_size=8", "--set", "autoencoder.adversarial_weight=0.1",
             *(part for key, value in AUTOENCODER.items() for part in ("--set", f"autoencoder.{key}={value}"))]
    denoiser = ["--set", "model.base_channels=16", "--set", "model.channel_mults=[1,2]", "--set", "model.groups=4",
                "--set", "model.attention_resolutions=[]"]
    for processes, port in ((1, 0), (2, 29541)):
        train_in_subprocesses([*stage, "--out", str(tmp_path / f"ae{processes}")], processes, port, timeout=600)
    assert_same_weights(final_weights(tmp_path / "ae1"), final_weights(tmp_path / "ae2"), rtol=1e-4, atol=1e-5)
    for processes, port in ((1, 0), (2, 29543)):  # each encodes the data into a cache of its own
        train_in_subprocesses([*small, *denoiser, "--autoencoder", str(tmp_path / "ae1"), "--set",
                               f"data.cache_dir={tmp_path / f'cache{processes}'}", "--out",
                               str(tmp_path / f"latent{processes}")], processes, port, timeout=600)
    assert_same_weights(final_weights(tmp_path / "latent1"), final_weights(tmp_path / "latent2"), rtol=1e-4, atol=1e-5)
    # The two processes encoded a part each, and the main process joined them into one file.
    (alone,), (shared,) = (list((tmp_path / f"cache{processes}" / "image" / "latents").iterdir()) for processes in (1, 2))
    assert alone.name == shared.name
    torch.testing.assert_close(torch.from_numpy(np.load(shared)), torch.from_numpy(np.load(alone)), rtol=1e-5,
                               atol=1e-5)
