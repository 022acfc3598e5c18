"""Data sources and the fixed train/validation/test split.

Sources: ``digits`` (scikit-learn's 8x8 handwritten digits, shipped inside scikit-learn, so
nothing is downloaded) and ``path/to/file.npz`` holding ``x`` (N, C, H, W) and ``y`` (N,) arrays.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import numpy as np

from kdexport.errors import KdxError
from kdexport.recipe import Range


@dataclass
class Splits:
    """Train/val/test arrays: x float32 (N, C, H, W), y int64 (N,)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    labels: list[str]
    preprocessing: dict = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    def fingerprint(self) -> str:
        """A hash of every array: two runs with the same fingerprint saw the same data."""
        h = hashlib.sha256()
        for a in (self.x_train, self.y_train, self.x_val, self.y_val, self.x_test, self.y_test):
            h.update(np.ascontiguousarray(a).tobytes())
        return h.hexdigest()[:16]


def _digits() -> tuple[np.ndarray, np.ndarray, list[str], dict]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images.astype(np.float32) / 16.0)[:, None, :, :]
    labels = [str(c) for c in d.target_names]
    pre = {"layout": "NCHW", "scale": 1 / 16, "source": "sklearn.datasets.load_digits"}
    return x, d.target.astype(np.int64), labels, pre


def _npz(path: Path) -> tuple[np.ndarray, np.ndarray, list[str], dict]:
    if not path.is_file():
        raise KdxError(f"data source {path}: no such file; give an existing .npz or 'digits'")
    try:
        with np.load(path, allow_pickle=False) as f:
            x, y = f["x"], f["y"]
    except KeyError:
        raise KdxError(f"{path}: needs arrays named 'x' and 'y'") from None
    except (OSError, ValueError) as e:
        raise KdxError(f"{path}: not a readable .npz ({e})") from None
    if x.ndim != 4 or y.ndim != 1 or len(x) != len(y):
        raise KdxError(
            f"{path}: x must be (N, C, H, W) and y (N,), got {x.shape} and {y.shape}; reshape them"
        )
    if not np.isfinite(x).all():
        raise KdxError(f"{path}: x holds NaN or infinite values; clean the data first")
    if not np.issubdtype(y.dtype, np.integer) or y.min() < 0:
        raise KdxError(f"{path}: y must hold integer class ids 0..K-1")
    labels = [str(i) for i in range(int(y.max()) + 1)]
    return x.astype(np.float32), y.astype(np.int64), labels, {"layout": "NCHW", "source": str(path)}


def _stratified_split(y: np.ndarray, fractions: tuple[float, float], seed: int):
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(y))
    val_f, test_f = fractions
    try:
        rest, test = train_test_split(idx, test_size=test_f, random_state=seed, stratify=y)
        train, val = train_test_split(
            rest, test_size=val_f / (1 - test_f), random_state=seed, stratify=y[rest]
        )
    except ValueError as e:
        raise KdxError(f"cannot split the data ({e}); give more samples per class") from None
    return train, val, test


def load_splits(
    *,
    source: str = "digits",
    val_fraction: Annotated[float, Range(0.0, 0.5, lo_open=True)] = 0.15,
    test_fraction: Annotated[float, Range(0.0, 0.5, lo_open=True)] = 0.2,
    seed: Annotated[int, Range(0)] = 0,
) -> Splits:
    """Load ``source`` and split it, stratified by class, with a fixed seed."""
    x, y, labels, pre = _digits() if source == "digits" else _npz(Path(source))
    train, val, test = _stratified_split(y, (val_fraction, test_fraction), seed)
    return Splits(x[train], y[train], x[val], y[val], x[test], y[test], labels, pre)
