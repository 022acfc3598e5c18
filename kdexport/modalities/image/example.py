"""An offline natural-image data set: crops of the photographs that installed packages ship.

``python -m kdexport.modalities.image.example OUT [--per-class N] [--size PX]`` writes an image
folder OUT/CLASS/NNNNN.jpg of 12 classes: the four quadrants of each of three photographs
(scikit-learn's ``china.jpg`` and ``flower.jpg``, matplotlib's ``grace_hopper.jpg``). A sample is
a random square crop centred in its quadrant (a quarter to a half of the photo's shorter side,
turned by up to 20 degrees, its brightness and contrast varied by up to 25%), resized to
``size`` px and saved as a JPEG (quality 90). Telling which part of which photo a crop shows is
texture and colour recognition on real photographs; crops near a quadrant's edge overlap their
neighbours, so the task has a ceiling below 100%. Nothing is downloaded; the same arguments
write the same files.
"""

from __future__ import annotations

import argparse
import os
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path

import numpy as np

from kdexport.errors import KdxError

QUADRANTS = ("top-left", "top-right", "bottom-left", "bottom-right")


def photographs() -> dict[str, Path]:
    """The photographs shipped inside scikit-learn and matplotlib, by name."""
    import matplotlib
    import sklearn

    sk = Path(sklearn.__file__).parent / "datasets" / "images"
    mpl = Path(matplotlib.get_data_path()) / "sample_data"
    found = {
        "china": sk / "china.jpg",
        "flower": sk / "flower.jpg",
        "hopper": mpl / "grace_hopper.jpg",
    }
    missing = [str(p) for p in found.values() if not p.is_file()]
    if missing:
        raise KdxError(f"the example's photographs are missing ({', '.join(missing)})")
    return found


def classes() -> list[tuple[str, str, int]]:
    """(class name, photo, quadrant) for each of the 12 classes."""
    return [(f"{p}-{q}", p, i) for p in photographs() for i, q in enumerate(QUADRANTS)]


def _crop(photo, quadrant: int, size: int, rng: np.random.Generator):
    from PIL import Image, ImageEnhance

    w, h = photo.size
    side = rng.uniform(0.25, 0.5) * min(w, h)
    col, row = quadrant % 2, quadrant // 2
    cx = rng.uniform(col * w / 2, (col + 1) * w / 2)
    cy = rng.uniform(row * h / 2, (row + 1) * h / 2)
    # Clamp the centre so that the crop stays inside the photograph.
    cx = float(np.clip(cx, side / 2, w - side / 2))
    cy = float(np.clip(cy, side / 2, h - side / 2))
    angle = rng.uniform(-20, 20)
    reach = side * 0.75  # room for the turn before cropping
    box = (cx - reach, cy - reach, cx + reach, cy + reach)
    patch = photo.crop(tuple(round(v) for v in box)).rotate(angle, Image.BILINEAR)
    inner = round(reach - side / 2)
    patch = patch.crop((inner, inner, inner + round(side), inner + round(side)))
    patch = patch.resize((size, size), Image.BILINEAR)
    patch = ImageEnhance.Brightness(patch).enhance(rng.uniform(0.75, 1.25))
    return ImageEnhance.Contrast(patch).enhance(rng.uniform(0.75, 1.25))


def _write_class(job: tuple, out: Path, per_class: int, size: int, seed: int) -> int:
    from PIL import Image

    index, (name, photo, quadrant) = job
    folder = out / name
    folder.mkdir(parents=True, exist_ok=True)
    with Image.open(photographs()[photo]) as img:
        picture = img.convert("RGB")
    rng = np.random.default_rng((seed, index))
    for i in range(per_class):
        _crop(picture, quadrant, size, rng).save(folder / f"{i:05d}.jpg", quality=90)
    return per_class


def write_folder(out: Path, per_class: int = 100, size: int = 96, seed: int = 0) -> int:
    """Write the image folder; returns the number of images written."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise KdxError(f"{out} is not empty; give a new folder")
    jobs = list(enumerate(classes()))
    write = partial(_write_class, out=out, per_class=per_class, size=size, seed=seed)
    workers = min(len(jobs), os.cpu_count() or 1)
    with ProcessPoolExecutor(max_workers=workers) as pool:
        return sum(pool.map(write, jobs))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        n = write_folder(args.out, args.per_class, args.size, args.seed)
    except KdxError as e:
        raise SystemExit(f"error: {e}") from None
    print(f"wrote {n} images of {len(classes())} classes to {args.out}")


if __name__ == "__main__":
    main()
