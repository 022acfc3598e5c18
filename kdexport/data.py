"""The fixed train/validation/test split and the unlabeled transfer set, of any modality.

The run's modality (``data.modality``, ``kdexport.modalities``) reads each source into
``Inputs`` (``kdexport.modalities.inputs``): held in memory where the source is one array
(scikit-learn's digits, ``.npz``, text's token ids), streamed where it is files (image folders,
manifests, shards, memory-mapped ``.npy``, speech clips): a listing whose items are decoded in
``workers`` DataLoader processes while training. This module splits what was read, stratified
by class, seeded, from the labels alone: nothing is decoded to split. See each modality's
module for its sources (``kdexport.modalities.image``, ``.text``, ``.speech``).
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
from kdexport.modalities.inputs import ArrayInputs, Inputs, default_workers
from kdexport.options import OneOf, Range
from kdexport.recipe import keys_of


@dataclass
class Splits:
    """Train/val/test inputs (in memory or streamed) and labels y int64 (N,); unlabeled
    transfer inputs."""

    x_train: Inputs
    y_train: np.ndarray
    x_val: Inputs
    y_val: np.ndarray
    x_test: Inputs
    y_test: np.ndarray
    labels: list[str]
    preprocessing: dict
    x_transfer: Inputs

    @property
    def modality(self) -> str:
        return self.preprocessing["modality"]

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.x_train.item_shape

    def fingerprint(self) -> str:
        """A hash of every split's inputs (their identity: arrays by content, streamed inputs by
        listing and file stamps) and labels: two runs with the same fingerprint saw the same data."""
        h = hashlib.sha256()
        for x, y in (
            (self.x_train, self.y_train),
            (self.x_val, self.y_val),
            (self.x_test, self.y_test),
        ):
            h.update(x.identity().encode())
            h.update(np.ascontiguousarray(y).tobytes())
        if len(self.x_transfer):
            h.update(self.x_transfer.identity().encode())
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
    workers: Annotated[int, Range(-1, 256)] = -1,
    skip_unreadable: bool = False,
    **modality_options,
) -> Splits:
    """Read ``source`` as ``modality`` says, split it stratified by class with a fixed seed;
    read ``transfer``. ``num_classes`` 0 infers the count from the labels (or the class
    folders); ``cache_dir`` keeps what a modality caches (text: token ids). ``workers``: the
    DataLoader processes that decode streamed inputs (-1: the CPUs this process may use, less
    one; 0: none, decoded in the training process). ``skip_unreadable``: files that cannot be
    read are skipped and counted in the record (one pass over the files when reading) instead
    of stopping the run with their name. The modality's own keys (``modality_options``) are
    its ``options["data"]``'s."""
    kind = modalities.get(modality)
    own = keys_of(kind.options["data"]) if "data" in kind.options else {}
    # Each of the modality's keys, given or its default (another modality's keys: not this run's).
    options = {k: modality_options.get(k, default) for k, (_, default, _) in own.items()}
    kind.check_options(options)
    options["workers"] = default_workers() if workers < 0 else workers
    options["skip_unreadable"] = skip_unreadable
    src = kind.read(source, options, True, Path(cache_dir or "cache"))
    labels = _class_names(src, num_classes, source)
    held = src.x.array if isinstance(src.x, ArrayInputs) else None
    if held is not None and held.dtype.kind == "f" and not np.isfinite(held).all():
        raise KdxError(
            f"data source '{source}': x holds NaN or infinite values; clean the data first"
        )
    pre = {"modality": modality, **src.preprocessing}
    x_transfer = src.x.subset(np.arange(0))
    if transfer:
        x_transfer = kind.read(transfer, options, False, Path(cache_dir or "cache")).x
        if x_transfer.item_shape != src.x.item_shape:
            raise KdxError(
                f"data.transfer '{transfer}': inputs {x_transfer.item_shape} differ from the source's {src.x.item_shape}; give inputs of the same shape"
            )
        pre["transfer"] = transfer
    train, val, test = _stratified_split(src.y, (val_fraction, test_fraction), seed)
    y, x = src.y.astype(np.int64), src.x
    return Splits(
        x.subset(train),
        y[train],
        x.subset(val),
        y[val],
        x.subset(test),
        y[test],
        labels,
        pre,
        x_transfer,
    )


# [data] keys that change how fast the data is read, never what is read: left out of what a
# trained model's parameters record, so that its cache and checkpoint keys do not change with them.
SPEED_ONLY = ("workers",)


def what_is_read(data: dict) -> dict:
    """The [data] section without its ``SPEED_ONLY`` keys."""
    return {k: v for k, v in data.items() if k not in SPEED_ONLY}


def labeled_subset(y: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """A stratified boolean mask keeping ``fraction`` of each class's labels (at least one)."""
    rng = np.random.default_rng(seed)
    keep = np.zeros(len(y), bool)
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        keep[rng.choice(idx, max(1, round(fraction * len(idx))), replace=False)] = True
    return keep
