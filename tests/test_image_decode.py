"""One image decoder for training and devices (``runner.decode_image``, issue 21): EXIF
orientation, 16-bit and CMYK files, and a truncated JPEG among good ones as one line."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from kdexport.bundle import runner
from kdexport.data import load_splits
from kdexport.errors import KdxError
from kdexport.modalities.image import IMAGE
from kdexport.modalities.inputs import read_all

EXIF_ORIENTATION = 0x0112


def _marked(width: int = 20, height: int = 10) -> Image.Image:
    """An RGB image whose top-left corner is white and the rest dark."""
    a = np.full((height, width, 3), 30, np.uint8)
    a[:3, :3] = 255
    return Image.fromarray(a)


def test_exif_orientation_is_applied(tmp_path):
    path = tmp_path / "portrait.jpg"
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6  # stored landscape, shown rotated 90 degrees clockwise
    _marked().save(path, exif=exif, quality=95)
    x = runner.decode_image(path, "RGB", None)
    assert x.shape == (20, 10, 3)  # height and width as the photo is shown
    assert x[:3, -3:].mean() > 200 and x[-3:, :3].mean() < 80  # the corner went top-right


def test_16_bit_images_are_scaled_to_8_bits(tmp_path):
    path = tmp_path / "deep.png"
    ramp = np.linspace(0, 65535, 64, dtype=np.uint16).reshape(8, 8)
    Image.fromarray(ramp).save(path)  # saved as a 16-bit PNG
    with Image.open(path) as img:
        assert img.mode.startswith("I")
    x = runner.decode_image(path, "L", None)[:, :, 0]
    np.testing.assert_array_equal(x, np.round(ramp / 257).astype(np.uint8))
    assert runner.decode_image(path, "RGB", None).shape == (8, 8, 3)


def test_cmyk_and_grey_files_join_an_rgb_set(tmp_path):
    _marked().convert("CMYK").save(tmp_path / "print.jpg")
    _marked().convert("L").save(tmp_path / "grey.png")
    for name in ("print.jpg", "grey.png"):
        assert runner.decode_image(tmp_path / name, "RGB", (6, 12)).shape == (6, 12, 3)


def test_the_host_reads_images_as_run_py_does(tmp_path):
    """Training's reader (an image folder) and the bundle's give the same pixels: one decoder,
    the same bilinear resize (run.py resized with Pillow's default, bicubic, before)."""
    folder = tmp_path / "data" / "a"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (37, 53, 3), np.uint8)).save(folder / "x.png")
    host = IMAGE.read(str(tmp_path / "data"), _options([16, 24]), True, tmp_path).x.take([0])[0]
    spec = {"name": "input", "dtype": "float32", "shape": ["batch", 3, 16, 24]}
    device = runner.load_input(folder / "x.png", spec, {"image_scale": 1 / 255})[0]
    np.testing.assert_allclose(host, device, atol=1e-6)  # x / 255 against x * (1 / 255)
    np.testing.assert_array_equal(np.round(host * 255), np.round(device * 255))


def test_a_truncated_jpeg_among_good_ones_is_one_line_naming_it(tmp_path):
    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        for i in range(6):
            _marked().save(tmp_path / c / f"{i}.jpg")
    whole = (tmp_path / "b" / "5.jpg").read_bytes()
    (tmp_path / "b" / "5.jpg").write_bytes(whole[: len(whole) // 2])
    # Nothing is decoded to split: the file is named when a split reads it.
    splits = load_splits(source=str(tmp_path), image_size=[8, 8], image_mode="RGB", workers=0)
    with pytest.raises(KdxError, match=r"5\.jpg: not a readable image .*remove or replace it"):
        for x in (splits.x_train, splits.x_val, splits.x_test):
            list(read_all(x))
    # Asked for, unreadable files are skipped and counted in the record.
    splits = load_splits(
        source=str(tmp_path), image_size=[8, 8], image_mode="RGB", skip_unreadable=True
    )
    assert len(splits.y_train) + len(splits.y_val) + len(splits.y_test) == 11
    skipped = splits.preprocessing["skipped_unreadable"]
    assert skipped["count"] == 1 and skipped["first"][0].endswith("5.jpg")


def _options(size, **given) -> dict:
    """An image source's options as ``load_splits`` completes them."""
    return {
        "image_size": size,
        "image_mode": "RGB",
        "mean": [],
        "std": [],
        "crop_fraction": 0.0,
        "crop_scale": [0.08, 1.0],
        "workers": 0,
        "skip_unreadable": False,
        **given,
    }
