"""Data sources, the fixed train/validation/test split and the unlabeled transfer set.

Sources (``data.source``, and ``data.transfer`` for extra unlabeled inputs):

- ``digits``: scikit-learn's 8x8 handwritten digits (shipped inside scikit-learn; no download);
- ``path/to/file.npz``: arrays ``x`` (N, C, H, W) and ``y`` (N,) (``y`` may be left out of a
  transfer source);
- ``path/to/folder``: an image folder, one sub-folder per class holding PNG/JPEG files (a
  transfer folder: images anywhere below it, labels ignored), resized to ``image_size`` and
  read in ``image_mode`` (``L`` grey, ``RGB``), pixels scaled to 0..1;
- ``path/to/file.py:factory``: a function returning a torch ``Dataset`` whose items are
  ``(x, y)`` (or ``x`` alone for a transfer source), x a (C, H, W) tensor or array;
- ``path/to/file.csv|.tsv|.jsonl`` with ``text_column`` set: texts (or text pairs) and labels,
  tokenised by ``tokenizer``'s fast tokenizer (an ``hf:`` folder; the pipeline gives the
  teacher's) into packed token arrays (N, 3, max_length) int64 (``kdexport.text.tokens``),
  cached in ``cache_dir`` (``kdexport.text.data``).

Every source is read into memory once; ``mean``/``std`` then normalise each channel.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import numpy as np

from kdexport.errors import KdxError
from kdexport.options import OneOf, Range

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


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


@dataclass
class Source:
    """What a source holds: inputs, labels (None: unlabeled), class names, how it was read."""

    x: np.ndarray
    y: np.ndarray | None
    labels: list[str] | None
    preprocessing: dict


def _digits() -> Source:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images.astype(np.float32) / 16.0)[:, None, :, :]
    labels = [str(c) for c in d.target_names]
    pre = {"layout": "NCHW", "scale": 1 / 16, "source": "sklearn.datasets.load_digits"}
    return Source(x, d.target.astype(np.int64), labels, pre)


def _npz(path: Path) -> Source:
    try:
        with np.load(path, allow_pickle=False) as f:
            x = f["x"]
            y = f["y"] if "y" in f.files else None
    except KeyError:
        raise KdxError(f"{path}: needs an array named 'x' (and 'y' for labels)") from None
    except (OSError, ValueError) as e:
        raise KdxError(f"{path}: not a readable .npz ({e})") from None
    if x.ndim != 4 or (y is not None and (y.ndim != 1 or len(x) != len(y))):
        got = f"{x.shape} and {None if y is None else y.shape}"
        raise KdxError(f"{path}: x must be (N, C, H, W) and y (N,), got {got}; reshape them")
    if y is not None and not np.issubdtype(y.dtype, np.integer):
        raise KdxError(f"{path}: y must hold integer class ids 0..K-1, got {y.dtype}")
    return Source(x.astype(np.float32), y, None, {"layout": "NCHW", "source": str(path)})


def _read_image(path: Path, size: list[int], mode: str) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img = img.convert(mode)
            if size:
                img = img.resize((size[1], size[0]), Image.BILINEAR)
            a = np.asarray(img, dtype=np.float32) / 255.0
    except (OSError, UnidentifiedImageError, ValueError) as e:
        raise KdxError(f"{path}: not a readable image ({e}); remove or replace it") from None
    return a[None] if a.ndim == 2 else a.transpose(2, 0, 1)


def _stack(arrays: list[np.ndarray], where: str, hint: str) -> np.ndarray:
    shapes = sorted({a.shape for a in arrays})
    if len(shapes) > 1:
        raise KdxError(f"{where}: inputs differ in shape ({shapes[0]} and {shapes[-1]}); {hint}")
    return np.stack(arrays).astype(np.float32)


def _images(paths: list[Path], where: Path, size: list[int], mode: str) -> np.ndarray:
    arrays = [_read_image(p, size, mode) for p in paths]
    return _stack(arrays, str(where), "set data.image_size = [H, W] to resize them")


def _image_folder(path: Path, size: list[int], mode: str, labeled: bool) -> Source:
    pre = {"layout": "NCHW", "scale": 1 / 255, "image_mode": mode, "source": str(path)}
    if size:
        pre["resize"] = size
    if not labeled:
        files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise KdxError(f"{path}: no PNG or JPEG images in it; point data.transfer at images")
        return Source(_images(files, path, size, mode), None, None, pre)
    classes = sorted(d for d in path.iterdir() if d.is_dir())
    files = {
        d.name: sorted(p for p in d.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        for d in classes
    }
    if not any(files.values()):
        raise KdxError(
            f"{path}: no PNG or JPEG images in class sub-folders; put each class's images in its own sub-folder"
        )
    labels = [name for name, f in files.items() if f]
    y = np.concatenate([np.full(len(files[n]), i, np.int64) for i, n in enumerate(labels)])
    x = _images([p for n in labels for p in files[n]], path, size, mode)
    return Source(x, y, labels, pre)


def _item(item, i: int, spec: str) -> tuple[np.ndarray, int | None]:
    x, y = item if isinstance(item, tuple | list) and len(item) == 2 else (item, None)
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 3:
        raise KdxError(f"data source '{spec}': item {i} has shape {x.shape}, not (C, H, W)")
    if y is not None and not (np.ndim(y) == 0 and float(y) == int(y)):
        raise KdxError(f"data source '{spec}': item {i} has label {y!r}, not a class id")
    return x, None if y is None else int(y)


def _dataset(spec: str) -> Source:
    from kdexport.zoo import load_factory

    try:
        ds = load_factory(spec, "data source")()
        items = [_item(ds[i], i, spec) for i in range(len(ds))]
    except KdxError:
        raise
    except Exception as e:  # user code: any failure is theirs to fix
        raise KdxError(
            f"data source '{spec}': reading the dataset failed ({type(e).__name__}: {e})"
        ) from None
    if not items:
        raise KdxError(f"data source '{spec}': the dataset is empty")
    x = _stack([x for x, _ in items], f"data source '{spec}'", "make every item the same shape")
    ys = [y for _, y in items]
    y = None if any(v is None for v in ys) else np.array(ys, dtype=np.int64)
    return Source(x, y, None, {"layout": "NCHW", "source": spec})


def _text(spec: str, text: dict, labeled: bool) -> Source:
    """A text file tokenised and packed (``kdexport.text``), with its labels' class names."""
    from kdexport.text.data import load_text
    from kdexport.text.tokens import pack

    path = Path(spec)
    if not path.is_file():
        raise KdxError(f"data source {path}: no such file; give an existing .csv, .tsv or .jsonl")
    got = load_text(
        path,
        text["tokenizer"],
        text=text["text_column"],
        text_pair=text["text_pair_column"],
        label=text["label_column"] if labeled else "",
        max_length=text["max_length"],
        max_positions=text["positions"] or None,
        cache_dir=text["cache_dir"] or None,
    )
    if labeled and (got.labels < 0).any():
        raise KdxError(
            f"data source {path}: {int((got.labels < 0).sum())} rows have no label; label them, "
            "or give the unlabeled rows as data.transfer"
        )
    x = pack(got.input_ids, got.token_type_ids, text["max_length"], got.pad_id)
    pre = {
        "kind": "text",
        "tokenizer": text["spec"],
        "max_length": text["max_length"],
        "pad_id": got.pad_id,
        "columns": got.meta["columns"],
        "truncated": got.meta["at_max_length"],
    }
    return Source(x, got.labels if labeled else None, got.classes, pre)


def _text_options(opts: dict) -> dict | None:
    """load_splits' text options with the tokenizer loaded once; None for other data."""
    if not opts["text_column"]:
        return None
    if not opts["tokenizer"]:
        raise KdxError(
            "data.text_column is set: set data.tokenizer to the hf: folder whose tokenizer reads "
            "the text (the pipeline uses the teacher's when teacher.model is hf:)"
        )
    from kdexport.text.models import load_tokenizer

    tokenizer, positions = load_tokenizer(opts["tokenizer"])
    return {**opts, "tokenizer": tokenizer, "positions": positions, "spec": opts["tokenizer"]}


def read_source(
    spec: str, image_size: list[int], image_mode: str, labeled: bool, text: dict | None = None
) -> Source:
    """Read one source into memory (see the module docstring for the forms)."""
    if text:  # _text_options: set only for a text_column
        return _text(spec, text, labeled)
    if spec == "digits":
        return _digits()
    if ".py:" in spec:
        return _dataset(spec)
    path = Path(spec)
    if path.is_dir():
        return _image_folder(path, image_size, image_mode, labeled)
    if path.suffix == ".npz" and path.is_file():
        return _npz(path)
    if path.suffix == ".npz":
        raise KdxError(f"data source {path}: no such file; give an existing .npz or 'digits'")
    missing = "" if path.exists() else f"{path} does not exist; "
    raise KdxError(
        f"data source '{spec}': {missing}use digits, a .npz file, an image folder or file.py:factory"
    )


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


def _normalise(x: np.ndarray, mean: list[float], std: list[float]) -> np.ndarray:
    c = x.shape[1]
    for name, v in (("mean", mean), ("std", std)):
        if v and len(v) not in (1, c):
            raise KdxError(f"data.{name} has {len(v)} values; give 1 or one per channel ({c})")
    if any(s <= 0 for s in std):
        raise KdxError("data.std values must be > 0")
    m = np.asarray(mean or [0.0], np.float32).reshape(1, -1, 1, 1)
    s = np.asarray(std or [1.0], np.float32).reshape(1, -1, 1, 1)
    return (x - m) / s


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
    transfer: str = "",
    num_classes: Annotated[int, Range(0)] = 0,
    image_size: Annotated[list[int], Range(1)] = [],  # noqa: B006 (never mutated)
    image_mode: Annotated[str, OneOf(("L", "RGB"))] = "L",
    mean: list[float] = [],  # noqa: B006 (never mutated)
    std: list[float] = [],  # noqa: B006 (never mutated)
    val_fraction: Annotated[float, Range(0.0, 0.5, lo_open=True)] = 0.15,
    test_fraction: Annotated[float, Range(0.0, 0.5, lo_open=True)] = 0.2,
    seed: Annotated[int, Range(0)] = 0,
    text_column: str = "",
    text_pair_column: str = "",
    label_column: str = "label",
    max_length: Annotated[int, Range(2, 8192)] = 128,
    tokenizer: str = "",
    cache_dir: str = "",
) -> Splits:
    """Load ``source``, split it stratified by class with a fixed seed; read ``transfer``.

    ``num_classes`` 0 infers the count from the labels (or the class folders). Text sources
    (``text_column`` set): ``text_pair_column`` for sentence pairs, ``label_column``,
    ``max_length`` tokens, ``tokenizer`` an ``hf:`` folder, ``cache_dir`` for the token ids.
    """
    if image_size and len(image_size) != 2:
        raise KdxError(f"data.image_size = {image_size} must be [H, W]")
    text = _text_options(
        {
            "text_column": text_column,
            "text_pair_column": text_pair_column,
            "label_column": label_column,
            "max_length": max_length,
            "tokenizer": tokenizer,
            "cache_dir": cache_dir,
        }
    )
    if text and (mean or std):
        raise KdxError("data.mean and data.std apply to images; leave them [] for text")
    src = read_source(source, image_size, image_mode, labeled=True, text=text)
    labels = _class_names(src, num_classes, source)
    x = src.x if text else _normalise(src.x, mean, std)
    if not np.isfinite(x).all():
        raise KdxError(
            f"data source '{source}': x holds NaN or infinite values; clean the data first"
        )
    pre = {**src.preprocessing, **{k: v for k, v in (("mean", mean), ("std", std)) if v}}
    x_transfer = np.empty((0, *x.shape[1:]), x.dtype)
    if transfer:
        unlabeled = read_source(transfer, image_size, image_mode, False, text).x
        x_transfer = unlabeled if text else _normalise(unlabeled, mean, std)
        if x_transfer.shape[1:] != x.shape[1:]:
            raise KdxError(
                f"data.transfer '{transfer}': inputs {x_transfer.shape[1:]} differ from the source's {x.shape[1:]}; give inputs of the same shape"
            )
        pre["transfer"] = transfer
    train, val, test = _stratified_split(src.y, (val_fraction, test_fraction), seed)
    y = src.y.astype(np.int64)
    return Splits(x[train], y[train], x[val], y[val], x[test], y[test], labels, pre, x_transfer)


def labeled_subset(y: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """A stratified boolean mask keeping ``fraction`` of each class's labels (at least one)."""
    rng = np.random.default_rng(seed)
    keep = np.zeros(len(y), bool)
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        keep[rng.choice(idx, max(1, round(fraction * len(idx))), replace=False)] = True
    return keep
