"""The image data: the embedded digits and folders of PNG/JPEG/WebP files."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits as sklearn_digits

from diffkit_image.data import fit_image, load_digits, load_folder, to_pixels, to_unit_range

from image_helpers import gray, save


def test_digits_are_the_1797_scikit_learn_digits_as_ink_on_paper():
    images = load_digits(8, 1)
    reference = sklearn_digits()
    assert images.pixels.shape == (1797, 1, 8, 8) and images.pixels.dtype == torch.uint8
    assert images.labels.tolist() == reference.target.tolist()
    assert images.class_names == [str(i) for i in range(10)]
    # At the native size the pixels are the 0..16 ink values mapped to 255..0.
    expected = 255 - reference.images * 255 / 16
    assert np.abs(images.pixels[:, 0].numpy() - expected).max() <= 0.5


def test_digits_resized_keep_their_shape():
    small, large = load_digits(8, 1), load_digits(16, 3)
    assert large.pixels.shape == (1797, 3, 16, 16)
    assert torch.equal(large.pixels[:, 0], large.pixels[:, 2])  # gray in RGB
    # Averaging 2x2 blocks of the enlarged digit gives back roughly the original.
    pooled = torch.nn.functional.avg_pool2d(large.pixels[:100, :1].float(), 2)
    assert (pooled - small.pixels[:100].float()).abs().mean() < 12


def test_dataset_items_are_floats_in_the_unit_range_with_long_labels(domain, config):
    dataset = domain.build_dataset(config)
    item = dataset[5]
    assert item["x"].shape == (1, 8, 8) and item["x"].dtype == torch.float32
    assert -1 <= item["x"].min() and item["x"].max() <= 1
    assert item["cond"].dtype == torch.long and int(item["cond"]) == 5
    assert len(dataset) == 1797 and domain.build_dataset(config, "digits")[5]["cond"] == 5


def test_pixel_conversions_round_trip():
    pixels = torch.arange(256, dtype=torch.uint8)
    assert torch.equal(to_pixels(to_unit_range(pixels)), pixels)
    assert to_pixels(torch.tensor([-3.0, 3.0])).tolist() == [0, 255]


def test_fit_image_center_crops_the_long_side():
    # A 30x10 picture: black, white in the middle third. Fitting to 10x10 keeps only the middle.
    array = np.zeros((10, 30), dtype=np.uint8)
    array[:, 10:20] = 255
    fitted = fit_image(Image.fromarray(array), 10, 1)
    assert fitted.shape == (1, 10, 10) and fitted.min() >= 250
    tall = fit_image(Image.fromarray(array.T.copy()), 10, 1)
    assert tall.shape == (1, 10, 10) and tall.min() >= 250
    shrunk = fit_image(Image.fromarray(array.T.copy()), 5, 1)  # resampling blurs only the border rows
    assert shrunk.shape == (1, 5, 5) and shrunk[:, 1:4].min() >= 250 and shrunk.float().mean() > 240


def test_fit_image_composites_transparency_over_white_and_converts_channels():
    rgba = np.zeros((8, 8, 4), dtype=np.uint8)
    rgba[..., 0] = 255           # red where opaque
    rgba[:4, :, 3] = 255         # top half opaque, bottom half transparent
    fitted = fit_image(Image.fromarray(rgba), 8, 3)
    assert fitted[:, :4].permute(1, 2, 0).reshape(-1, 3).unique(dim=0).tolist() == [[255, 0, 0]]
    assert (fitted[:, 4:] == 255).all()
    as_gray = fit_image(Image.fromarray(rgba), 8, 1)
    assert as_gray.shape == (1, 8, 8) and (as_gray[:, 4:] == 255).all() and (as_gray[:, :4] < 100).all()
    with pytest.raises(ValueError, match="data.channels"):
        fit_image(Image.fromarray(rgba), 8, 2)


def make_folder(root):
    """Two classes in PNG (gray, palette, RGBA), JPEG and WebP, plus a nested file."""
    save(root / "cats" / "a.png", gray(0))
    save(root / "cats" / "b.jpg", gray(0), quality=95)
    save(root / "cats" / "deep" / "c.webp", gray(0), lossless=True)
    save(root / "dogs" / "d.png", gray(255), mode="P")
    rgba = np.zeros((12, 12, 4), dtype=np.uint8)
    rgba[..., 3] = 0  # fully transparent: white after compositing
    save(root / "dogs" / "e.png", rgba)
    (root / "notes.txt").parent.mkdir(parents=True, exist_ok=True)
    (root / "notes.txt").write_text("not a picture")
    return root


def test_folder_subfolders_become_classes(tmp_path):
    images = load_folder(make_folder(tmp_path / "pets"), 8, 1)
    assert images.class_names == ["cats", "dogs"]
    assert images.labels.tolist() == [0, 0, 0, 1, 1]
    assert images.pixels.shape == (5, 1, 8, 8)
    assert (images.pixels[:3] <= 5).all() and (images.pixels[3:] >= 250).all()


def test_folder_without_subfolders_is_one_class_named_after_it(tmp_path):
    save(tmp_path / "flowers" / "x.png", gray(10))
    save(tmp_path / "flowers" / "y.jpeg", gray(200))
    images = load_folder(tmp_path / "flowers", 4, 3)
    assert images.class_names == ["flowers"] and images.labels.tolist() == [0, 0]
    assert images.pixels.shape == (2, 3, 4, 4)


def test_unreadable_files_are_skipped_with_one_warning_naming_them(tmp_path):
    root = make_folder(tmp_path / "pets")
    (root / "dogs" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    (root / "cats" / "empty.jpg").write_bytes(b"")
    with pytest.warns(UserWarning) as caught:
        images = load_folder(root, 8, 1)
    messages = [str(w.message) for w in caught if "unreadable" in str(w.message)]
    assert len(messages) == 1
    assert "broken.png" in messages[0] and "empty.jpg" in messages[0] and "skipped 2" in messages[0]
    assert len(images.labels) == 5


def png_claiming(width: int, height: int) -> bytes:
    """A small, well-formed PNG whose header claims ``width x height`` gray pixels (its data does not
    hold them): what a decompression bomb looks like before it is decoded."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_every_undecodable_file_is_skipped_alike_and_the_cache_repeats_the_warning(tmp_path):
    root = make_folder(tmp_path / "pets")
    bomb = png_claiming(20_000, 20_000)
    assert len(bomb) < 300 and 20_000 * 20_000 > 2 * Image.MAX_IMAGE_PIXELS  # beyond PIL's limit
    (root / "dogs" / "bomb.png").write_bytes(bomb)
    (root / "dogs" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    (root / "cats" / "empty.jpg").write_bytes(b"")
    expected = (f"skipped 3 unreadable image file(s) in {str(root)!r}: cats/empty.jpg (UnidentifiedImageError), "
                "dogs/bomb.png (DecompressionBombError), dogs/broken.png (UnidentifiedImageError)")
    cache = tmp_path / "cache"
    for read in ("decoded", "from the cache"):
        with pytest.warns(UserWarning) as caught:
            images = load_folder(root, 8, 1, cache=cache)
        assert [str(w.message) for w in caught] == [expected], read
        assert len(images.labels) == 5
    assert len(stores(cache)) == 1


def stores(cache):
    return list((cache / "decoded").glob("*/store.json"))


def test_a_folder_with_nothing_readable_is_an_error(tmp_path):
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.png").write_bytes(b"garbage")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match="none of the 1 image files"):
            load_folder(tmp_path / "bad", 8, 1)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no png/jpg/jpeg/webp files"):
        load_folder(tmp_path / "empty", 8, 1)
    with pytest.raises(FileNotFoundError, match="missing"):
        load_folder(tmp_path / "missing", 8, 1)


def test_loose_files_beside_class_folders_are_ignored_with_a_warning(tmp_path):
    root = make_folder(tmp_path / "pets")
    save(root / "stray.png", gray(128))
    with pytest.warns(UserWarning, match="1 pictures directly in"):
        images = load_folder(root, 8, 1)
    assert len(images.labels) == 5


def test_decoded_folders_are_cached_and_a_changed_folder_is_decoded_again(tmp_path):
    root = make_folder(tmp_path / "pets")
    cache = tmp_path / "cache"
    first = load_folder(root, 8, 1, cache=cache)
    assert len(stores(cache)) == 1
    again = load_folder(root, 8, 1, cache=cache)
    assert torch.equal(first.pixels, again.pixels) and again.class_names == first.class_names
    save(root / "cats" / "a.png", gray(255))  # rewritten: size/mtime change the key
    os.utime(root / "cats" / "a.png", ns=(1, 1))
    changed = load_folder(root, 8, 1, cache=cache)
    assert changed.pixels[0].min() >= 250
    assert len(stores(cache)) == 2


def test_build_dataset_reads_a_folder_and_flips_when_asked(domain, config, tmp_path):
    root = tmp_path / "half"
    array = np.zeros((8, 8), dtype=np.uint8)
    array[:, 4:] = 255
    save(root / "a.png", array)
    config["data"]["hflip"] = True
    dataset = domain.build_dataset(config, str(root))
    torch.manual_seed(0)
    seen = {tuple(dataset[0]["x"][0, 0, [0, 7]].tolist()) for _ in range(20)}
    assert seen == {(-1.0, 1.0), (1.0, -1.0)}


def colour_folder(root, count: int, seed: int = 0):
    """``count`` random RGB pictures of 10x14 in three classes, and a damaged file."""
    rng = np.random.default_rng(seed)
    for index in range(count):
        save(root / f"class{index % 3}" / f"{index:04d}.png", rng.integers(0, 256, (10, 14, 3)))
    (root / "class1" / "9999.png").write_bytes(b"damaged")
    return root


def test_a_stored_folder_holds_what_each_file_decodes_to_in_file_order(tmp_path, monkeypatch):
    import diffkit_image.data as data

    root = colour_folder(tmp_path / "colours", 23)
    monkeypatch.setattr(data, "SHARD_PICTURES", 4)  # several shards, decoded by two processes
    monkeypatch.setattr("diffkit.kit.store.available_cpus", lambda: 2)
    with pytest.warns(UserWarning, match="skipped 1 unreadable"):
        stored = load_folder(root, 8, 3, cache=tmp_path / "cache")
    with pytest.warns(UserWarning, match="class1/9999.png"):
        in_memory = load_folder(root, 8, 3)
    files = sorted(root.rglob("0*.png"), key=lambda path: (path.parent.name, path.name))
    expected = torch.stack([fit_image(Image.open(path), 8, 3) for path in files])
    assert torch.equal(stored.pixels, expected) and torch.equal(in_memory.pixels, expected)
    assert stored.labels.tolist() == in_memory.labels.tolist() == [int(path.parent.name[-1]) for path in files]
    assert stored.store is not None and in_memory.store is None


def test_stored_pictures_are_mapped_from_the_cache_and_pickle_as_their_store(tmp_path, domain, config):
    import pickle

    root = colour_folder(tmp_path / "colours", 40)
    config["data"].update(channels=3, image_size=16, cache_dir=str(tmp_path / "cache"))
    with pytest.warns(UserWarning, match="unreadable"):
        dataset = domain.build_dataset(config, str(root))
    pixels = dataset.images.pixels
    store_file = dataset.images.store.folder / "pixels.npy"
    assert mapped_file(pixels.data_ptr()) == store_file
    payload = pickle.dumps(dataset)
    assert len(payload) < pixels.numel() // 4  # the store's folder travels, not the pixels
    copy = pickle.loads(payload)
    assert mapped_file(copy.images.pixels.data_ptr()) == store_file
    assert all(torch.equal(copy[i]["x"], dataset[i]["x"]) and copy[i]["cond"] == dataset[i]["cond"] for i in range(40))


def mapped_file(address: int):
    """The file mapped at ``address`` of this process (from /proc/self/maps), or None."""
    maps = Path("/proc/self/maps")
    if not maps.exists():
        pytest.skip("needs /proc/self/maps (Linux)")
    for line in maps.read_text().splitlines():
        span, _, _, _, _, *path = line.split(maxsplit=5)
        low, high = (int(bound, 16) for bound in span.split("-"))
        if low <= address < high:
            return Path(path[0]) if path and path[0].startswith("/") else None
    return None
