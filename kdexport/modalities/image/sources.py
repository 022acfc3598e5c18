"""Image sources. In memory: scikit-learn's digits, ``.npz`` arrays and a user's
``file.py:factory`` dataset (float32 (N, C, H, W)). Streamed (``StreamedInputs``: a listing,
decoded in DataLoader workers, uint8 until the model's device): image folders, CSV/JSONL
manifests of ``path,label`` rows, WebDataset tar shards (``shards``) and ``.npy`` arrays opened
memory-mapped."""

from __future__ import annotations

import csv
import json
from functools import partial
from pathlib import Path

import numpy as np

from kdexport.bundle.runner import IMAGE_SUFFIXES, as_array, centre_box, open_image
from kdexport.errors import KdxError
from kdexport.modalities.contract import Source
from kdexport.modalities.inputs import (
    ArrayInputs,
    Finish,
    StreamedInputs,
    file_stamp,
    readable,
)

MANIFEST_SUFFIXES = (".csv", ".jsonl")
UNREADABLE_HINT = "remove or replace it, or set data.skip_unreadable = true to skip such files"


def digits() -> Source:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images.astype(np.float32) / 16.0)[:, None, :, :]
    labels = [str(c) for c in d.target_names]
    pre = {"layout": "NCHW", "scale": 1 / 16, "source": "sklearn.datasets.load_digits"}
    return Source(ArrayInputs(x), d.target.astype(np.int64), labels, pre)


def _check_labels(y: np.ndarray | None, where, n: int) -> None:
    if y is not None and (y.ndim != 1 or len(y) != n):
        raise KdxError(f"{where}: labels {y.shape} for {n} inputs; give one class id per input")
    if y is not None and not np.issubdtype(y.dtype, np.integer):
        raise KdxError(f"{where}: labels must be integer class ids 0..K-1, got {y.dtype}")


def npz(path: Path) -> Source:
    try:
        with np.load(path, allow_pickle=False) as f:
            x = f["x"]
            y = f["y"] if "y" in f.files else None
    except KeyError:
        raise KdxError(f"{path}: needs an array named 'x' (and 'y' for labels)") from None
    except (OSError, ValueError) as e:
        raise KdxError(f"{path}: not a readable .npz ({e})") from None
    if x.ndim != 4:
        raise KdxError(f"{path}: x must be (N, C, H, W), got {x.shape}; reshape it")
    _check_labels(y, path, len(x))
    pre = {"layout": "NCHW", "source": str(path)}
    return Source(ArrayInputs(x.astype(np.float32)), y, None, pre)


_MAPPED: dict[str, np.ndarray] = {}  # per process (each worker opens its own map)


def _mapped_row(path: str, row, view, rng) -> np.ndarray:
    if path not in _MAPPED:
        _MAPPED[path] = np.load(path, mmap_mode="r")
    return np.array(_MAPPED[path][int(row)])


def mapped(path: Path, workers: int) -> Source:
    """``x.npy`` (N, C, H, W) memory-mapped, labels from ``y.npy`` beside it (if there):
    rows read as stored; uint8 pixels scaled to 0..1 where the model runs."""
    try:
        x = np.load(path, mmap_mode="r")
    except (OSError, ValueError) as e:
        raise KdxError(f"{path}: not a readable .npy ({e})") from None
    if x.ndim != 4:
        raise KdxError(f"{path}: must be (N, C, H, W), got {x.shape}; reshape it")
    labels_file = path.with_name("y.npy")
    y = np.load(labels_file) if labels_file.is_file() else None
    _check_labels(y, labels_file, len(x))
    stat = path.stat()
    pre = {"layout": "NCHW", "source": str(path), "memory_mapped": True}
    finisher = Finish(scale=1 / 255) if x.dtype == np.uint8 else Finish()
    if x.dtype == np.uint8:
        pre["scale"] = 1 / 255
    inputs = StreamedInputs(
        np.arange(len(x)),
        partial(_mapped_row, str(path.resolve())),
        tuple(x.shape[1:]),
        finisher,
        str(path),
        workers,
        f"{stat.st_size}:{stat.st_mtime_ns}",
    )
    return Source(inputs, y, None, pre)


UNREADABLE = (OSError, ValueError, SyntaxError)  # Pillow's UnidentifiedImageError: OSError


def decode(file, view, rng, mode: str, size, crop: float) -> np.ndarray:
    """An image (a path or a binary file) as uint8 (C, H, W): the evaluation transform
    (``centre_box``), or the training ``view`` drawn with ``rng`` (``augment.draw``: a random
    resized crop and flip, ``augment.View``). Pillow's errors (``UNREADABLE``) pass through."""
    from PIL import Image

    img = open_image(file, mode)
    if view is not None:
        box, flip = view.draw(img.width, img.height, rng)
        img = img.resize((int(size[1]), int(size[0])), Image.BILINEAR, box=box)
        if flip:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    elif size:
        box = centre_box(img.width, img.height, size, crop)
        img = img.resize((int(size[1]), int(size[0])), Image.BILINEAR, box=box)
    return as_array(img).transpose(2, 0, 1).copy()


def read_file(entry, view, rng, **decoding) -> np.ndarray:
    """One image file (a streamed entry), its faults said in one line naming it."""
    try:
        return decode(entry, view, rng, **decoding)
    except UNREADABLE as e:
        raise KdxError(f"{entry}: not a readable image ({e}); {UNREADABLE_HINT}") from None


def _folder_listing(path: Path, labeled: bool) -> tuple[list[Path], list[int], list[str]]:
    if not labeled:
        files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise KdxError(f"{path}: no images in it; point data.transfer at images")
        return files, [], []
    classes = sorted(d for d in path.iterdir() if d.is_dir())
    files = {
        d.name: sorted(p for p in d.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        for d in classes
    }
    if not any(files.values()):
        raise KdxError(
            f"{path}: no images in class sub-folders; put each class's images in its own sub-folder"
        )
    empty = [name for name, f in files.items() if not f]
    if empty:
        raise KdxError(
            f"{path}: class folder '{empty[0]}' holds no images ({len(empty)} empty); "
            "put its images in it or remove the folder"
        )
    labels = list(files)
    y = [i for i, n in enumerate(labels) for _ in files[n]]
    return [p for n in labels for p in files[n]], y, labels


def _manifest_listing(path: Path, labeled: bool) -> tuple[list[Path], list[int], list[str]]:
    """``path,label`` rows (CSV with a header naming them, or JSON lines), paths relative to
    the manifest; class names sorted."""
    try:
        with path.open(newline="", encoding="utf-8") as f:
            if path.suffix.lower() == ".csv":
                rows = list(csv.DictReader(f))
            else:
                rows = [json.loads(line) for line in f if line.strip()]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, csv.Error) as e:
        raise KdxError(f"{path}: not a readable manifest ({e})") from None
    if not rows:
        raise KdxError(f"{path}: no rows; give one row per image (path,label)")
    files, names = [], []
    for n, row in enumerate(rows, start=2 if path.suffix.lower() == ".csv" else 1):
        if not isinstance(row, dict) or not row.get("path"):
            raise KdxError(f"{path}: row {n} has no 'path'; give path,label rows")
        if labeled and row.get("label") in (None, ""):
            raise KdxError(f"{path}: row {n} ({row['path']}) has no label; give it one")
        file = path.parent / str(row["path"])
        if not file.is_file():
            raise KdxError(
                f"{path}: row {n} names {file}, which does not exist; fix the path or drop the row"
            )
        files.append(file)
        names.append(str(row.get("label", "")))
    if not labeled:
        return files, [], []
    labels = sorted(set(names))
    index = {name: i for i, name in enumerate(labels)}
    return files, [index[name] for name in names], labels


def image_files(spec: str, opts: dict, labeled: bool) -> Source:
    """An image folder or a manifest, streamed: listed, nothing decoded (but the first image,
    for the size when ``image_size`` leaves it open); with ``skip_unreadable``, one pass in the
    workers drops the files that cannot be read, counted in the record."""
    path = Path(spec)
    listing = _manifest_listing if path.is_file() else _folder_listing
    files, y, labels = listing(path, labeled)
    size, mode, crop = opts["image_size"], opts["image_mode"], opts["crop_fraction"]
    reader = partial(read_file, mode=mode, size=size, crop=crop)
    pre = {"layout": "NCHW", "scale": 1 / 255, "image_mode": mode, "source": spec}
    if size:
        pre["resize"] = size
    if crop:
        pre["crop_fraction"] = crop
    if opts["skip_unreadable"]:
        ok = readable(files, reader, opts["workers"])
        skipped = [str(f) for f, good in zip(files, ok, strict=True) if not good]
        files = [f for f, good in zip(files, ok, strict=True) if good]
        y = [c for c, good in zip(y, ok, strict=True) if good] if labeled else y
        pre["skipped_unreadable"] = {"count": len(skipped), "first": skipped[:10]}
        if not files:
            raise KdxError(f"{spec}: no readable image in it")
    inputs = StreamedInputs(
        np.array([str(f) for f in files]),
        reader,
        reader(files[0], None, None).shape,
        Finish(1 / 255),
        spec,
        opts["workers"],
        file_stamp(files),
    )
    return Source(inputs, np.asarray(y, np.int64) if labeled else None, labels or None, pre)


def _item(item, i: int, spec: str) -> tuple[np.ndarray, int | None]:
    x, y = item if isinstance(item, tuple | list) and len(item) == 2 else (item, None)
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 3:
        raise KdxError(f"data source '{spec}': item {i} has shape {x.shape}, not (C, H, W)")
    if y is not None and not (np.ndim(y) == 0 and float(y) == int(y)):
        raise KdxError(f"data source '{spec}': item {i} has label {y!r}, not a class id")
    return x, None if y is None else int(y)


def dataset(spec: str) -> Source:
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
    shapes = sorted({x.shape for x, _ in items})
    if len(shapes) > 1:
        raise KdxError(
            f"data source '{spec}': inputs differ in shape ({shapes[0]} and {shapes[-1]}); "
            "make every item the same shape"
        )
    x = np.stack([x for x, _ in items]).astype(np.float32)
    ys = [y for _, y in items]
    y = None if any(v is None for v in ys) else np.array(ys, dtype=np.int64)
    return Source(ArrayInputs(x), y, None, {"layout": "NCHW", "source": spec})


def check_stats(inputs, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
    c = inputs.item_shape[0]
    for name, v in (("mean", mean), ("std", std)):
        if v and len(v) not in (1, c):
            raise KdxError(f"data.{name} has {len(v)} values; give 1 or one per channel ({c})")
    if any(s <= 0 for s in std):
        raise KdxError("data.std values must be > 0")
