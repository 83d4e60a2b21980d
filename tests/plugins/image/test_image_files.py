"""Writing samples as PNGs and grids, and reading pictures and masks for editing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from diffkit_image.files import GRID_MIN_TILE, grid_columns, make_grid, read_images, read_known, write_images

from image_helpers import gray, save


def pictures(n: int, channels: int = 1, size: int = 8) -> torch.Tensor:
    """Distinct pictures: sample i is a constant gray level plus a bright top-left pixel."""
    x = torch.linspace(-1, 0.5, n)[:, None, None, None].expand(n, channels, size, size).clone()
    x[:, :, 0, 0] = 1.0
    return x


@pytest.mark.parametrize("channels,mode", [(1, "L"), (3, "RGB")])
def test_samples_round_trip_through_png(tmp_path, channels, mode):
    x = pictures(5, channels)
    written = write_images(x, tmp_path / "out")
    names = [o.path.name for o in written]
    assert names == [f"sample-{i:05d}.png" for i in range(5)] + ["grid.png"]
    for path, expected in zip(written, x):
        with Image.open(path) as image:
            assert image.mode == mode and image.size == (8, 8)
            array = torch.from_numpy(np.asarray(image).copy()).reshape(8, 8, channels).permute(2, 0, 1)
        assert (array.float() / 127.5 - 1 - expected).abs().max() <= 1 / 127.5
    reread = read_images(tmp_path / "out", 8, channels)
    assert reread.shape == (5, channels, 8, 8)  # the grid is not read back as a sample


def test_the_grid_holds_every_sample_enlarged(tmp_path):
    x = pictures(12)
    grid = make_grid(x, padding=1)
    zoom = GRID_MIN_TILE // 8
    columns = grid_columns(12)
    rows = -(-12 // columns)
    assert grid.shape == (1, rows * (8 * zoom + 1) + 1, columns * (8 * zoom + 1) + 1)
    # Tile 5 sits in row 1, column 1 (4 columns): its enlarged content equals sample 5.
    top, left = 1 + (5 // columns) * (8 * zoom + 1), 1 + (5 % columns) * (8 * zoom + 1)
    tile = grid[:, top:top + 8 * zoom, left:left + 8 * zoom]
    assert torch.equal(tile[:, ::zoom, ::zoom], x[5])


def test_grids_show_at_most_the_first_256_samples_and_nothing_is_refused(tmp_path):
    (path,) = write_images(torch.zeros(300, 1, 4, 4), tmp_path / "many.png")
    with Image.open(path) as image:
        assert image.size == (16 * (GRID_MIN_TILE + 1) + 1,) * 2
    with pytest.raises(ValueError, match="no samples"):
        write_images(torch.zeros(0, 1, 4, 4), tmp_path / "none")


def test_short_strips_are_one_row():
    assert grid_columns(7) == 7 and grid_columns(10) == 10 and grid_columns(16) == 4 and grid_columns(17) == 5


def test_a_png_path_gets_only_a_grid_and_is_never_overwritten(tmp_path):
    written = write_images(pictures(3), tmp_path / "strip.png")
    assert [(o.path, o.kind, o.role) for o in written] == [(tmp_path / "strip.png", "image", "overview")]
    with Image.open(written[0].path) as image:
        assert image.size == (3 * (GRID_MIN_TILE + 1) + 1, GRID_MIN_TILE + 2)
    with pytest.raises(FileExistsError, match="strip.png"):
        write_images(pictures(3), tmp_path / "strip.png")


def test_writing_again_into_a_folder_is_refused_and_changes_nothing(tmp_path):
    first = [output.path for output in write_images(pictures(2), tmp_path / "out")]
    before = {p: p.read_bytes() for p in first}
    with pytest.raises(FileExistsError, match="sample-00000.png.*never overwritten"):
        write_images(pictures(3), tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["grid.png", "sample-00000.png", "sample-00001.png"]
    assert all(p.read_bytes() == content for p, content in before.items())


def test_other_picture_suffixes_are_refused(tmp_path):
    with pytest.raises(ValueError, match="folder or a .png grid"):
        write_images(pictures(2), tmp_path / "out.jpg")
    # A dotted folder name is still a folder.
    assert write_images(pictures(1), tmp_path / "run.v2")[0].path.parent == tmp_path / "run.v2"


def test_read_known_fits_the_picture_and_reads_white_as_keep(tmp_path):
    picture = np.zeros((8, 8), dtype=np.uint8)
    picture[:, 4:] = 255
    mask = np.zeros((16, 16), dtype=np.uint8)  # a larger mask is scaled with hard edges
    mask[:8] = 255  # keep the top half
    x, keep = read_known(str(save(tmp_path / "p.png", picture)), str(save(tmp_path / "m.png", mask)), 8, 1)
    assert x.shape == (1, 8, 8) and keep.shape == (1, 8, 8)
    assert torch.equal(x[0, :, :4], torch.full((8, 4), -1.0)) and torch.equal(x[0, :, 4:], torch.ones(8, 4))
    assert torch.equal(keep[0, :4], torch.ones(4, 8)) and torch.equal(keep[0, 4:], torch.zeros(4, 8))
    x, keep = read_known(str(tmp_path / "p.png"), None, 8, 3)
    assert x.shape == (3, 8, 8) and keep is None


def test_read_known_names_bad_inputs(tmp_path):
    with pytest.raises(FileNotFoundError, match="--init"):
        read_known(str(tmp_path / "nope.png"), None, 8, 1)
    (tmp_path / "bad.png").write_bytes(b"nope")
    good = save(tmp_path / "good.png", gray(0))
    with pytest.raises(ValueError, match="--mask"):
        read_known(str(good), str(tmp_path / "bad.png"), 8, 1)
