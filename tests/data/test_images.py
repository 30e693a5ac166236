"""load_rgb: every image mode becomes the documented 8-bit RGB pixels; bad files raise DmlrsError."""
import numpy as np
import pytest
import torch
from PIL import Image

from dmlrs.data.images import load_rgb
from dmlrs.errors import DmlrsError


def _pixels(image):
    """{(x, y): (r, g, b)} read with explicit loops."""
    assert image.mode == "RGB"
    return {(x, y): image.getpixel((x, y)) for y in range(image.height) for x in range(image.width)}


def _save(tmp_path, image, name):
    path = tmp_path / name
    image.save(path)
    return path


def _image(mode, values, size=(3, 2)):
    """Image of ``mode`` whose pixels, row by row, are ``values``."""
    image = Image.new(mode, size)
    image.putdata(values)
    return image


def test_rgb_is_unchanged(tmp_path):
    values = [(0, 0, 0), (255, 0, 10), (1, 2, 3), (200, 100, 50), (255, 255, 255), (7, 8, 9)]
    loaded = load_rgb(_save(tmp_path, _image("RGB", values), "a.png"))
    assert [_pixels(loaded)[(i % 3, i // 3)] for i in range(6)] == values


def test_grayscale_is_repeated(tmp_path):
    values = [0, 1, 127, 128, 254, 255]
    path = _save(tmp_path, _image("L", values), "gray.png")
    assert Image.open(path).mode == "L"
    got = _pixels(load_rgb(path))
    for i, v in enumerate(values):
        assert got[(i % 3, i // 3)] == (v, v, v)


def test_one_bit_is_black_or_white(tmp_path):
    values = [0, 1, 1, 0, 0, 1]
    path = _save(tmp_path, _image("1", values), "bits.png")
    assert Image.open(path).mode == "1"
    got = _pixels(load_rgb(path))
    for i, v in enumerate(values):
        assert got[(i % 3, i // 3)] == ((255,) * 3 if v else (0,) * 3)


def test_palette_is_looked_up(tmp_path):
    palette = [(10, 20, 30), (200, 0, 100), (0, 255, 1)]
    image = _image("P", [0, 1, 2, 2, 1, 0])
    image.putpalette([c for colour in palette for c in colour])
    image.info["transparency"] = 1  # transparency is ignored: colours stay as in the palette
    path = _save(tmp_path, image, "pal.png")
    assert Image.open(path).mode == "P"
    got = _pixels(load_rgb(path))
    for i, index in enumerate([0, 1, 2, 2, 1, 0]):
        assert got[(i % 3, i // 3)] == palette[index]


def test_palette_with_alpha_drops_alpha(tmp_path):
    palette = [(10, 20, 30), (200, 0, 100)]
    image = _image("PA", [(0, 0), (1, 255), (1, 7), (0, 128), (1, 0), (0, 255)])
    image.putpalette([c for colour in palette for c in colour])
    path = _save(tmp_path, image, "pa.tif")
    assert Image.open(path).mode == "PA"
    got = _pixels(load_rgb(path))
    for i, index in enumerate([0, 1, 1, 0, 1, 0]):
        assert got[(i % 3, i // 3)] == palette[index]


def test_rgba_drops_alpha_without_blending(tmp_path):
    values = [(10, 20, 30, 0), (40, 50, 60, 255), (70, 80, 90, 128), (1, 2, 3, 4), (255, 0, 0, 0), (0, 0, 0, 0)]
    path = _save(tmp_path, _image("RGBA", values), "rgba.png")
    got = _pixels(load_rgb(path))
    for i, (r, g, b, _alpha) in enumerate(values):
        assert got[(i % 3, i // 3)] == (r, g, b)


def test_gray_alpha_drops_alpha(tmp_path):
    values = [(0, 0), (100, 255), (200, 3), (255, 0), (9, 9), (50, 128)]
    path = _save(tmp_path, _image("LA", values), "la.png")
    assert Image.open(path).mode == "LA"
    got = _pixels(load_rgb(path))
    for i, (grey, _alpha) in enumerate(values):
        assert got[(i % 3, i // 3)] == (grey, grey, grey)


def test_sixteen_bit_keeps_the_high_byte(tmp_path):
    values = [0, 255, 256, 1234, 40000, 65535]
    path = _save(tmp_path, Image.fromarray(np.array(values, dtype=np.uint16).reshape(2, 3)), "g16.png")
    assert Image.open(path).mode.startswith("I;16")
    got = _pixels(load_rgb(path))
    for i, v in enumerate(values):
        assert got[(i % 3, i // 3)] == (v // 256,) * 3


def test_32_bit_integers_are_clipped_to_16_bit_then_high_byte(tmp_path):
    values = [-5, 0, 511, 65535, 70000, 2**31 - 1]
    path = _save(tmp_path, Image.fromarray(np.array(values, dtype=np.int32).reshape(2, 3)), "i32.tif")
    assert Image.open(path).mode == "I"
    got = _pixels(load_rgb(path))
    for i, v in enumerate(values):
        clipped = min(max(v, 0), 65535)
        assert got[(i % 3, i // 3)] == (clipped // 256,) * 3


def test_cmyk_follows_subtractive_formula(tmp_path):
    values = [(0, 0, 0, 0), (255, 0, 0, 0), (0, 0, 0, 255), (100, 50, 0, 30), (10, 200, 90, 0), (0, 0, 255, 128)]
    path = _save(tmp_path, _image("CMYK", values), "cmyk.tif")
    assert Image.open(path).mode == "CMYK"
    got = _pixels(load_rgb(path))
    for i, (c, m, y, k) in enumerate(values):
        expected = [(255 - ink) * (255 - k) / 255 for ink in (c, m, y)]
        assert all(abs(g - e) <= 1 for g, e in zip(got[(i % 3, i // 3)], expected))


def test_result_does_not_keep_the_file_open(tmp_path):
    path = _save(tmp_path, _image("L", [5] * 6), "x.png")
    loaded = load_rgb(path)
    path.unlink()
    assert np.asarray(loaded).shape == (2, 3, 3)


def _truncated_jpeg(tmp_path):
    path = _save(tmp_path, Image.fromarray(np.full((32, 32, 3), 90, np.uint8)), "cut.jpg")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


@pytest.mark.parametrize("make", [
    lambda tmp: _truncated_jpeg(tmp),
    lambda tmp: (tmp / "text.jpg", (tmp / "text.jpg").write_text("not an image"))[0],
    lambda tmp: (tmp / "empty.png", (tmp / "empty.png").write_bytes(b""))[0],
    lambda tmp: tmp / "missing.png",
], ids=["truncated", "not-an-image", "empty", "missing"])
def test_bad_file_raises_dmlrs_error_naming_it(tmp_path, make):
    path = make(tmp_path)
    with pytest.raises(DmlrsError) as info:
        load_rgb(path)
    message = str(info.value)
    assert str(path) in message
    assert "--skip-corrupt" in message and "python -m dmlrs.data" in message


class _Files(torch.utils.data.Dataset):
    def __init__(self, paths):
        self.paths = paths

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        return torch.from_numpy(np.asarray(load_rgb(self.paths[i])).copy())


def test_same_pixels_in_dataloader_workers(tmp_path):
    rng = np.random.default_rng(0)
    paths = [_save(tmp_path, Image.fromarray(rng.integers(0, 256, (4, 4), dtype=np.uint8)), f"{i}.png")
             for i in range(4)]
    in_process = list(torch.utils.data.DataLoader(_Files(paths), batch_size=2))
    in_workers = list(torch.utils.data.DataLoader(_Files(paths), batch_size=2, num_workers=2))
    assert all(torch.equal(a, b) for a, b in zip(in_process, in_workers))
    assert in_workers[0].shape == (2, 4, 4, 3)
