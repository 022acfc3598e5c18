"""The fixed train/validation/test split and the unlabeled transfer set, of any modality.

The run's modality (``data.modality``, ``kdexport.modalities``) reads each source; this module
splits what it read. The image sources, the default modality's:

Sources (``data.source``, and ``data.transfer`` for extra unlabeled inputs):

- ``digits``: scikit-learn's 8x8 handwritten digits (shipped inside scikit-learn; no download);
- ``path/to/file.npz``: arrays ``x`` (N, C, H, W) and ``y`` (N,) (``y`` may be left out of a
  transfer source);
- ``path/to/folder``: an image folder, one sub-folder per class holding PNG/JPEG files (a
  transfer folder: images anywhere below it, labels ignored), resized to ``image_size`` and
  read in ``image_mode`` (``L`` grey, ``RGB``), pixels scaled to 0..1;
- ``path/to/file.py:factory``: a function returning a torch ``Dataset`` whose items are
  ``(x, y)`` (or ``x`` alone for a transfer source), x a (C, H, W) tensor or array;

Text (``modality = "text"``): ``path/to/file.csv|.tsv|.jsonl`` with a ``text_column``, texts
(or text pairs) and labels tokenised by ``tokenizer``'s fast tokenizer (an ``hf:`` folder; the
pipeline gives the teacher's) and cached in ``cache_dir`` (``kdexport.modalities.text``).

Every source is read into memory once.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import numpy as np

from kdexport import modalities
from kdexport.errors import KdxError
from kdexport.modalities.contract import Source
from kdexport.options import OneOf, Range
from kdexport.recipe import keys_of


@dataclass
class Splits:
    """Train/val/test arrays: x float32 (N, C, H, W), y int64 (N,); unlabeled transfer inputs."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    labels: list[str]
    preprocessing: dict
    x_transfer: np.ndarray

    @property
    def modality(self) -> str:
        return self.preprocessing["modality"]

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
        if len(self.x_transfer):
            h.update(np.ascontiguousarray(self.x_transfer).tobytes())
        return h.hexdigest()[:16]


def _class_names(src: Source, num_classes: int, spec: str) -> list[str]:
    """The class names, after checking that every label is a class id in range."""
    if src.y is None:
        raise KdxError(f"data source '{spec}' has no labels; give 'y' (or use it as data.transfer)")
    if src.y.min() < 0:
        raise KdxError(
            f"data source '{spec}': labels must be integer class ids 0..K-1, found {src.y.min()}"
        )
    k = num_classes or len(src.labels or []) or int(src.y.max()) + 1
    if src.y.max() >= k:
        raise KdxError(
            f"data source '{spec}': label {src.y.max()} is out of range for {k} classes (data.num_classes); fix the labels or the class count"
        )
    if src.labels and len(src.labels) == k:
        return src.labels
    return [str(i) for i in range(k)]


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
    modality: Annotated[str, OneOf(tuple(modalities.MODALITIES))] = modalities.DEFAULT,
    source: str = "digits",
    transfer: str = "",
    num_classes: Annotated[int, Range(0)] = 0,
    val_fraction: Annotated[float, Range(0.0, 0.5, lo_open=True)] = 0.15,
    test_fraction: Annotated[float, Range(0.0, 0.5, lo_open=True)] = 0.2,
    seed: Annotated[int, Range(0)] = 0,
    cache_dir: str = "",
    **modality_options,
) -> Splits:
    """Read ``source`` as ``modality`` says, split it stratified by class with a fixed seed;
    read ``transfer``. ``num_classes`` 0 infers the count from the labels (or the class
    folders); ``cache_dir`` keeps what a modality caches (text: token ids). The modality's own
    keys (``modality_options``) are its ``options["data"]``'s."""
    kind = modalities.get(modality)
    own = keys_of(kind.options["data"]) if "data" in kind.options else {}
    # Each of the modality's keys, given or its default (another modality's keys: not this run's).
    options = {k: modality_options.get(k, default) for k, (_, default, _) in own.items()}
    kind.check_options(options)
    src = kind.read(source, options, True, Path(cache_dir or "cache"))
    labels = _class_names(src, num_classes, source)
    if src.x.dtype.kind == "f" and not np.isfinite(src.x).all():
        raise KdxError(
            f"data source '{source}': x holds NaN or infinite values; clean the data first"
        )
    pre = {"modality": modality, **src.preprocessing}
    x_transfer = np.empty((0, *src.x.shape[1:]), src.x.dtype)
    if transfer:
        x_transfer = kind.read(transfer, options, False, Path(cache_dir or "cache")).x
        if x_transfer.shape[1:] != src.x.shape[1:]:
            raise KdxError(
                f"data.transfer '{transfer}': inputs {x_transfer.shape[1:]} differ from the source's {src.x.shape[1:]}; give inputs of the same shape"
            )
        pre["transfer"] = transfer
    train, val, test = _stratified_split(src.y, (val_fraction, test_fraction), seed)
    y, x = src.y.astype(np.int64), src.x
    return Splits(x[train], y[train], x[val], y[val], x[test], y[test], labels, pre, x_transfer)


def labeled_subset(y: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """A stratified boolean mask keeping ``fraction`` of each class's labels (at least one)."""
    rng = np.random.default_rng(seed)
    keep = np.zeros(len(y), bool)
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        keep[rng.choice(idx, max(1, round(fraction * len(idx))), replace=False)] = True
    return keep
