"""Image sources, read into memory: scikit-learn's digits, ``.npz`` arrays, image folders and a
user's ``file.py:factory`` dataset. Every form gives float32 (N, C, H, W) arrays."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from kdexport.bundle.runner import decode_image
from kdexport.errors import KdxError
from kdexport.modalities.contract import Source

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def digits() -> Source:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images.astype(np.float32) / 16.0)[:, None, :, :]
    labels = [str(c) for c in d.target_names]
    pre = {"layout": "NCHW", "scale": 1 / 16, "source": "sklearn.datasets.load_digits"}
    return Source(x, d.target.astype(np.int64), labels, pre)


def npz(path: Path) -> Source:
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
    """(C, H, W) float32 in 0..1, decoded as run.py decodes it on devices (``decode_image``)."""
    try:
        a = decode_image(path, mode, size)
    except (OSError, ValueError) as e:  # Pillow's UnidentifiedImageError is an OSError
        raise KdxError(f"{path}: not a readable image ({e}); remove or replace it") from None
    return a.transpose(2, 0, 1).astype(np.float32) / 255.0


def stack(arrays: list[np.ndarray], where: str, hint: str) -> np.ndarray:
    shapes = sorted({a.shape for a in arrays})
    if len(shapes) > 1:
        raise KdxError(f"{where}: inputs differ in shape ({shapes[0]} and {shapes[-1]}); {hint}")
    return np.stack(arrays).astype(np.float32)


def _images(paths: list[Path], where: Path, size: list[int], mode: str) -> np.ndarray:
    arrays = [_read_image(p, size, mode) for p in paths]
    return stack(arrays, str(where), "set data.image_size = [H, W] to resize them")


def image_folder(path: Path, size: list[int], mode: str, labeled: bool) -> Source:
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
    x = stack([x for x, _ in items], f"data source '{spec}'", "make every item the same shape")
    ys = [y for _, y in items]
    y = None if any(v is None for v in ys) else np.array(ys, dtype=np.int64)
    return Source(x, y, None, {"layout": "NCHW", "source": spec})


def normalise(x: np.ndarray, mean: list[float], std: list[float]) -> np.ndarray:
    c = x.shape[1]
    for name, v in (("mean", mean), ("std", std)):
        if v and len(v) not in (1, c):
            raise KdxError(f"data.{name} has {len(v)} values; give 1 or one per channel ({c})")
    if any(s <= 0 for s in std):
        raise KdxError("data.std values must be > 0")
    m = np.asarray(mean or [0.0], np.float32).reshape(1, -1, 1, 1)
    s = np.asarray(std or [1.0], np.float32).reshape(1, -1, 1, 1)
    return (x - m) / s


def read_image_source(spec: str, opts: dict, labeled: bool) -> Source:
    """One source in any of the forms above, normalised by ``mean``/``std``."""
    if spec == "digits":
        src = digits()
    elif ".py:" in spec:
        src = dataset(spec)
    elif Path(spec).is_dir():
        src = image_folder(Path(spec), opts["image_size"], opts["image_mode"], labeled)
    elif spec.endswith(".npz") and Path(spec).is_file():
        src = npz(Path(spec))
    elif spec.endswith(".npz"):
        raise KdxError(f"data source {spec}: no such file; give an existing .npz or 'digits'")
    else:
        missing = "" if Path(spec).exists() else f"{Path(spec)} does not exist; "
        raise KdxError(
            f"data source '{spec}': {missing}use digits, a .npz file, an image folder or file.py:factory"
        )
    src.x = normalise(src.x, opts["mean"], opts["std"])
    src.preprocessing.update({k: opts[k] for k in ("mean", "std") if opts[k]})
    return src
