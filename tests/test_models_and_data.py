"""Model specs and data sources beyond the defaults, on small data the tests make."""

import numpy as np
import pytest
import torch
from conftest import fails
from PIL import Image

from kdexport.data import labeled_subset, load_splits
from kdexport.errors import KdxError
from kdexport.modalities.inputs import read_all
from kdexport.zoo import create_model, load_checkpoint

FACTORY = """
import torch
def make(num_classes=10, in_channels=1):
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(in_channels * 64, num_classes))
def broken():
    raise ValueError("boom")
not_callable = 3
"""


def test_user_factory_with_checkpoint(tmp_path):
    (tmp_path / "mine.py").write_text(FACTORY)
    spec = f"{tmp_path / 'mine.py'}:make"
    model = create_model(spec, 10, 1)
    torch.save(model.state_dict(), tmp_path / "w.pt")
    again = load_checkpoint(create_model(spec, 10, 1), tmp_path / "w.pt", spec)
    x = torch.rand(2, 1, 8, 8)
    assert torch.equal(model(x), again(x))
    with pytest.raises(KdxError, match="does not fit"):
        load_checkpoint(create_model(spec, 3, 1), tmp_path / "w.pt", spec)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("broken", "importing|factory"),
        ("not_callable", "no callable 'not_callable'"),
        ("nope", "no callable"),
    ],
)
def test_user_factory_errors(tmp_path, name, message):
    (tmp_path / "mine.py").write_text(FACTORY)
    with pytest.raises(KdxError, match=message):
        create_model(f"{tmp_path / 'mine.py'}:{name}", 10, 1)


def test_full_pickle_is_refused(tmp_path):
    torch.save(torch.nn.Linear(2, 2), tmp_path / "full.pt")  # a pickled module, not weights
    with pytest.raises(KdxError, match="not a readable weights-only state_dict"):
        load_checkpoint(torch.nn.Linear(2, 2), tmp_path / "full.pt", "x")


def test_npz_source(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.random((60, 1, 8, 8), dtype=np.float32)
    y = np.repeat(np.arange(3), 20)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    splits = load_splits(source=str(tmp_path / "d.npz"))
    assert splits.num_classes == 3
    assert len(splits.y_train) + len(splits.y_val) + len(splits.y_test) == 60
    assert splits.fingerprint() == load_splits(source=str(tmp_path / "d.npz")).fingerprint()


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"x": np.zeros((4, 8, 8)), "y": np.zeros(4, int)}, "must be \\(N, C, H, W\\)"),
        ({"x": np.full((4, 1, 8, 8), np.nan), "y": np.zeros(4, int)}, "NaN"),
        ({"x": np.zeros((4, 1, 8, 8)), "y": np.full(4, -1)}, "integer class ids"),
        ({"x": np.zeros((4, 1, 8, 8)), "y": np.zeros(4)}, "integer class ids"),
        ({"x": np.zeros((4, 1, 8, 8))}, "has no labels"),
        ({"a": np.zeros(3)}, "needs an array named 'x'"),
    ],
)
def test_bad_npz(tmp_path, arrays, message):
    np.savez(tmp_path / "d.npz", **arrays)
    with pytest.raises(KdxError, match=message):
        load_splits(source=str(tmp_path / "d.npz"))


def test_digits_split_is_fixed():
    a, b = load_splits(), load_splits()
    assert a.fingerprint() == b.fingerprint()
    assert a.input_shape == (1, 8, 8) and a.num_classes == 10
    assert len(a.y_test) >= 256  # parity runs on at least 256 held-out samples


def _png(path, value: int, size=(8, 8), mode="L"):
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.full((*size, 3) if mode == "RGB" else size, value, np.uint8)
    Image.fromarray(pixels, mode).save(path)


def _image_folder(root, per_class=6, classes=("cat", "dog", "owl")):
    for c, name in enumerate(classes):
        for i in range(per_class):
            _png(root / name / f"{i}.png", 40 * c + i)
    return root


def test_image_folder_with_resize_and_normalisation(tmp_path):
    root = _image_folder(tmp_path / "imgs")
    _png(root / "owl" / "big.png", 200, size=(16, 12))
    splits = load_splits(source=str(root), image_size=[8, 8], mean=[0.5], std=[0.25])
    assert splits.labels == ["cat", "dog", "owl"]
    assert splits.input_shape == (1, 8, 8)
    assert len(splits.y_train) + len(splits.y_val) + len(splits.y_test) == 19
    assert splits.preprocessing["resize"] == [8, 8] and splits.preprocessing["mean"] == [0.5]
    x = np.concatenate([x.head(len(x)) for x in (splits.x_train, splits.x_val, splits.x_test)])
    assert x.min() == pytest.approx((0 / 255 - 0.5) / 0.25)  # pixel 0 of "cat/0.png"


def test_image_folder_rgb(tmp_path):
    for c in ("a", "b"):
        for i in range(6):
            _png(tmp_path / c / f"{i}.jpg", 10 * i, mode="RGB")
    splits = load_splits(source=str(tmp_path), image_mode="RGB")
    assert splits.input_shape == (3, 8, 8)


def test_image_folder_errors(tmp_path):
    (tmp_path / "empty" / "cat").mkdir(parents=True)
    with pytest.raises(KdxError, match="no images in class sub-folders"):
        load_splits(source=str(tmp_path / "empty"))
    root = _image_folder(tmp_path / "imgs")
    (root / "bird").mkdir()
    with pytest.raises(KdxError, match="class folder 'bird' holds no images"):
        load_splits(source=str(root))
    (root / "bird").rmdir()
    # Nothing is decoded to split: an image's own faults are named when it is read.
    _png(root / "cat" / "wide.png", 1, size=(8, 12))
    with pytest.raises(KdxError, match=r"wide.png: read as \(1, 8, 12\).*set data.image_size"):
        _read_every_split(load_splits(source=str(root), workers=0))
    (root / "cat" / "wide.png").write_bytes(b"not a png")
    with pytest.raises(KdxError, match="wide.png: not a readable image"):
        _read_every_split(load_splits(source=str(root), workers=2))


def _read_every_split(splits) -> None:
    for x in (splits.x_train, splits.x_val, splits.x_test):
        list(read_all(x))


FACTORY_DATA = """
import torch
class Digits(torch.utils.data.Dataset):
    def __init__(self, labeled=True):
        self.labeled = labeled
    def __len__(self):
        return 30
    def __getitem__(self, i):
        x = torch.full((1, 8, 8), float(i % 3))
        return (x, i % 3) if self.labeled else x
def labeled():
    return Digits()
def unlabeled():
    return Digits(labeled=False)
def ragged():
    return [(torch.zeros(1, 8, 8), 0), (torch.zeros(1, 4, 4), 1)]
def flat():
    return [(torch.zeros(64), 0)]
"""


def test_dataset_factory_and_unlabeled_transfer(tmp_path):
    (tmp_path / "ds.py").write_text(FACTORY_DATA)
    spec = f"{tmp_path / 'ds.py'}"
    splits = load_splits(source=f"{spec}:labeled", transfer=f"{spec}:unlabeled")
    assert splits.num_classes == 3 and splits.input_shape == (1, 8, 8)
    assert len(splits.x_transfer) == 30 and splits.x_transfer.item_shape == (1, 8, 8)
    assert splits.preprocessing["transfer"] == f"{spec}:unlabeled"
    with pytest.raises(KdxError, match="has no labels"):
        load_splits(source=f"{spec}:unlabeled")
    with pytest.raises(KdxError, match="inputs differ in shape"):
        load_splits(source=f"{spec}:ragged")
    with pytest.raises(KdxError, match=r"item 0 has shape \(64,\), not \(C, H, W\)"):
        load_splits(source=f"{spec}:flat")


def test_transfer_npz_without_labels_and_shape_check(tmp_path):
    np.savez(tmp_path / "u.npz", x=np.zeros((7, 1, 8, 8), np.float32))
    transfer = load_splits(transfer=str(tmp_path / "u.npz")).x_transfer
    assert len(transfer) == 7 and transfer.item_shape == (1, 8, 8)
    np.savez(tmp_path / "w.npz", x=np.zeros((7, 1, 4, 4), np.float32))
    with pytest.raises(KdxError, match=r"inputs \(1, 4, 4\) differ from the source's"):
        load_splits(transfer=str(tmp_path / "w.npz"))
    folder = tmp_path / "unlabeled"
    for i in range(3):
        _png(folder / "any" / "depth" / f"{i}.png", i)
    transfer = load_splits(transfer=str(folder)).x_transfer
    assert len(transfer) == 3 and transfer.head(3).shape == (3, 1, 8, 8)


def test_labels_out_of_range(tmp_path):
    x = np.zeros((30, 1, 8, 8), np.float32)
    np.savez(tmp_path / "d.npz", x=x, y=np.repeat(np.arange(3), 10))
    with pytest.raises(KdxError, match="label 2 is out of range for 2 classes"):
        load_splits(source=str(tmp_path / "d.npz"), num_classes=2)
    assert load_splits(source=str(tmp_path / "d.npz"), num_classes=5).num_classes == 5


def test_labeled_subset_is_stratified_and_fixed():
    y = np.repeat(np.arange(10), 50)
    keep = labeled_subset(y, 0.1, seed=0)
    assert keep.sum() == 50 and all(keep[y == c].sum() == 5 for c in range(10))
    assert (keep == labeled_subset(y, 0.1, seed=0)).all()
    assert labeled_subset(np.array([0, 1]), 0.1, seed=0).all()  # at least one label per class


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("nowhere/", "nowhere does not exist; use digits, an image folder, a .csv/.jsonl"),
        ("missing.npz", "missing.npz: no such file"),
        ("missing.py:make", "does not exist; give file.py:factory"),
    ],
)
def test_bad_sources(source, message):
    with pytest.raises(KdxError, match=message):
        load_splits(source=source)


def _no_images(tmp):
    (tmp / "imgs" / "cat").mkdir(parents=True)


def _unreadable(tmp):
    _image_folder(tmp / "imgs")
    (tmp / "imgs" / "cat" / "0.png").write_bytes(b"not a png")


@pytest.mark.parametrize(
    ("make", "message"),
    [(_no_images, "no images in class sub-folders"), (_unreadable, "0.png: not a readable image")],
)
def test_bad_image_folders_fail_in_one_line(tmp_path, make, message):
    make(tmp_path)
    out = tmp_path / "run"
    source = f"data.source='{tmp_path / 'imgs'}'"
    fails("distill-and-export", "--out", out, "--set", source, message=message)
    assert not (out / "teacher").exists()


def test_labels_out_of_range_fail_in_one_line(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.zeros((30, 1, 8, 8), np.float32), y=np.arange(30) % 12)
    sets = [f"data.source='{tmp_path / 'd.npz'}'", "data.num_classes=10"]
    args = [a for s in sets for a in ("--set", s)]
    fails(
        "train-teacher", tmp_path / "run", *args, message="label 11 is out of range for 10 classes"
    )
