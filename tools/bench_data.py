"""Does kdexport's image data path scale with the data on disk rather than with the RAM?

Measured side by side in one run (this machine is noisy; no timing asserts in tests):

1. peak memory of a whole ``kdexport distill-and-export`` (short epochs, a model that pools
   224 px images down first so that decoding dominates; every process counted: the command and
   its DataLoader workers, sampled every 0.2 s) on an image folder of N1 and of N2 JPEG
   photographs (``kdexport.modalities.image.example``: crops of the photographs installed
   packages ship) at ``--px``; ``growth`` = peak(N2) / peak(N1);
2. images decoded per second by the loader alone with no workers and with 2 (12,800 images,
   first batch excluded, two alternating rounds, the better of each);
3. ``epoch_vs_loader``: one training epoch of a tiny model over N1 images against the time the
   loader alone takes to deliver the same batches;
4. ``in_memory_parity_points``: the digits recipe read from PNG files through a manifest (the
   streamed path, workers) against the same recipe on the in-memory digits array: the
   students' test accuracy, in points.

Prints one JSON line last. ``--quick`` runs it small (a smoke test of the tool itself).
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout, installed or not

import contextlib

import numpy as np

HERE = Path(__file__).resolve()


def quick_timing() -> list[str]:
    """The benchmark's ``--quick`` settings as recipe overrides (the timing is not measured here)."""
    from kdexport.benchmark import QUICK

    return [f"benchmark.{k}={json.dumps(v)}" for k, v in QUICK.items()]


def pooled_cnn(num_classes: int = 12, in_channels: int = 3):
    """A model whose cost barely grows with the image: 8x8 average pooling, then two convs."""
    from torch import nn

    return nn.Sequential(
        nn.AvgPool2d(8),
        nn.Conv2d(in_channels, 16, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(4),
        nn.Flatten(),
        nn.Linear(256, num_classes),
    )


def folder(work: Path, n: int, px: int) -> Path:
    from kdexport.modalities.image.example import classes, write_folder

    out = work / f"photos-{n}-{px}"
    per_class = n // len(classes())
    if not (out / ".complete").is_file():
        if out.exists():
            subprocess.run(["rm", "-rf", str(out)], check=True)
        write_folder(out, per_class, px)
        (out / ".complete").write_text("")
    return out


class PeakMemory:
    """The peak of the summed resident memory of a process and all its descendants."""

    def __init__(self, pid: int):
        import psutil

        self.root, self.peak, self.done = psutil.Process(pid), 0, False
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()

    def _watch(self) -> None:
        import psutil

        while not self.done:
            try:
                procs = [self.root, *self.root.children(recursive=True)]
                total = 0
                for p in procs:
                    with contextlib.suppress(psutil.Error):
                        total += p.memory_info().rss
                self.peak = max(self.peak, total)
            except psutil.Error:
                pass
            time.sleep(0.2)

    def stop(self) -> float:
        self.done = True
        self.thread.join()
        return self.peak / 2**20


def distill_and_export(work: Path, source: Path, px: int, name: str) -> dict:
    out = work / f"run-{name}"
    subprocess.run(["rm", "-rf", str(out)], check=True)
    spec = f"{HERE}:pooled_cnn"
    sets = [
        f"data.source='{source}'",
        f"data.image_size=[{px}, {px}]",
        "data.image_mode='RGB'",
        "data.workers=2",
        f"teacher.model='{spec}'",
        "teacher.epochs=1",
        "teacher.batch_size=128",
        f"distill.student='{spec}'",
        "distill.epochs=1",
        "distill.batch_size=128",
        "benchmark.batch_sizes=[1]",
        # The held-out sample export checks parity on (and compile runs every target on) is
        # parity_samples of the test split, 512 by default: at 2,000 images the test split holds
        # 400, so the default would measure 400 photos against 512 (the compile stage's peak
        # grows with that sample: 3.1 GB against 3.9 GB). 256 is the same sample at every size.
        "export.parity_samples=256",
        *quick_timing(),
    ]
    args = [sys.executable, "-m", "kdexport.cli", "distill-and-export", "--out", str(out)]
    for s in sets:
        args += ["--set", s]
    start = time.perf_counter()
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    watch = PeakMemory(proc.pid)
    _, err = proc.communicate()
    peak = watch.stop()
    if proc.returncode:
        raise SystemExit(f"distill-and-export on {source} failed:\n{err[-2000:]}")
    return {"peak_rss_mb": round(peak), "seconds": round(time.perf_counter() - start, 1)}


def loader_rate(source: Path, px: int, images: int, workers: int) -> float:
    """Images per second the loader alone delivers (decoded, batched), first batch excluded."""
    from kdexport.data import load_splits

    splits = load_splits(source=str(source), image_size=[px, px], image_mode="RGB", workers=workers)
    x = splits.x_train
    n = min(images, len(x))
    order = [np.arange(i, min(i + 64, n)) for i in range(0, n, 64)]
    batches = x.batches(order)
    next(batches)
    start = time.perf_counter()
    count = sum(len(rows) for rows, _ in batches)
    return count / (time.perf_counter() - start)


def epoch_vs_loader(source: Path, px: int, images: int) -> dict:
    """One epoch of a tiny model (``fit``, its history's ``train_s``) over ``images`` training
    images against the loader alone delivering batches of as many images (2 workers each)."""
    import torch

    from kdexport.data import load_splits
    from kdexport.losses import Objective
    from kdexport.progress import quiet
    from kdexport.train.loop import Job, Pool, Session, fit
    from kdexport.train.parallel import cluster

    splits = load_splits(source=str(source), image_size=[px, px], image_mode="RGB", workers=2)
    n = min(images, len(splits.y_train))
    x, y = splits.x_train.subset(np.arange(n)), torch.from_numpy(splits.y_train[:n])
    batch, steps = 64, n // 64
    order = np.random.default_rng(0).permutation(n)
    start = time.perf_counter()
    for _ in Pool(x, y).batches(
        [torch.from_numpy(order[s * batch : (s + 1) * batch]) for s in range(steps)],
        torch.device("cpu"),
    ):
        pass
    loader_s = time.perf_counter() - start
    opts = {
        "epochs": 1, "lr": 1e-3, "weight_decay": 0.0, "schedule": "cosine", "precision": "fp32",
        "batch_size": batch, "seed": 0, "patience": 0, "data_placement": "auto",
    }  # fmt: skip
    job = Job(pooled_cnn(splits.num_classes), Objective({"ce": 1.0}), Pool(x, y), steps)
    val = (splits.x_val.subset(np.arange(64)), splits.y_val[:64])
    with cluster("cpu") as c:
        (epoch,) = fit(job, val, opts, Session("bench", quiet, c))
    return {
        "images": steps * batch,
        "loader_s": round(loader_s, 2),
        "epoch_s": round(epoch["train_s"], 2),
        "wait_s": epoch["wait_s"],
    }


def digits_manifest(work: Path) -> Path:
    """scikit-learn's digits as PNG files (0..16 scaled to 0..255) listed in their own order
    by a CSV manifest: the same labels in the same order, so the same split."""
    from PIL import Image
    from sklearn.datasets import load_digits

    out = work / "digits-png"
    manifest = out / "digits.csv"
    if manifest.is_file():
        return manifest
    out.mkdir(parents=True, exist_ok=True)
    d = load_digits()
    rows = []
    for i, (img, label) in enumerate(zip(d.images, d.target, strict=True)):
        name = f"{i:04d}.png"
        Image.fromarray(np.round(img * 255 / 16).astype(np.uint8), "L").save(out / name)
        rows.append({"path": name, "label": str(label)})
    with manifest.open("w", newline="") as f:
        w = csv.DictWriter(f, ["path", "label"])
        w.writeheader()
        w.writerows(rows)
    return manifest


def digits_accuracy(work: Path, source: str, name: str, quick: bool) -> float:
    out = work / f"digits-{name}"
    subprocess.run(["rm", "-rf", str(out)], check=True)
    sets = [f"data.source='{source}'", "data.workers=2", *quick_timing()]
    if quick:
        sets += ["teacher.epochs=2", "distill.epochs=2"]
    args = [sys.executable, "-m", "kdexport.cli", "distill-and-export", "--out", str(out)]
    for s in sets:
        args += ["--set", s]
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL)
    checks = json.loads((out / "student" / "manifest.json").read_text())["checks"]
    return checks["test_accuracy"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/kdexport-bench-data"))
    parser.add_argument("--px", type=int, default=224)
    parser.add_argument("--n1", type=int, default=2000)
    parser.add_argument("--n2", type=int, default=60000)
    parser.add_argument("--quick", action="store_true", help="small sizes: test the tool")
    args = parser.parse_args()
    if args.quick:
        args.px, args.n1, args.n2 = 64, 240, 720
    args.work.mkdir(parents=True, exist_ok=True)
    small, large = (folder(args.work, n, args.px) for n in (args.n1, args.n2))
    runs = {
        n: distill_and_export(args.work, f, args.px, str(n))
        for n, f in ((args.n1, small), (args.n2, large))
    }
    for n, r in runs.items():
        print(
            f"distill-and-export on {n} images: peak {r['peak_rss_mb']} MB, {r['seconds']} s",
            file=sys.stderr,
        )
    images = 256 if args.quick else 12800
    rounds = [(w, loader_rate(large, args.px, images, w)) for _ in range(2) for w in (0, 2)]
    rates = {f"workers={w}": round(max(r for v, r in rounds if v == w)) for w in (0, 2)}
    epoch = epoch_vs_loader(large, args.px, 6400 if not args.quick else 256)
    print(f"loader {rates}, epoch {epoch}", file=sys.stderr)
    manifest = digits_manifest(args.work)
    in_memory = digits_accuracy(args.work, "digits", "memory", args.quick)
    streamed = digits_accuracy(args.work, str(manifest), "streamed", args.quick)
    peaks = [runs[args.n1]["peak_rss_mb"], runs[args.n2]["peak_rss_mb"]]
    result = {
        "px": args.px,
        "images": [args.n1, args.n2],
        "peak_rss_mb": peaks,
        "growth": round(peaks[1] / peaks[0], 3),
        "images_per_s": rates,
        "epoch_vs_loader": round(epoch["epoch_s"] / epoch["loader_s"], 3),
        "in_memory_parity_points": round(100 * (streamed - in_memory), 2),
        "digits_accuracy": {"in_memory": in_memory, "streamed": streamed},
        "seconds": {str(n): r["seconds"] for n, r in runs.items()},
        "epoch": epoch,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
