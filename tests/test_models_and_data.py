"""Model specs and data sources beyond the defaults, on small data the tests make."""

import numpy as np
import pytest
import torch

from kdexport.data import load_splits
from kdexport.errors import KdxError
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
        ({"a": np.zeros(3)}, "needs arrays named 'x' and 'y'"),
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
