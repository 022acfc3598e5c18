#!/usr/bin/env python3
"""Run a kdexport bundle on a device: verify it, predict with it, benchmark it.

kdexport copies this file into every bundle as ``run.py``. It needs Python 3.9+, numpy and
onnxruntime, and nothing else (Pillow only to read images, tokenizers only to read text):

    python run.py verify [--json]                       checksums, then the golden outputs
    python run.py predict input.npy|.npz|image [--json] top classes (or outputs) of each sample
    python run.py predict texts.txt|.jsonl|.csv         a text model's bundle: one text per line,
    python run.py predict --text "..." [--text ...]     or a "text" column; or literal texts
    python run.py predict clip.wav|folder/              a speech model's bundle: WAV clips
    python run.py bench [--json] [--device NAME]        latency, written to a result file
    python run.py bench --scenario server --p99-ms 10   requests a second at a p99 bound (LoadGen)

The sections below: verify, inputs (one reader per modality, ``INPUTS``, keyed by the bundle's
recorded modality), predict, measure, points, bench, plan (variants), the command line.

A speech model's bundle (manifest "speech": the rate and the window) reads WAV files with the
standard library's ``wave`` module (soundfile, where installed, for float WAV); its log-mel
front end is inside the model. A text model's bundle (manifest "text") ships its tokenizer.json: ``predict`` tokenises texts
with the ``tokenizers`` package as the run did (truncated to max_length, padded per batch);
``verify`` and ``bench`` run on the stored token arrays and need no tokenizers; ``bench`` times
it per shape "BATCHxTOKENS" (``--batch-sizes 1x128,8x128``; default the run's text shapes).

A bundle packaged with a placement plan (``kdexport package RUN --plan plan.json``) holds
several variants (teacher or student, portable or compiled) and the plan: ``predict`` and
``bench`` run the variant the plan assigns to this device (by ``--device NAME``, else by the
device's fingerprint), with the threads and CPUs it was measured with; ``--variant
[teacher@|student@]TARGET`` names one instead. ``bench`` on a device the plan does not hold
says so and measures every variant this device can run, one result file each, so that the
results can be imported and planned.

A bundle of a run holds its student; a bundle of any ONNX file (manifest "source": "onnx-file")
holds that model, random golden inputs and ONNX Runtime's outputs for them, and no labels.
Golden arrays are one ``.npy`` (the first input or output) or a ``.npz`` of named arrays.

``kdexport import-results RESULT.json ...`` turns the result files of many devices into one
table. The benchmark method is kdexport's (``kdexport benchmark``): inputs bound once, warm-up,
then at least ``--min-iters`` iterations and ``--min-time-s`` seconds per model, teacher and
student interleaved in ``--rounds`` slices.
"""

# Only the standard library, numpy and onnxruntime: this file runs where kdexport is not installed.
from __future__ import annotations

import argparse
import collections
import glob
import hashlib
import json
import os
import platform
import re
import shutil
import sys
import tempfile
import threading
import time
import zipfile
from pathlib import Path

try:
    import numpy as np
except ImportError:  # the one dependency needed before anything else can be said
    sys.exit("error: run.py needs numpy and onnxruntime; pip install numpy onnxruntime")

# The newest bundle format this file reads. 2: golden inputs and outputs may be .npz files of
# named arrays (several inputs or outputs), a relative bound ("rtol") and "top1", "source".
BUNDLE_FORMAT = 2
RESULT_FORMAT = 1
KIND, RESULT_KIND = "kdx-bundle", "kdx-bench-result"
PORTABLE = "portable"  # a variant's target when it is the bundle's portable model
MANIFEST = "manifest.json"
TEXT_SUFFIXES = (".txt", ".jsonl", ".csv", ".tsv")
TEXT_BATCH = 32  # texts per inference, each batch padded to its longest text
NEEDS_TOKENIZERS = (
    "this bundle holds a text model: run.py needs the tokenizers package to read text; "
    "pip install tokenizers"
)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".pgm", ".ppm", ".tif", ".tiff")
METHOD = (
    "inputs bound once (ONNX Runtime IO binding), synchronous inference, warm-up then "
    ">= min_iters iterations and >= min_time_s per model, teacher and student interleaved in "
    "rounds (kdexport benchmark's method, run by the bundle's run.py)"
)


class BundleError(Exception):
    """A problem with the bundle or the input, in one line with the fix."""


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _ort():
    try:
        import onnxruntime
    except ImportError as e:
        raise BundleError(f"run.py needs onnxruntime ({e}); pip install onnxruntime") from None
    return onnxruntime


def inside(root: Path, name: str) -> Path:
    """``root / name``, refusing a name from the manifest that would leave the bundle."""
    parts = name.replace("\\", "/").split("/")
    if not name or name.startswith("/") or ":" in parts[0] or ".." in parts:
        raise BundleError(f"manifest names '{name}', a path outside the bundle; refusing it")
    return root / name


def read_manifest(root: Path) -> dict:
    """The bundle's manifest, checked for its kind and format version."""
    path = root / MANIFEST
    if not path.is_file():
        raise BundleError(f"no {MANIFEST}: not a kdexport bundle (unpack the whole archive)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise BundleError(f"{MANIFEST}: unreadable ({e}); copy the bundle again") from None
    if not isinstance(manifest, dict) or manifest.get("kind") != KIND:
        raise BundleError(f"{MANIFEST}: not a kdexport bundle manifest")
    version = manifest.get("format_version")
    if not isinstance(version, int) or version > BUNDLE_FORMAT:
        raise BundleError(
            f"bundle format {version} is newer than this reader understands ({BUNDLE_FORMAT}); "
            "upgrade kdexport, or use the run.py inside that bundle"
        )
    bad = _malformed(manifest)
    if bad:
        raise BundleError(f"{MANIFEST}: malformed, '{bad}' missing or wrong; copy the bundle again")
    return manifest


def _malformed(manifest: dict) -> str | None:
    """The first manifest key that this reader needs and cannot use, if any."""
    for key, kind in (("name", str), ("files", dict), ("models", dict), ("golden", dict)):
        if not isinstance(manifest.get(key), kind):
            return key
    for key, kind in (
        ("labels", list),
        ("preprocessing", dict),
        ("compiled", dict),
        ("text", dict),
    ):
        if not isinstance(manifest.get(key, kind()), kind):
            return key
    for name, e in manifest["files"].items():
        if not (isinstance(e, dict) and isinstance(e.get("sha256"), str)):
            return f"files.{name}"
        if not isinstance(e.get("bytes"), int):
            return f"files.{name}"
    student = manifest["models"].get("student")
    if not (isinstance(student, dict) and isinstance(student.get("inputs"), list)):
        return "models.student"
    golden = manifest["golden"]
    for key, kind in (("input", str), ("outputs", dict), ("tolerance", (int, float))):
        if not isinstance(golden.get(key), kind):
            return f"golden.{key}"
    for key, kind in (("rtol", (int, float)), ("batch_axes", dict), ("batch", int)):
        if key in golden and not isinstance(golden[key], kind):
            return f"golden.{key}"
    return None


def check_files(root: Path, manifest: dict) -> int:
    """Every listed file present with its size and sha256, and no file that is not listed."""
    files = manifest.get("files", {})
    for name, entry in sorted(files.items()):
        path = inside(root, name)
        if path.is_symlink():  # a link could point anywhere; bundles are written without any
            raise BundleError(f"{name}: is a link, bundles hold only files; copy the bundle again")
        if not path.is_file():
            raise BundleError(f"{name}: missing from the bundle; copy the whole bundle again")
        if path.stat().st_size != entry["bytes"] or sha256(path) != entry["sha256"]:
            raise BundleError(
                f"{name}: checksum mismatch (changed or corrupted); copy the bundle again"
            )
    for path in sorted(root.rglob("*")):
        name = path.relative_to(root).as_posix()
        # Dot files (as kdexport's own file tables) and byte-code caches are never read.
        skipped = any(p.startswith(".") or p == "__pycache__" for p in name.split("/"))
        if path.is_dir() or skipped or name == MANIFEST or name in files:
            continue
        raise BundleError(f"{name}: not part of the bundle (extra file); remove it")
    return len(files)


def _said(e: Exception) -> str:
    """ONNX Runtime's message in one short line, without its status prefix or C++ frames."""
    text = " ".join((str(e).strip() or type(e).__name__).split())
    text = re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ", "", text)
    return re.sub(r"/\S+\.(?:h|cc|cpp):\d+ [^()]*\([^()]*\)\s*", "", text)[:240]


def session(path: Path, provider: str = "CPUExecutionProvider", threads: int = 0):
    """An ONNX Runtime session on ``path`` (all graph optimisations) and what it runs with."""
    ort = _ort()
    opts = ort.SessionOptions()
    threads = threads or available_cpus()  # explicit and recorded, never ORT's "0 = all"
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    try:
        sess = ort.InferenceSession(str(path), opts, providers=[provider])
    except Exception as e:  # ORT raises its own types for models it cannot load
        newer = re.search(r"IR version|opset|official release", str(e))
        fix = f"; upgrade it: pip install -U onnxruntime (here {ort.__version__})" if newer else ""
        raise BundleError(
            f"{path.name}: ONNX Runtime cannot load it here ({_said(e)}){fix}"
        ) from None
    info = {
        "providers": sess.get_providers(),
        "intra_op_threads": threads,
        "graph_optimization_level": "all",
        "onnxruntime": ort.__version__,
    }
    return sess, info


class Bundle:
    """An unpacked bundle: its folder and manifest; sessions on its models."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.manifest = read_manifest(self.root)

    @property
    def modality(self) -> str:
        """The kind of input the bundle's model takes, as packaged ("modality"; a format-2
        bundle recorded it as its preprocessing's "kind"); "" for a bundle of any ONNX file."""
        recorded = self.manifest.get("preprocessing") or {}
        return self.manifest.get("modality") or recorded.get("kind", "")

    @property
    def id(self) -> str:
        """The sha256 of the manifest, which pins every file by its own sha256."""
        return sha256(self.root / MANIFEST)

    def model_path(self, role: str = "student", target: str | None = None) -> Path:
        """The portable model of ``role``, or its compiled form for ``target``."""
        if target is None:
            entry = self.manifest["models"].get(role)
            if not isinstance(entry, dict):
                raise BundleError(f"this bundle has no {role}; package it with --with-teacher")
            return inside(self.root, entry["file"])
        compiled = self.manifest.get("compiled", {})
        if target not in compiled:
            known = ", ".join(compiled) or "none"
            raise BundleError(f"no compiled form for target '{target}' (in the bundle: {known})")
        if compiled[target]["backend"] != "onnxruntime":
            raise BundleError(
                f"target '{target}' holds {compiled[target]['backend']} models; run.py runs "
                "ONNX Runtime models only"
            )
        if role not in compiled[target]["models"]:
            raise BundleError(f"this bundle has no {role} compiled for '{target}'")
        return inside(self.root, compiled[target]["models"][role])


def run_model(sess, feed: dict, what: str) -> dict:
    """Output name -> array; ONNX Runtime's own errors (bad shapes, kernels) as one line."""
    names = [o.name for o in sess.get_outputs()]
    quiet = _ort().RunOptions()
    quiet.log_severity_level = 4  # the error is raised, and said once, below
    try:
        outs = sess.run(names, feed, quiet)
    except Exception as e:  # ORT raises its own types for inputs it cannot run
        raise BundleError(
            f"{what}: ONNX Runtime cannot run it on these inputs ({_said(e)})"
        ) from None
    return {n: outs[i] for i, n in enumerate(names)}  # no zip(strict=): run.py is Python 3.9+


def load_arrays(path: Path, names: list) -> dict:
    """Named arrays from a ``.npz``, or one ``.npy`` array under the first of ``names``."""
    try:
        data = np.load(path, allow_pickle=False)
        if isinstance(data, np.ndarray):
            return {names[0]: data}
        with data:
            return {k: data[k] for k in data.files}
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise BundleError(f"{path.name}: not a readable .npy/.npz array ({e})") from None


def golden_feed(bundle: Bundle) -> dict:
    """The golden input of every model input, by name."""
    names = [i["name"] for i in bundle.manifest["models"]["student"]["inputs"]]
    return load_arrays(inside(bundle.root, bundle.manifest["golden"]["input"]), names)


def _batch_axes(bundle: Bundle) -> dict:
    """Input name -> the axes the batch size sets ({} when the model's batch is fixed)."""
    golden = bundle.manifest["golden"]
    if "batch_axes" in golden:
        return golden["batch_axes"]
    return {bundle.manifest["models"]["student"]["inputs"][0]["name"]: [0]}  # a run's student


def _compare(out: dict, ref: dict, tol: tuple, top1: bool) -> tuple:
    """Max abs diff over every reference output, the worst excess over atol + rtol * |ref|,
    and the top-1 agreement of the first (None when not checked). NaN matches NaN."""
    diff, excess, agree = 0.0, 0.0, None
    for name, want in ref.items():
        got = np.asarray(out[name])
        if got.shape != want.shape:
            return float("inf"), float("inf"), 0.0 if top1 else None
        a, b = got.astype(np.float64), want.astype(np.float64)
        same = (a == b) | (np.isnan(a) & np.isnan(b))
        d = np.where(same, 0.0, np.abs(a - b))
        d = np.where(np.isnan(d), np.inf, d)
        if d.size:
            diff = max(diff, float(d.max()))
            excess = max(excess, float((d - tol[0] - tol[1] * np.abs(b)).max()))
    if top1:
        first, want = np.asarray(out[next(iter(ref))]), next(iter(ref.values()))
        agree = float(np.mean(first.argmax(axis=1) == want.argmax(axis=1)))
    return diff, excess, agree


def _golden(bundle: Bundle, path: Path, reference: str, provider: str, tol: tuple) -> dict:
    """Run the golden input through ``path``; compare with the stored ``reference`` outputs."""
    golden = bundle.manifest["golden"]
    feed = golden_feed(bundle)
    sess, _ = session(path, provider)
    label = path.relative_to(bundle.root).as_posix()
    out = run_model(sess, feed, label)
    names = list(out)
    ref = load_arrays(inside(bundle.root, golden["outputs"][reference]), names)
    if not set(ref) <= set(out):
        missing = ", ".join(sorted(set(ref) - set(out)))
        raise BundleError(f"{label}: has no output {missing} of the golden outputs")
    top1 = bool(golden.get("top1", True))
    diff, excess, agree = _compare(out, ref, tol, top1)
    result = {"max_abs_diff": diff, "top1_agreement": agree, "tolerance": tol[0], "rtol": tol[1]}
    result.update(samples=golden.get("samples"), outputs=len(ref))
    if excess > 0 or agree not in (None, 1.0):
        shown = "" if agree is None else f", top-1 agreement {agree:.1%}"
        raise BundleError(
            f"{label}: golden output differs, max abs diff {diff:.2e} (tolerance {tol[0]:g}"
            f"{f' + {tol[1]:g} x |golden|' if tol[1] else ''}){shown}; this model or this "
            "onnxruntime does not reproduce the build machine"
        )
    return result


def golden_line(name: str, g: dict) -> str:
    """One line of a verification report."""
    bound = f"{g['tolerance']:g}" + (f" + {g['rtol']:g} x |golden|" if g.get("rtol") else "")
    agree = g.get("top1_agreement")
    shown = "" if agree is None else f", top-1 agreement {agree:.0%}"
    return (
        f"{name}: golden output ok, max abs diff {g['max_abs_diff']:.1e} (tolerance {bound}){shown}"
    )


# --- verify: checksums, then the golden outputs ----------------------------------------------


def verify(root: Path) -> dict:
    """Checksums of every file, then each model's golden output; raise BundleError on failure."""
    bundle = Bundle(root)
    count = check_files(bundle.root, bundle.manifest)
    report = {"bundle": bundle.manifest["name"], "id": bundle.id, "files": count}
    report.update(golden={}, skipped={})
    golden = bundle.manifest["golden"]
    tol = (float(golden["tolerance"]), float(golden.get("rtol", 0.0)))
    for role in bundle.manifest["models"]:
        path = bundle.model_path(role)
        report["golden"][path.name] = _golden(bundle, path, role, "CPUExecutionProvider", tol)
    available = _ort().get_available_providers()
    for target, entry in bundle.manifest.get("compiled", {}).items():
        need = entry.get("provider") if entry["backend"] == "onnxruntime" else entry["backend"]
        for role in entry["models"]:
            ref = f"compiled/{target}/{role}"
            if need not in available or ref not in golden["outputs"]:
                report["skipped"][f"{target}/{role}"] = f"checksums only (runs on {need})"
                continue
            try:
                path = bundle.model_path(role, target)
                result = _golden(bundle, path, ref, need, (entry["tolerance"], 0.0))
                report["golden"][f"{target}/{path.name}"] = result
            except BundleError as e:  # compiled forms may hold kernels of one CPU family only
                if "cannot load it here" not in str(e):
                    raise
                report["skipped"][f"{target}/{role}"] = f"checksums only ({e})"
    return report


# --- inputs: what a bundle's model takes, read by the reader of its modality ----------------
# One reader per modality in ``INPUTS``, keyed by the bundle's recorded modality: how predict
# reads raw input, the measuring points bench takes, and the inputs it times at each point.
# kdexport's architecture check counts a modality's own code here as inside its modality.


def open_image(path, mode: str):
    """An image file as a Pillow image in ``mode`` ("L" or "RGB"): EXIF orientation applied,
    16-bit pixels scaled to 8 bits, CMYK, palette and grey files converted. Pillow's own errors
    (not an image, truncated) pass through."""
    from PIL import Image, ImageOps

    with Image.open(path) as img:
        img = ImageOps.exif_transpose(img)  # a phone's portrait photo stands as it was taken
        if img.mode.startswith("I"):  # 16-bit (I;16) or 32-bit integer grey
            wide = np.clip(np.asarray(img, dtype=np.float64), 0, 65535)
            img = Image.fromarray(np.round(wide / 257).astype(np.uint8), "L")
        return img.convert(mode)


def centre_box(width: int, height: int, size, crop: float) -> tuple:
    """The region of a ``width`` x ``height`` image that the evaluation transform resizes to
    ``size`` (height, width): the whole image (``crop`` 0: resized to size, aspect not kept),
    or the centre crop that resizing the image to cover size / ``crop`` (timm's crop_pct: 0.875
    reads the central 87.5%; 1: the shorter side to size) and cropping size leaves."""
    if not crop:
        return (0.0, 0.0, float(width), float(height))
    scale = max(size[0] / (crop * height), size[1] / (crop * width))
    w, h = size[1] / scale, size[0] / scale
    left, top = (width - w) / 2, (height - h) / 2
    return (left, top, left + w, top + h)


def as_array(img) -> np.ndarray:
    x = np.asarray(img, dtype=np.uint8)
    return x[:, :, None] if x.ndim == 2 else x


def decode_image(path: Path, mode: str, size, crop: float = 0.0) -> np.ndarray:
    """The one image decoder, kdexport's (training) and run.py's (devices): ``open_image``,
    then the evaluation transform: resized bilinearly to ``size`` (height, width) when given,
    from the region ``centre_box`` gives for ``crop``; uint8 (H, W, C)."""
    from PIL import Image

    img = open_image(path, mode)
    if size:
        box = centre_box(img.width, img.height, size, crop)
        img = img.resize((int(size[1]), int(size[0])), Image.BILINEAR, box=box)
    return as_array(img)


def _read_image(path: Path, pre: dict, shape: list) -> np.ndarray:
    """An image as one model input: channels, resize, pixel scale, mean/std, NCHW."""
    try:
        import PIL  # noqa: F401 (decode_image's: said here in one line when it is missing)
    except ImportError:
        raise BundleError(
            f"{path.name}: reading images needs Pillow (pip install pillow); or give a .npy array"
        ) from None
    channels, height, width = (shape[1], shape[2], shape[3]) if len(shape) == 4 else (0, 0, 0)
    if not all(isinstance(d, int) for d in (channels, height, width)) or channels not in (1, 3):
        raise BundleError(f"the model input {shape} is not an image; give a .npy array")
    try:
        mode, crop = "L" if channels == 1 else "RGB", float(pre.get("crop_fraction") or 0.0)
        x = decode_image(path, mode, (height, width), crop)
    except (OSError, ValueError) as e:
        raise BundleError(f"{path.name}: not a readable image ({e})") from None
    x = x.astype(np.float32) * float(pre.get("image_scale", 1 / 255))
    mean = np.asarray(pre.get("mean") if pre.get("mean") is not None else 0.0, np.float32)
    std = np.asarray(pre.get("std") if pre.get("std") is not None else 1.0, np.float32)
    return ((x - mean) / std).transpose(2, 0, 1)[None].astype(np.float32)


def _check_array(label: str, x: np.ndarray, spec: dict) -> np.ndarray:
    """``x`` as a batch for the input ``spec``; another dtype or shape is refused."""
    if x.dtype != np.dtype(spec["dtype"]):
        raise BundleError(
            f"{label}: dtype {x.dtype}, the model takes {spec['dtype']}; "
            f"save it as x.astype(numpy.{spec['dtype']})"
        )
    want = [d if isinstance(d, int) else None for d in spec["shape"]]
    got = x.shape if x.ndim == len(want) else (1, *x.shape)  # one sample without a batch axis
    if len(got) != len(want) or any(want[i] not in (None, got[i]) for i in range(len(want))):
        shown = "(" + ", ".join("N" if d is None else str(d) for d in want) + ")"
        raise BundleError(
            f"{label}: shape {tuple(x.shape)}, the model takes {shown} or one sample "
            "without the batch axis"
        )
    return np.ascontiguousarray(x.reshape(got))


def load_input(path: Path, spec: dict, pre: dict) -> np.ndarray:
    """A batch for a one-input model from a .npy array or an image."""
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return _read_image(path, pre, spec["shape"])
    if path.suffix.lower() != ".npy":
        raise BundleError(
            f"{path}: give a .npy array or an image ({', '.join(IMAGE_SUFFIXES)}), "
            "or a .npz of arrays named as the inputs"
        )
    try:
        x = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise BundleError(f"{path}: not a readable .npy array ({e})") from None
    if not isinstance(x, np.ndarray):
        x.close()
        raise BundleError(f"{path}: holds several arrays (.npz); save one array with numpy.save")
    return _check_array(path.name, x, spec)


def load_inputs(path: Path, specs: list, pre: dict) -> dict:
    """Input name -> batch: a .npz of arrays named as the inputs, or for a one-input model a
    .npy array or an image."""
    names = [s["name"] for s in specs]
    if path.suffix.lower() != ".npz":
        if len(specs) > 1:
            raise BundleError(
                f"{path.name}: the model takes {len(specs)} inputs ({', '.join(names)}); give a "
                f".npz of one array per input, e.g. numpy.savez('x.npz', {names[0]}=...)"
            )
        return {names[0]: load_input(path, specs[0], pre)}
    arrays = load_arrays(path, names)
    if sorted(arrays) != sorted(names):
        raise BundleError(
            f"{path.name}: holds {', '.join(sorted(arrays)) or 'no arrays'}, the model takes "
            f"{', '.join(names)}; save one array per input name with numpy.savez"
        )
    return {
        s["name"]: _check_array(f"{path.name}[{s['name']}]", arrays[s["name"]], s) for s in specs
    }


def _describe(outputs: dict, first: int = 5) -> list:
    """Each output's name, dtype, shape and first values; the top class index per sample of a
    2-D float output (a foreign model has no labels)."""
    rows = []
    for name, a in outputs.items():
        a = np.asarray(a)
        row = {"name": name, "dtype": a.dtype.name, "shape": list(a.shape)}
        row["first"] = a.reshape(-1)[:first].tolist()
        if a.ndim == 2 and a.dtype.kind == "f" and a.shape[1]:
            row["top_class"] = a.argmax(axis=1).tolist()
        rows.append(row)
    return rows


class ArrayInputs:
    """Arrays (a ``.npy`` for a one-input model, a ``.npz`` named as the inputs) and, for a
    one-input image model, image files or a folder of them (one prediction per image, the
    evaluation transform the manifest records applied): image bundles and bundles of any ONNX
    file. Measuring points are batch sizes."""

    def __init__(self, bundle: Bundle):
        self.bundle = bundle
        self.model = bundle.manifest["models"]["student"]
        self.section = bundle.manifest.get(bundle.modality) or {}

    def read(self, input_path, texts: list) -> tuple:
        """(batches of named inputs, what the prediction adds to its result)."""
        if texts:
            raise BundleError("--text: this bundle's model does not take text; give an input file")
        if input_path is None:
            raise BundleError("give an input file")
        pre, path = self.bundle.manifest.get("preprocessing", {}), Path(input_path)
        if path.is_dir() and len(self.model["inputs"]) == 1:
            files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                raise BundleError(f"{path}: no images in it ({', '.join(IMAGE_SUFFIXES)})")
            spec = self.model["inputs"][0]
            images = np.concatenate([load_input(f, spec, pre) for f in files])
            return [{spec["name"]: images}], {"files": [f.name for f in files]}
        return [load_inputs(path, self.model["inputs"], pre)], {}

    def points(self, given) -> list:
        """``--batch-sizes`` (default 1,64), or the golden batch of a model whose batch is fixed."""
        shaped = [p for p in given or [] if set(parse_point(p)) != {"batch"}]
        if shaped:
            raise BundleError(
                f"--batch-sizes {shaped[0]}: BATCHxTOKENS is for a text model's bundle; give "
                "batch sizes such as 1,64"
            )
        fixed = self.bundle.manifest["golden"].get("batch")
        if _batch_axes(self.bundle) or fixed is None:
            return given or [1, 64]
        if given and set(given) != {fixed}:
            raise BundleError(
                f"this model's batch is fixed at {fixed} (or it has none); drop --batch-sizes "
                f"or give --batch-sizes {fixed}"
            )
        return [fixed]

    def at(self, feed: dict, axes: dict, point) -> dict:
        """The golden inputs at ``point``: samples repeated along each input's batch axes."""
        return batch_feed(feed, axes, parse_point(point)["batch"])


def read_texts(path: Path) -> list:
    """The texts of a .txt file (one per non-empty line), or of the ``text`` column of a
    .jsonl/.csv/.tsv file; each a text or a (text, text_pair) pair where a ``text_pair``
    column is given."""
    suffix = path.suffix.lower()
    try:
        raw = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise BundleError(f"{path.name}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    if suffix == ".txt":
        texts = [line.strip() for line in raw.splitlines() if line.strip()]
    elif suffix == ".jsonl":
        rows = []
        for i, line in enumerate(raw.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as e:
                raise BundleError(f"{path.name}, line {i}: not JSON ({e})") from None
            if not isinstance(row, dict):
                raise BundleError(f"{path.name}, line {i}: give one JSON object per line")
            rows.append((i, row))
        texts = _text_column(path, rows)
    else:
        import csv
        import io

        reader = csv.DictReader(io.StringIO(raw), delimiter="\t" if suffix == ".tsv" else ",")
        try:
            rows = [(i, row) for i, row in enumerate(reader, 2)]
        except csv.Error as e:
            raise BundleError(f"{path.name}: not readable as {suffix[1:].upper()} ({e})") from None
        if "text" not in (reader.fieldnames or []):
            shown = ", ".join(reader.fieldnames or []) or "none"
            raise BundleError(f"{path.name}: no 'text' column (columns: {shown}); name it text")
        texts = _text_column(path, rows)
    if not texts:
        raise BundleError(f"{path.name}: holds no text")
    return texts


def _text_column(path: Path, rows: list) -> list:
    """Each row's ``text`` (with its ``text_pair`` where the row has one)."""
    texts = []
    for line, row in rows:
        text, pair = row.get("text"), row.get("text_pair")
        if not isinstance(text, str):
            raise BundleError(f"{path.name}, line {line}: no 'text' string; give each row one")
        texts.append((text, pair) if isinstance(pair, str) and pair else text)
    return texts


def tokenize(bundle: Bundle, texts: list) -> tuple:
    """The texts as batches of the model's named int64 inputs, as the run tokenised them:
    special tokens added, truncated to max_length, each batch padded to its longest text.
    Returns (batches, how many texts were cut to max_length)."""
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise BundleError(NEEDS_TOKENIZERS) from None
    text = inputs_of(bundle).section
    path = inside(bundle.root, text["tokenizer"])
    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as e:  # tokenizers raises its own error types for files it cannot read
        raise BundleError(f"{path.name}: the tokenizers package cannot read it ({e})") from None
    max_length, pad_id = int(text["max_length"]), int(text["pad_id"])
    tok.no_padding()
    tok.enable_truncation(max_length)
    names = [i["name"] for i in bundle.manifest["models"]["student"]["inputs"]]
    batches, cut = [], 0
    for start in range(0, len(texts), TEXT_BATCH):
        encoded = tok.encode_batch(texts[start : start + TEXT_BATCH])
        longest = max(1, max(len(e.ids) for e in encoded))
        rows = {
            "input_ids": np.full((len(encoded), longest), pad_id, np.int64),
            "attention_mask": np.zeros((len(encoded), longest), np.int64),
            "token_type_ids": np.zeros((len(encoded), longest), np.int64),
        }
        for i, e in enumerate(encoded):
            n = len(e.ids)
            rows["input_ids"][i, :n] = e.ids
            rows["attention_mask"][i, :n] = e.attention_mask
            rows["token_type_ids"][i, :n] = e.type_ids
            cut += bool(e.overflowing)
        batches.append({name: rows[name] for name in names})
    return batches, cut


# kdexport benchmark's default benchmark.text_shapes (kdexport reads it here).
TEXT_SHAPES = ("1x16", "1x128", "8x128")


def text_shapes(shapes, max_length: int) -> list:
    """The text shapes "BxS" of ``shapes`` (default ``TEXT_SHAPES``) of at most ``max_length``
    tokens, else one example of ``max_length`` tokens: what bench times a text bundle at."""
    fit = [s for s in shapes or TEXT_SHAPES if parse_point(s).get("seq", 0) <= max_length]
    return fit or [format_point({"batch": 1, "seq": max_length})]


def text_feed(feed: dict, shape) -> dict:
    """Named token inputs of B examples of exactly S tokens (``shape`` "BxS"), for timing: the
    first golden example's tokens (where its attention_mask is 1) repeated to S tokens with a
    full mask, tiled to B rows. The rule of kdexport.modalities.text.tokens.at_shape, on named
    arrays: run.py keeps its own copy because it runs without kdexport."""
    point = parse_point(shape)
    batch, seq = point["batch"], point.get("seq", 16)
    mask = feed.get("attention_mask")
    tokens = max(int(mask[0].sum()), 1) if mask is not None else next(iter(feed.values())).shape[1]
    out = {}
    for name, x in feed.items():
        row = np.ones(seq, x.dtype) if name == "attention_mask" else np.resize(x[0, :tokens], seq)
        out[name] = np.ascontiguousarray(np.tile(row, (batch, 1)))
    return out


class TextInputs(ArrayInputs):
    """A text model's bundle (its manifest's "text" section ships the tokenizer): predict reads
    a text file or ``--text`` (or a .npz of token arrays); bench times shapes "BxS"."""

    def read(self, input_path, texts: list) -> tuple:
        suffix = "" if input_path is None else Path(input_path).suffix.lower()
        if not texts and suffix not in TEXT_SUFFIXES:
            if input_path is None:
                raise BundleError("give an input file or --text TEXT")
            return super().read(input_path, texts)
        if input_path is not None and texts:
            raise BundleError("give a text file or --text, not both")
        if input_path is not None:
            texts = read_texts(Path(input_path))
        batches, cut = tokenize(self.bundle, list(texts))
        given = str(input_path) if input_path is not None else "--text"
        shape = [len(texts), max(f["input_ids"].shape[1] for f in batches)]
        return batches, {"input": given, "texts": texts, "truncated": cut, "shape": shape}

    def points(self, given) -> list:
        """``--batch-sizes`` as shapes "BxS" of at most max_length tokens; default the run's
        text shapes recorded in the manifest."""
        max_length = int(self.section["max_length"])
        for size in given or []:
            point = parse_point(size)
            if "seq" not in point:
                raise BundleError(
                    f"--batch-sizes {size}: this bundle's model takes text, timed per batch and "
                    f"sequence length; give BATCHxTOKENS, e.g. 1x{min(128, max_length)}"
                )
            if point["seq"] > max_length:
                raise BundleError(
                    f"--batch-sizes {size}: {point['seq']} tokens is over this model's "
                    f"max_length {max_length}; give at most {point['batch']}x{max_length}"
                )
        return given or self.section.get("shapes") or text_shapes(None, max_length)

    def at(self, feed: dict, axes: dict, point) -> dict:
        return text_feed(feed, point)


# Speech: WAV files read as the run read them (kdexport.modalities.speech.audio): PCM by the
# standard library's wave module (soundfile, where installed, for float WAV), float32 in [-1, 1]
# as soundfile gives it, padded with zeros at the end to the window; the front end is inside the
# model's graph, so nothing else is computed here.
PCM_SCALE = {1: 128.0, 2: 32768.0, 3: 8388608.0, 4: 2147483648.0}  # bytes per sample -> full scale


def _pcm(path: Path) -> tuple:
    """(samples, channels) float32 and the rate of a PCM WAV file, by the wave module."""
    import wave

    with wave.open(str(path), "rb") as w:
        width, channels, rate = w.getsampwidth(), w.getnchannels(), w.getframerate()
        raw = w.readframes(w.getnframes())
    if width == 1:  # 8-bit WAV is unsigned
        x = np.frombuffer(raw, np.uint8).astype(np.float32) - 128.0
    elif width == 3:  # 24-bit little-endian: widen each sample to 32 bits
        b = np.frombuffer(raw, np.uint8).reshape(-1, 3).astype(np.int32)
        x = ((b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)) << 8 >> 8).astype(np.float32)
    else:
        x = np.frombuffer(raw, {2: "<i2", 4: "<i4"}[width]).astype(np.float32)
    return (x / PCM_SCALE[width]).reshape(-1, channels), rate


def read_wav(path: Path, rate: int, samples: int) -> np.ndarray:
    """One clip as ``samples`` float32 values at ``rate`` Hz, mono; other files are one line."""
    try:
        data, got = _pcm(path)
    except Exception as pcm_error:  # the wave module reads PCM only; soundfile reads the rest
        try:
            import soundfile

            data, got = soundfile.read(str(path), dtype="float32", always_2d=True)
        except ImportError:
            raise BundleError(
                f"{path.name}: not a PCM WAV file ({pcm_error}); convert it to 16-bit PCM "
                f"(sox {path.name} -b 16 out.wav) or install soundfile to read it"
            ) from None
        except Exception as e:  # libsndfile's own errors: the file is not audio
            raise BundleError(f"{path.name}: not a readable WAV file ({e})") from None
    if data.shape[1] != 1:
        raise BundleError(
            f"{path.name}: {data.shape[1]} channels where mono is expected; convert it "
            f"(sox {path.name} -c 1 mono.wav)"
        )
    if got != rate:
        raise BundleError(
            f"{path.name}: {got} Hz, the model takes {rate} Hz; resample it "
            f"(sox {path.name} -r {rate} out.wav)"
        )
    if not len(data) or len(data) > samples:
        raise BundleError(
            f"{path.name}: {len(data)} samples; the model takes clips of 1 to {samples} "
            f"({samples / rate:g} s); trim it (sox {path.name} out.wav trim 0 {samples / rate:g})"
        )
    return np.concatenate([data[:, 0], np.zeros(samples - len(data), np.float32)])


class SpeechInputs(ArrayInputs):
    """A speech model's bundle (manifest "speech": the rate and the window): predict reads a
    .wav file or a folder of them (or a .npy of waveforms), one prediction per clip."""

    def read(self, input_path, texts: list) -> tuple:
        path = None if input_path is None else Path(input_path)
        if texts or path is None or not (path.is_dir() or path.suffix.lower() == ".wav"):
            return super().read(input_path, texts)
        files = (
            sorted(p for p in path.iterdir() if p.suffix.lower() == ".wav")
            if path.is_dir()
            else [path]
        )
        if not files:
            raise BundleError(f"{path}: no .wav files in it")
        rate, samples = int(self.section["sample_rate"]), int(self.section["samples"])
        waves = np.stack([read_wav(f, rate, samples) for f in files])
        return [{self.section["input"]: waves}], {"files": [f.name for f in files]}


INPUTS = {"image": ArrayInputs, "text": TextInputs, "speech": SpeechInputs}  # modality -> reader


def inputs_of(bundle: Bundle) -> ArrayInputs:
    """The reader of the bundle's modality (arrays for a bundle of any ONNX file)."""
    return INPUTS.get(bundle.modality, ArrayInputs)(bundle)


# --- end inputs ---------------------------------------------------------------------------


# --- predict: top classes of what the reader read --------------------------------------------


def predict(
    root: Path, input_path, top: int = 3, pick: dict | None = None, texts: list | None = None
) -> dict:
    """Top classes of every sample in ``input_path`` from the variant ``pick`` (role, target,
    threads; default the portable student); for a foreign ONNX file, its outputs. The bundle's
    modality reads the input (``INPUTS``): a text model's also takes a text file, or ``texts``."""
    bundle = Bundle(root)
    pick = pick or {"role": "student", "target": None}
    model = bundle.manifest["models"]["student"]
    feeds, extra = inputs_of(bundle).read(input_path, texts or [])
    path = bundle.model_path(pick["role"], pick["target"])
    sess, _ = session(path, threads=pick.get("threads", 0))
    outs = [run_model(sess, feed, path.name) for feed in feeds]
    shapes = {n: list(x.shape) for n, x in feeds[0].items()}
    variant = variant_name(pick["role"], pick["target"])
    if bundle.manifest.get("source") == "onnx-file":
        return {"input": str(input_path), "shapes": shapes, "outputs": _describe(outs[0])}
    logits = np.concatenate([next(iter(o.values())) for o in outs])
    z = logits - logits.max(axis=1, keepdims=True)
    probs = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    labels = bundle.manifest.get("labels") or [str(i) for i in range(probs.shape[1])]
    samples = []
    for row in probs:
        best = np.argsort(-row)[:top]
        samples.append([{"label": labels[i], "class": int(i), "p": float(row[i])} for i in best])
    result = {
        "input": str(input_path),
        "variant": variant,
        "shape": shapes[model["inputs"][0]["name"]],
        "predictions": samples,
    }
    return {**result, **extra}


# --- measure: the timing loop, noise, CPUs, this device --------------------------------------


def timed(call, iters: int, seconds: float) -> list:
    """Run ``call`` at least ``iters`` times and ``seconds`` long; each latency in ms."""
    times = []
    clock = time.perf_counter_ns
    end = clock() + int(seconds * 1e9)
    while len(times) < iters or clock() < end:
        t0 = clock()
        call()
        times.append((clock() - t0) / 1e6)
    return times


def measure_rounds(calls: dict, opts: dict) -> dict:
    """Warm up each call, then time them interleaved in ``rounds`` alternating slices.

    Returns ``{"samples": name -> [samples of round 1, round 2, ...], "noise": [per round]}``:
    per-round samples let any comparison take a ratio per round (``paired``), so a burst of
    load from a neighbour lands on both sides of that round's ratio. The noise monitor
    (``read_noise``) is sampled before and after every round. With ``until_stable_s`` > 0,
    rounds go on (up to that many seconds) until the first two calls' ratio interval is
    narrower than ``stable_bound`` (relative IQR width).
    """
    for call in calls.values():
        timed(call, opts["warmup_iters"], opts["warmup_s"])
    rounds, names = opts["rounds"], list(calls)
    iters, seconds = -(-opts["min_iters"] // rounds), opts["min_time_s"] / rounds
    samples, noise = {k: [] for k in calls}, []
    limit, bound = opts.get("until_stable_s", 0) or 0, opts.get("stable_bound", 0.05)
    end = time.monotonic() + limit
    while True:
        before = read_noise()
        for name, call in calls.items():
            samples[name].append(timed(call, iters, seconds))
        noise.append(noise_between(before, read_noise()))
        done = len(samples[names[0]]) >= rounds
        if done and (limit <= 0 or time.monotonic() >= end or len(names) < 2):
            break
        if done and paired(samples[names[0]], samples[names[1]])["rel_iqr"] <= bound:
            break
    return {"samples": samples, "noise": noise}


def measure(calls: dict, opts: dict) -> dict:
    """Warm up each call, then time them interleaved in ``rounds`` slices; name -> samples."""
    by_round = measure_rounds(calls, opts)["samples"]
    return {k: [v for r in rounds for v in r] for k, rounds in by_round.items()}


def _quartiles(values: list) -> tuple:
    """25th, 50th and 75th percentile (numpy's default linear interpolation)."""
    q1, q2, q3 = np.percentile(np.asarray(values, dtype=float), [25, 50, 75])
    return float(q1), float(q2), float(q3)


def paired(a_rounds: list, b_rounds: list) -> dict:
    """The ratio a / b measured in alternating rounds: per round, the median of a's samples over
    the median of b's (a round may be given as its samples or as its median already); reported as the median of those ratios and their interquartile range
    (IQR, 25th-75th percentile). ``rel_iqr`` is the IQR's width over the median."""
    n = min(len(a_rounds), len(b_rounds))  # zip(strict=) needs Python 3.10; run.py runs on 3.9
    ratios = [float(np.median(a_rounds[i]) / np.median(b_rounds[i])) for i in range(n)]
    q1, med, q3 = _quartiles(ratios)
    return {
        "ratio": med,
        "iqr": [q1, q3],
        "rel_iqr": (q3 - q1) / med if med else 0.0,
        "rounds": len(ratios),
        "round_ratios": ratios,
    }


def round_spread(rounds: list) -> float:
    """How far one model's per-round medians spread: their IQR over their median (a round may be
    given as its samples or its median)."""
    q1, med, q3 = _quartiles([float(np.median(r)) for r in rounds])
    return (q3 - q1) / med if med else 0.0


# A measurement is unstable when other processes used more than this share of all CPUs' time
# during its rounds, or when its per-round ratios (or medians) spread wider than this (IQR / median).
BUSY_SHARE = 0.2
SPREAD_BOUND = 0.10


def _read(root: str, rel: str) -> str | None:
    try:
        with open(os.path.join(root, rel), encoding="utf-8") as f:
            return f.read()
    except (OSError, ValueError):
        return None


def _sum_files(root: str, pattern: str) -> list:
    values = []
    for path in sorted(glob.glob(os.path.join(root, pattern))):
        text = _read("/", path)
        if text and text.strip().isdigit():
            values.append(int(text.strip()))
    return values


def read_noise(root: str = "/") -> dict:
    """What the OS says cheaply about the machine's load now (Linux; missing figures are None):
    1-minute load average, all CPUs' busy and total jiffies (/proc/stat), this process's own
    CPU time with its waited-for children (/proc/self/stat), the mean CPU frequency (MHz) and
    the thermal throttling events so far."""
    snap = {"t": time.monotonic(), "load_avg": None, "busy": None, "total": None, "own": None}
    load = _read(root, "proc/loadavg")
    if load:
        snap["load_avg"] = float(load.split()[0])
    stat = _read(root, "proc/stat")
    if stat and stat.startswith("cpu "):
        f = [int(v) for v in stat.splitlines()[0].split()[1:]]
        # user nice system idle iowait irq softirq steal; guest time is already in user.
        f += [0] * (8 - len(f))
        snap["busy"] = f[0] + f[1] + f[2] + f[5] + f[6] + f[7]
        snap["total"] = snap["busy"] + f[3] + f[4]
    own = _read(root, "proc/self/stat")
    if own:
        fields = own.rsplit(")", 1)[-1].split()  # after the command name, which may hold spaces
        snap["own"] = sum(int(v) for v in fields[11:15])  # utime stime cutime cstime
    freqs = _sum_files(root, "sys/devices/system/cpu/cpu[0-9]*/cpufreq/scaling_cur_freq")
    snap["freq_mhz"] = sum(freqs) / len(freqs) / 1000 if freqs else None
    throttles = _sum_files(root, "sys/devices/system/cpu/cpu[0-9]*/thermal_throttle/*_count")
    snap["throttle"] = sum(throttles) if throttles else None
    return snap


def noise_between(a: dict, b: dict) -> dict:
    """The load between two ``read_noise`` snapshots: the share of all CPUs' time that other
    processes used (busy jiffies less this process's own), the load average and frequency at
    the end, throttling events in between."""
    share = None
    if None not in (a["busy"], b["busy"], a["own"], b["own"]) and b["total"] > a["total"]:
        others = (b["busy"] - a["busy"]) - (b["own"] - a["own"])
        share = max(0.0, others / (b["total"] - a["total"]))
    thr = b["throttle"] - a["throttle"] if None not in (a["throttle"], b["throttle"]) else None
    return {
        "seconds": b["t"] - a["t"],
        "others_cpu_share": share,
        "load_avg": b["load_avg"],
        "freq_mhz": b["freq_mhz"],
        "throttle_events": thr,
    }


def noise_summary(noise: list) -> dict:
    """The rounds' noise in one figure each: the worst share of others, the load average,
    the lowest and highest frequency, the throttling events."""
    shares = [n["others_cpu_share"] for n in noise if n["others_cpu_share"] is not None]
    freqs = [n["freq_mhz"] for n in noise if n["freq_mhz"] is not None]
    thr = [n["throttle_events"] for n in noise if n["throttle_events"] is not None]
    loads = [n["load_avg"] for n in noise if n["load_avg"] is not None]
    return {
        "others_cpu_share_max": max(shares) if shares else None,
        "others_cpu_share_mean": sum(shares) / len(shares) if shares else None,
        "load_avg_max": max(loads) if loads else None,
        "freq_mhz_range": [min(freqs), max(freqs)] if freqs else None,
        "throttle_events": sum(thr) if thr else None,
    }


def unstable_reasons(noise: dict, spread: float) -> list:
    """Why a measurement cannot be trusted (empty when it can)."""
    reasons = []
    share = noise.get("others_cpu_share_max")
    if share is not None and share > BUSY_SHARE:
        reasons.append(f"other processes used {share:.0%} of the CPUs (bound {BUSY_SHARE:.0%})")
    if spread > SPREAD_BOUND:
        reasons.append(f"rounds spread {spread:.0%} (IQR / median; bound {SPREAD_BOUND:.0%})")
    if noise.get("throttle_events"):
        reasons.append(f"{noise['throttle_events']} thermal throttling events")
    return reasons


def available_cpus() -> int:
    """CPUs this process may run on (its affinity), the explicit thread count used for '0'."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def parse_cpus(text: str) -> set:
    """'0', '0-1' or '0,2-3' as a set of CPU numbers; ValueError naming what is wrong."""
    cpus = set()
    for part in text.replace(" ", "").split(","):
        lo, _, hi = part.partition("-")
        if not lo.isdigit() or (hi and not hi.isdigit()) or (hi and int(hi) < int(lo)):
            raise ValueError(f"'{text}' is not a CPU list; give e.g. 0 or 0-1 or 0,2")
        cpus.update(range(int(lo), int(hi or lo) + 1))
    have = set(range(os.cpu_count() or 1))
    missing = sorted(cpus - have)
    if missing:
        raise ValueError(
            f"'{text}' names CPU {missing[0]}, which this machine does not have (it has "
            f"0-{max(have)}); give e.g. 0 or 0-{max(have)}"
        )
    return cpus


def pin(text: str) -> list:
    """Pin this process (and the runtime threads it starts later) to the CPUs in ``text``."""
    cpus = parse_cpus(text)
    if not hasattr(os, "sched_setaffinity"):
        raise ValueError("pinning to CPUs needs Linux (os.sched_setaffinity); drop --cpus")
    os.sched_setaffinity(0, cpus)
    return sorted(cpus)


def summarize(ms: list) -> dict:
    """p50/p90/p99, mean, standard deviation and coefficient of variation, in ms."""
    a = np.asarray(ms)
    mean, std = float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0
    p50, p90, p99 = (float(v) for v in np.percentile(a, [50, 90, 99]))
    return {
        "p50_ms": p50,
        "p90_ms": p90,
        "p99_ms": p99,
        "mean_ms": mean,
        "std_ms": std,
        "cv": std / mean if mean else 0.0,
        "iterations": len(a),
    }


def _cpu() -> tuple:
    cpu, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                # x86 names the CPU "model name"; ARM boards say "Model" or "Hardware".
                if key in ("model name", "Model", "Hardware") and value.strip():
                    cpu = value.strip()
                elif key in ("flags", "Features"):
                    flags = set(value.split())
    except OSError:
        pass
    return cpu, flags


def fingerprint() -> dict:
    """The device and software a figure was measured on (as kdexport's, fewer versions)."""
    cpu, flags = _cpu()
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "asimd")
    return {
        "cpu": cpu,
        "logical_cores": os.cpu_count(),
        "machine": platform.machine(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "cpu_flags": [f for f in wanted if f in flags],
        "versions": {"onnxruntime": _ort().__version__, "numpy": np.__version__},
    }


def device_key(env: dict) -> str:
    """12 hex digits naming a device's hardware (CPU, logical cores, machine): the key a
    placement plan files each device under."""
    key = json.dumps([env.get("cpu"), env.get("logical_cores"), env.get("machine")])
    return hashlib.sha256(key.encode()).hexdigest()[:12]


def rss_mb() -> tuple:
    """(current, peak) resident memory of this process in MB, or (None, None) where unknown.

    Read from /proc/self/status (Linux: VmRSS, VmHWM): the peak there is this program's own,
    reset at exec, unlike getrusage's ru_maxrss, which keeps a large forked parent's.
    """
    found = {}
    for line in (_read("/proc/self", "status") or "").splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM") and value.split():
            found[key] = int(value.split()[0]) / 1024  # kB
    return found.get("VmRSS"), found.get("VmHWM")


def _bound(sess, feed: dict):
    """One inference on inputs bound once, outputs left on the CPU."""
    ort = _ort()
    binding = sess.io_binding()
    for name, x in feed.items():
        binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(x, "cpu", 0))
    for out in sess.get_outputs():
        binding.bind_output(out.name, "cpu", 0)

    def call() -> None:
        sess.run_with_iobinding(binding)
        binding.synchronize_outputs()

    return call


def _end_to_end(sess, feed: dict):
    """One inference from numpy inputs to numpy outputs, conversions included."""
    return lambda: sess.run(None, feed)


# --- measuring points: the one parser and formatter (kdexport imports them from here) ------
# A point names the size of each axis a latency is measured at: "batch=8", or for a text model
# "batch=1,seq=128" (one sequence of 128 tokens). Results key them in short form: "8", "1x128".
POINT_AXES = ("batch", "seq")


def parse_point(text) -> dict:
    """``"8"``, ``"batch=8"``, ``"1x128"`` or ``"batch=1,seq=128"`` -> {"batch": 1, "seq": 128}."""
    given = str(text).strip()
    if "=" in given:
        pairs = [part.partition("=") for part in given.split(",")]
        point = {k.strip(): v.strip() for k, _, v in pairs}
    else:
        parts = given.split("x")  # no zip(strict=): run.py is Python 3.9+
        fits = len(parts) <= len(POINT_AXES)
        point = {POINT_AXES[i]: v for i, v in enumerate(parts)} if fits else {"": given}
    if "batch" not in point or set(point) - set(POINT_AXES):
        raise ValueError(f"'{text}' is not a measuring point: give 8, 1x128 or batch=1,seq=128")
    if not all(v.isdigit() and int(v) > 0 for v in point.values()):
        raise ValueError(f"'{text}': each size must be a whole number of 1 or more")
    return {a: int(point[a]) for a in POINT_AXES if a in point}


def format_point(point: dict) -> str:
    """The short form results key a point by: "8", "1x128"."""
    return "x".join(str(point[a]) for a in POINT_AXES if a in point)


def point_order(point) -> tuple:
    """A measuring point's place in order: by batch, then tokens ("64" after "8", "8x128")."""
    return tuple(parse_point(point).values())


def point_label(point) -> str:
    """What a latency is measured at: "batch 8", or a text shape "shape 1x128"."""
    dims = parse_point(point)
    return f"shape {format_point(dims)}" if len(dims) > 1 else f"batch {dims['batch']}"


def batch_feed(feed: dict, axes: dict, size: int) -> dict:
    """The golden inputs at batch ``size``: samples repeated along each input's batch axes."""
    out = {}
    for name, x in feed.items():
        for axis in axes.get(name, []):
            x = np.take(x, np.arange(size) % x.shape[axis], axis=axis)
        out[name] = np.ascontiguousarray(x)
    return out


def _load(bundle: Bundle, roles: list, opts: dict, first: dict) -> tuple:
    """A session per role; each one's cold start and the memory its loading and first run
    added to this process (``model_mb``)."""
    sessions, result = {}, {}
    for role in roles:
        before = rss_mb()[0]
        t0 = time.perf_counter()
        path = bundle.model_path(role, opts["target"])
        sessions[role], info = session(path, threads=opts["threads"])
        t1 = time.perf_counter()
        run_model(sessions[role], first, path.name)
        cold = {"load_s": t1 - t0, "first_inference_s": time.perf_counter() - t1}
        after = rss_mb()[0]
        memory = {"model_mb": None if before is None else max(after - before, 0.0)}
        result[role] = {
            "file": path.name,
            "cold_start": cold,
            "runtime": info,
            "memory": memory,
            "latency": {},
        }
    return sessions, result


# --- bench: latency on this device -----------------------------------------------------------


def _roles(bundle: Bundle, target) -> list:
    """The models to time: teacher (when shipped) and student, portable or of ``target``."""
    roles = [r for r in ("teacher", "student") if r in bundle.manifest["models"]]
    if target:
        # A compiled model is compared only with the other compiled for the same target; a
        # target may hold the teacher alone (an INT8 student that failed its gate).
        compiled = bundle.manifest.get("compiled", {}).get(target, {}).get("models", {})
        roles = [r for r in roles if r in compiled]
        bundle.model_path(roles[0] if roles else "student", target)  # unknown, non-ORT
    return roles


def bench(root: Path, opts: dict) -> dict:
    """Latency of the student (and the teacher, when shipped) on this device, on the portable
    models or on ``opts["target"]``'s compiled forms."""
    bundle = Bundle(root)
    feed, axes, reader = golden_feed(bundle), _batch_axes(bundle), inputs_of(bundle)
    sizes = reader.points(opts.get("batch_sizes"))
    roles = _roles(bundle, opts["target"])
    first = batch_feed(feed, axes, 1) if axes else feed
    baseline = rss_mb()[0]  # python, numpy and onnxruntime, before any model
    sessions, result = _load(bundle, roles, opts, first)
    speedup, speedup_iqr, noise = {}, {}, []
    for size in sizes:
        xb = reader.at(feed, axes, size)
        bound = measure_rounds({r: _bound(s, xb) for r, s in sessions.items()}, opts)
        e2e = measure({r: _end_to_end(s, xb) for r, s in sessions.items()}, opts)
        noise += bound["noise"]
        for role in roles:
            rounds = bound["samples"][role]
            stats = summarize([v for r in rounds for v in r])
            stats["round_spread"] = round_spread(rounds)
            point = parse_point(size)
            stats["throughput_per_s"] = point["batch"] * 1000.0 / stats["p50_ms"]
            if "seq" in point:
                stats["tokens_per_s"] = point["batch"] * point["seq"] * 1000.0 / stats["p50_ms"]
            stats["end_to_end"] = summarize(e2e[role])
            result[role]["latency"][str(size)] = stats
        if len(roles) == 2:
            ratio = paired(bound["samples"]["teacher"], bound["samples"]["student"])
            speedup[str(size)], speedup_iqr[str(size)] = ratio["ratio"], ratio["iqr"]
    if len(roles) == 2:
        # Median of per-round ratios (teacher / student), with their IQR: see ``paired``.
        result["speedup"], result["speedup_iqr"] = speedup, speedup_iqr
    result["noise"] = noise_summary(noise)
    for role in roles:
        if baseline is not None:
            # A process that runs this model alone: the runtime's baseline plus the model.
            result[role]["memory"]["runtime_baseline_mb"] = baseline
            result[role]["memory"]["peak_rss_mb"] = baseline + result[role]["memory"]["model_mb"]
    opts = {**opts, "batch_sizes": sizes}
    return {**_result_head(bundle, opts, METHOD), "results": result}


def _result_head(bundle: Bundle, opts: dict, method: str) -> dict:
    """What every ``run.py bench`` result file begins with: kind, device, bundle, machine."""
    return {
        "kind": RESULT_KIND,
        "format_version": RESULT_FORMAT,
        "device": opts["device"],
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "created_unix": time.time(),
        "bundle": {"name": bundle.manifest["name"], "id": bundle.id},
        "environment": fingerprint(),
        "method": method,
        "options": {k: v for k, v in opts.items() if k != "device"},
    }


# --- serve: requests per second at a p99 bound, driven by MLCommons' LoadGen -------------------
# kdexport serve-bench runs the same engine on a run's compiled models (kdexport.serve).

SERVE_SCENARIOS = ("server", "offline")
NEEDS_LOADGEN = "needs MLCommons' LoadGen: pip install mlcommons-loadgen"
# A LoadGen run lasts its duration and at least this many queries: LoadGen's default for Offline;
# for Server, enough for its early-stopping estimate to confirm a 99th percentile (with none
# over the bound it needs 459 queries; each query over the bound asks for more).
MIN_QUERIES = {"offline": 100, "server": 1024}
QSL_SAMPLES = 1024  # the query sample library's size: every sample is the same request
KEPT_LOGS = ("mlperf_log_summary.txt", "mlperf_log_detail.txt")
SERVE_METHOD = (
    "MLCommons LoadGen in this process, PerformanceOnly: Offline (every sample queued) and "
    "Server (Poisson arrivals; a rate is VALID when its p99 latency, queueing included, is under "
    "the bound), the highest VALID rate found by bisection below the Offline throughput, a rate "
    "rejected after two INVALID runs"
)


def import_loadgen():
    """LoadGen's module (``mlperf_loadgen``), or None where it is not installed."""
    try:
        import mlperf_loadgen
    except ImportError:
        return None
    return mlperf_loadgen


class _Requests:
    """Queued requests, taken in batches: one lock held for a burst put and for a batch taken
    (not one per request, as a queue.Queue takes: with LoadGen calling into Python for every
    burst and answer, that per-request cost bounded a model of microseconds)."""

    def __init__(self):
        self.items, self.ready, self.closed = collections.deque(), threading.Condition(), False

    def put(self, samples) -> None:
        with self.ready:
            self.items.extend(samples)
            self.ready.notify_all()  # a worker waiting for a first request or for a batch to fill

    def close(self) -> None:
        with self.ready:
            self.closed = True
            self.ready.notify_all()

    def take(self, max_batch: int, wait_s: float) -> list | None:
        """Up to ``max_batch`` requests: the first queued and those queued within ``wait_s`` of
        this worker seeing it; None once closed and empty (every queued request is taken first)."""
        with self.ready:
            while True:
                while not self.items:
                    if self.closed:
                        return None
                    self.ready.wait()
                deadline = time.perf_counter() + wait_s
                while 0 < len(self.items) < max_batch and not self.closed:
                    left = deadline - time.perf_counter()
                    if left <= 0:
                        break
                    self.ready.wait(left)
                if self.items:  # else another worker took them while this one waited for more
                    return [self.items.popleft() for _ in range(min(max_batch, len(self.items)))]


class ServeWorkers:
    """Queued samples served by one thread per run function: a thread takes the first queued
    sample and the ones that arrive within ``wait_s``, up to ``max_batch``, runs them as one
    inference (``feeds[count]``) and tells LoadGen (``lg``) they are complete."""

    def __init__(self, lg, runs: list, feeds: dict, max_batch: int, wait_s: float):
        self.lg, self.feeds, self.max_batch, self.wait_s = lg, feeds, max_batch, wait_s
        self.requests = _Requests()
        self.errors = []  # (batch size, exception): raised by serve_setting once LoadGen is done
        self.threads = [threading.Thread(target=self._serve, args=(r,), daemon=True) for r in runs]
        for t in self.threads:
            t.start()

    def issue(self, samples) -> None:
        self.requests.put(samples)

    def flush(self) -> None:
        pass

    def _serve(self, run) -> None:
        while (batch := self.requests.take(self.max_batch, self.wait_s)) is not None:
            try:
                run(self.feeds[len(batch)])
            except Exception as e:  # the runtime's own types; raised once LoadGen is done
                self.errors.append((len(batch), e))
            self.lg.QuerySamplesComplete([self.lg.QuerySampleResponse(s.id, 0, 0) for s in batch])

    def close(self) -> None:
        self.requests.close()
        for t in self.threads:
            t.join()


def loadgen_results(detail: Path) -> dict:
    """LoadGen's ``result_*`` entries of its detail log, without the prefix."""
    out = {}
    for line in detail.read_text(encoding="utf-8").splitlines():
        if line.startswith(":::MLLOG"):
            entry = json.loads(line[len(":::MLLOG") :])
            if entry["key"].startswith("result_"):
                out[entry["key"][len("result_") :]] = entry["value"]
    return out


def loadgen_run(lg, workers: ServeWorkers, scenario: str, qps: float, opts: dict, out: Path):
    """One LoadGen test of ``scenario`` at ``qps`` (Offline: the expected rate); its results.
    Only LoadGen's summary and detail logs stay in ``out``."""
    settings = lg.TestSettings()
    settings.mode = lg.TestMode.PerformanceOnly
    settings.min_duration_ms = int(opts["duration_s"] * 1000)
    settings.min_query_count = MIN_QUERIES[scenario]
    if scenario == "server":
        settings.scenario = lg.TestScenario.Server
        settings.server_target_qps = qps
        settings.server_target_latency_ns = int(opts["p99_ms"] * 1e6)
        settings.server_target_latency_percentile = 0.99
        # Queries already due are issued in one call (latency is still timed per sample from
        # its scheduled arrival): one call into Python per burst, not per query.
        settings.server_coalesce_queries = True
    else:
        settings.scenario = lg.TestScenario.Offline
        settings.offline_expected_qps = qps
    log = lg.LogSettings()
    out.mkdir(parents=True, exist_ok=True)
    log.log_output.outdir = str(out)
    log.log_output.copy_summary_to_stdout = False
    log.enable_trace = False
    sut = lg.ConstructSUT(workers.issue, workers.flush)
    qsl = lg.ConstructQSL(QSL_SAMPLES, QSL_SAMPLES, lambda _: None, lambda _: None)
    try:
        lg.StartTestWithLogSettings(sut, qsl, settings, log)
    finally:
        lg.DestroyQSL(qsl)
        lg.DestroySUT(sut)
    for p in out.iterdir():
        if p.name not in KEPT_LOGS:
            p.unlink()
    return loadgen_results(out / "mlperf_log_detail.txt")


def _latency_ms(results: dict, percentile: str) -> float:
    return results[percentile + "_percentile_latency_ns"] / 1e6


def offline_rate(lg, workers: ServeWorkers, estimate: float, opts: dict, out: Path) -> dict:
    """Offline samples per second. LoadGen queues the expected rate times the duration: a run
    that ends before its duration is run again at the rate it measured."""
    for _ in range(3):
        r = loadgen_run(lg, workers, "offline", estimate, opts, out)
        if r["validity"] == "VALID" or r["min_duration_met"]:
            break
        estimate = r["samples_per_second"] * 1.2
    return r


def highest_rate(trial, ceiling: float, steps: int) -> float | None:
    """The highest rate in (0, ceiling] that ``trial(qps)`` passes, by ``steps`` bisections
    from ``ceiling / 2``; None when none passed. On a shared machine one run in several misses
    the bound by chance (a stall, a slow wake-up), and a bisection never climbs back above a
    rate it rejected: a rate is rejected only when a second run at it fails too."""
    lo, hi, best = 0.0, ceiling, None
    for _ in range(steps):
        qps = (lo + hi) / 2
        if trial(qps) or trial(qps):
            lo = best = qps
        else:
            hi = qps
    return best


def peak_rate(lg, workers: ServeWorkers, ceiling: float, opts: dict, out: Path) -> dict:
    """The highest VALID Server rate below ``ceiling`` (``highest_rate``, its steps
    ``opts["search_steps"]``): every trial, and LoadGen's figures at the best rate (its logs of
    that run kept in ``out``)."""
    trials, best = [], {}

    def trial(qps: float) -> bool:
        at = out.parent / f".{out.name}.trial{len(trials)}"
        r = loadgen_run(lg, workers, "server", qps, opts, at)
        valid = r["validity"] == "VALID"
        trials.append({"target_qps": qps, "scheduled_qps": r["scheduled_samples_per_sec"],
                       "p99_ms": _latency_ms(r, "99.00"), "valid": valid})  # fmt: skip
        if valid:  # the bisection only climbs past a valid rate: the best so far
            best["r"] = r
            shutil.rmtree(out, ignore_errors=True)
            at.rename(out)
        else:
            shutil.rmtree(at)
        return valid

    if highest_rate(trial, ceiling, opts["search_steps"]) is None:
        return {"qps_at_p99": 0.0, "valid": False, "trials": trials,
                "lowest_p99_ms": min(t["p99_ms"] for t in trials)}  # fmt: skip
    r = best["r"]
    return {
        "qps_at_p99": r["scheduled_samples_per_sec"],
        **{f"p{p}_ms": _latency_ms(r, f"{p}.00") for p in (50, 90, 99)},
        "valid": True,
        "trials": trials,
    }


def estimate_rate(runs: list, feeds: dict, max_batch: int) -> float:
    """Samples per second of a few batches on one worker, times the workers (warms them up)."""
    for run in runs:
        run(feeds[1])
        run(feeds[max_batch])
    start = time.perf_counter()
    for _ in range(5):
        runs[0](feeds[max_batch])
    return 5 * max_batch * len(runs) / (time.perf_counter() - start)


def batch_wait_s(opts: dict, max_batch: int) -> float:
    """How long a serving worker waits for a batch to fill: ``opts["batch_wait_ms"]`` when it
    batches at all."""
    return opts["batch_wait_ms"] / 1000 if max_batch > 1 else 0.0


def serve_setting(lg, runs: list, feeds: dict, max_batch: int, opts: dict, out: Path) -> dict:
    """One model served by ``runs`` (callers at once), batching up to ``max_batch``: LoadGen's
    Offline throughput, and with "server" in ``opts["scenarios"]`` the highest rate at the p99
    bound. A runtime error of any inference is raised once LoadGen is done."""
    estimate = estimate_rate(runs, feeds, max_batch)
    workers = ServeWorkers(lg, runs, feeds, max_batch, batch_wait_s(opts, max_batch))
    try:
        off = offline_rate(lg, workers, estimate, opts, out / "offline")
        result = {"workers": len(runs), "max_batch": max_batch,
                  "offline_sps": off["samples_per_second"],
                  "offline_valid": off["validity"] == "VALID"}  # fmt: skip
        if "server" in opts["scenarios"]:
            result.update(peak_rate(lg, workers, off["samples_per_second"], opts, out / "server"))
    finally:
        workers.close()
    if workers.errors:
        raise workers.errors[0][1]
    return result


def model_capacity(settings: list, opts: dict) -> dict:
    """A model's figures: those of the setting serving the most at the bound (Offline only:
    the most samples per second), servers needed for ``opts["qps"]``, every setting tried."""
    server = "server" in opts["scenarios"]
    best = max(settings, key=lambda s: s["qps_at_p99"] if server else s["offline_sps"])
    out = {"setting": best["setting"], "offline_sps": best["offline_sps"]}
    if server:
        for k in ("qps_at_p99", "valid", "p50_ms", "p90_ms", "p99_ms"):
            if k in best:
                out[k] = best[k]
        if opts.get("qps") and best["qps_at_p99"]:
            out["servers_for_qps"] = int(-(-opts["qps"] // best["qps_at_p99"]))
    out["settings"] = settings
    return out


def ort_callers(cores: int) -> list:
    """ONNX Runtime's ways to serve concurrent requests on ``cores`` CPUs: (label, callers of
    one session, intra-op threads each): one caller with every thread, or the threads divided."""
    ways = [(n, max(1, cores // n)) for n in sorted({1, 2, cores}) if n <= cores]
    return [(f"{n}x{threads} threads", n, threads) for n, threads in ways]


def batched(label: str, batch: int) -> str:
    """A serving setting's name with its dynamic batching."""
    return label + (f", batches up to {batch}" if batch > 1 else "")


def serve_bench(root: Path, opts: dict, logs: Path) -> dict:
    """``bench --scenario server|offline``: the student (and the teacher, when shipped), portable
    or of ``opts["target"]``, served as ``kdexport serve-bench`` serves it, LoadGen driving;
    LoadGen's logs under ``logs``."""
    lg = import_loadgen()
    if lg is None:
        raise BundleError("bench --scenario {} {}".format(opts["scenario"], NEEDS_LOADGEN))
    bundle = Bundle(root)
    feed, axes, reader = golden_feed(bundle), _batch_axes(bundle), inputs_of(bundle)
    point = dict(parse_point(reader.points(opts.get("batch_sizes"))[0]), batch=1)
    opts = dict(opts, scenarios=["offline"] + (["server"] if opts["scenario"] == "server" else []))
    batches = sorted({1, opts["max_batch"]})
    feeds = {
        k: reader.at(feed, axes, format_point(dict(point, batch=k)))
        for k in range(1, batches[-1] + 1)
    }
    result, cores = {}, opts["threads"] or available_cpus()
    for role in _roles(bundle, opts["target"]):
        path, settings = bundle.model_path(role, opts["target"]), []
        for label, callers, threads in ort_callers(cores):
            sess, _ = session(path, threads=threads)
            runs = [lambda x, s=sess: s.run(None, x)] * callers
            for batch in batches:
                folder = logs / role / f"setting{len(settings)}"
                try:
                    served = serve_setting(lg, runs, {k: feeds[k] for k in range(1, batch + 1)},
                                           batch, opts, folder)  # fmt: skip
                except Exception as e:  # ONNX Runtime's own types
                    raise BundleError(f"{path.name}: ONNX Runtime cannot serve it in batches of up to {batch} "
                                      f"({_said(e)})") from None  # fmt: skip
                settings.append(dict(served, setting=batched(label, batch), logs=str(folder),
                                     options={"intra_op_threads": threads}))  # fmt: skip
        result[role] = model_capacity(settings, opts)
    result.update(capacity_ratios(result, None))
    return {**_result_head(bundle, opts, SERVE_METHOD), "point": format_point(point),
            "cores": cores, "serving": result}  # fmt: skip


def capacity_ratios(result: dict, speedup) -> dict:
    """Student over teacher: requests served at the bound and Offline throughput, beside the
    single-stream speed-up (``speedup``, None where not measured)."""
    if "teacher" not in result or "student" not in result:
        return {}
    t, s = result["teacher"], result["student"]
    out = {"offline_ratio": s["offline_sps"] / t["offline_sps"]}
    if "qps_at_p99" in t:
        out["capacity_ratio"] = s["qps_at_p99"] / t["qps_at_p99"] if t["qps_at_p99"] else None
    out["single_stream_speedup"] = speedup
    return out


# --- plan: which variant this device runs ----------------------------------------------------


def parse_variant(text: str) -> tuple:
    """``[teacher@|student@]TARGET`` (TARGET ``portable`` or a compiled target) -> (role,
    target or None)."""
    role, _, target = text.rpartition("@")
    role = role or "student"
    if role not in ("teacher", "student") or not target:
        raise BundleError(
            f"--variant '{text}': give [teacher@|student@]TARGET, e.g. student@ort-cpu or "
            f"teacher@{PORTABLE}"
        )
    return role, None if target == PORTABLE else target


def variant_name(role: str, target) -> str:
    return f"{role}@{target or PORTABLE}"


def runnable_targets(bundle: Bundle) -> tuple:
    """The targets this device can time with run.py (None: the portable models), and why the
    others cannot be timed here."""
    available = _ort().get_available_providers()
    targets, skipped = [None], {}
    for target, entry in bundle.manifest.get("compiled", {}).items():
        if entry["backend"] != "onnxruntime":
            skipped[target] = f"holds {entry['backend']} models; run.py runs ONNX Runtime only"
        elif entry.get("provider") not in available:
            skipped[target] = f"needs {entry.get('provider')}, which this onnxruntime lacks"
        else:
            targets.append(target)
    return targets, skipped


def planned_device(bundle: Bundle, device) -> tuple:
    """(name, plan entry) of this device in the bundle's plan: by ``device`` name when one is
    given, else by this device's fingerprint; (None, None) when the plan does not hold it (or
    the bundle has no plan)."""
    devices = (bundle.manifest.get("plan") or {}).get("devices", {})
    if device is not None:
        return (device, devices[device]) if device in devices else (None, None)
    key = device_key(fingerprint())
    same = sorted(n for n, d in devices.items() if d.get("fingerprint") == key)
    if len(same) > 1:
        raise BundleError(
            f"the plan holds several devices with this device's fingerprint {key} "
            f"({', '.join(same)}); pass --device NAME or --variant"
        )
    return (same[0], devices[same[0]]) if same else (None, None)


def choose(bundle: Bundle, variant, target, device) -> dict:
    """Which variant to run here: ``--variant``, ``--target`` (the student), the plan's
    choice for this device, or the portable student. ``every`` is set when the plan does not
    hold this device or found nothing within its budget; ``said`` tells the user why."""
    if variant and target:
        raise BundleError("give --variant or --target, not both")
    if variant:
        role, target = parse_variant(variant)
        return {"role": role, "target": target, "said": f"variant {variant} (--variant)"}
    if target or not bundle.manifest.get("plan"):
        return {"role": "student", "target": target, "said": None}
    name, entry = planned_device(bundle, device)
    if entry is None:
        key = device_key(fingerprint())
        known = ", ".join(sorted(bundle.manifest["plan"]["devices"]))
        said = f"this device ({device or 'unnamed'}, fingerprint {key}) is not in the bundle's plan (planned: {known})"
        return {"role": "student", "target": None, "every": True, "said": said}
    if entry.get("bundle"):
        raise BundleError(
            f"the plan gives device {name} to bundle {entry['bundle']} ({entry['member']} of "
            "the family of students); run that bundle there"
        )
    if not entry.get("variant"):
        said = f"the plan found no variant within budget for device {name} ({entry.get('closest') or 'none measured'})"
        return {"role": "student", "target": None, "every": True, "said": said}
    role, target = parse_variant(entry["variant"])
    goal = entry.get("capacity")
    if goal:  # planned on requests a second at a p99 bound
        limit = "{:,.0f} req/s at p99 <= {:g} ms".format(goal["qps"], goal["p99_ms"])
    else:
        limit = "budget {:g} ms, planned p90 {:.3f} ms at {}".format(
            entry["budget_ms"], entry["p90_ms"], point_label(bundle.manifest["plan"]["batch"])
        )
    said = f"plan: device {name} runs {entry['variant']} ({limit})"
    return {"role": role, "target": target, "said": said, "device": name, "entry": entry}


def write_json(path: Path, obj) -> None:
    """Write JSON atomically: a temporary file in the same folder, then rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=str(path.parent), prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=2, sort_keys=True)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink()
        raise


def _sizes(text: str) -> list:
    """Batch sizes (ints), or a text model's shapes "BxS" (strings): "1,64", "1x128,8x128"."""
    try:
        points = [parse_point(s) for s in text.split(",") if s.strip()]
    except ValueError:
        points = []
    if not points:
        raise argparse.ArgumentTypeError(
            f"'{text}': give batch sizes such as 1,64 (a text model's: 1x128,8x128)"
        )
    return [p["batch"] if len(p) == 1 else format_point(p) for p in points]


# --- the command line ------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="run.py", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show the traceback on errors")
    sub = parser.add_subparsers(dest="command", required=True)
    v = sub.add_parser("verify", help="check every file's sha256 and the golden outputs")
    v.add_argument("--json", action="store_true", help="print the result as JSON")
    p = sub.add_parser("predict", help="top classes (or outputs) of a .npy/.npz array or image")
    p.add_argument(
        "input",
        type=Path,
        nargs="?",
        help=".npy array (N, C, H, W) or (C, H, W), or an image; for a model of several inputs "
        "a .npz of arrays named as the inputs; for a text model also a .txt file (one text per "
        "line) or a .jsonl/.csv/.tsv file with a text column",
    )
    p.add_argument(
        "--text",
        action="append",
        default=[],
        help="a text to classify (a text model's bundle; repeat for several)",
    )
    p.add_argument("--top", type=int, default=3, help="classes shown per sample (default 3)")
    p.add_argument("--target", help="run this compiled form instead of the portable model")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument(
        "--device", help="this device's name in the bundle's plan (default: found by fingerprint)"
    )
    b = sub.add_parser("bench", help="latency on this device, written to a result file")
    b.add_argument("--json", action="store_true", help="print the result as JSON too")
    b.add_argument("--out", type=Path, help="result file (default: beside the bundle folder)")
    b.add_argument(
        "--device",
        help="name in the results table and the plan (default: the planned name found by "
        "fingerprint, else the host name)",
    )
    b.add_argument("--target", help="time this compiled form instead of the portable model")
    b.add_argument(
        "--batch-sizes",
        type=_sizes,
        help="default 1,64 (a fixed batch: the golden input's); a text model's bundle: shapes "
        "BATCHxTOKENS, default the run's text shapes, e.g. 1x16,1x128,8x128",
    )
    b.add_argument(
        "--threads", type=int, default=0, help="intra-op threads (0: one per CPU we may use)"
    )
    b.add_argument("--cpus", help="pin to these CPUs, e.g. 0 or 0-1 (os.sched_setaffinity)")
    b.add_argument(
        "--all-variants",
        action="store_true",
        help="time every variant this device can run (portable and each compiled target), one "
        "result file each, as on a device the plan does not hold",
    )
    for sub_parser in (p, b):
        sub_parser.add_argument(
            "--variant",
            help="run this variant, [teacher@|student@]TARGET (TARGET: portable or a compiled "
            "target), instead of the plan's choice",
        )
    b.add_argument(
        "--scenario",
        choices=("latency",) + SERVE_SCENARIOS,
        default="latency",
        help="latency (default: one request at a time), or LoadGen's server (the most requests "
        "a second with the p99 under --p99-ms) or offline (everything queued); needs "
        "mlcommons-loadgen",
    )
    b.add_argument("--p99-ms", type=float, default=10.0, help="server: the p99 bound (ms)")
    b.add_argument("--max-batch", type=int, default=8, help="server, offline: dynamic batching")
    b.add_argument("--duration-s", type=float, default=2.0, help="each LoadGen run's minimum")
    for flag, kind, default in (
        ("--warmup-iters", int, 20),
        ("--warmup-s", float, 0.2),
        ("--min-iters", int, 100),
        ("--min-time-s", float, 0.5),
        ("--rounds", int, 5),
    ):
        b.add_argument(flag, type=kind, default=default, help=f"default {default}")
    return parser


def _print_predictions(result: dict) -> None:
    for o in result.get("outputs", []):  # a foreign model: no labels
        top = o.get("top_class")
        shown = f"; top class index per sample: {', '.join(map(str, top[:16]))}" if top else ""
        print(f"{o['name']}: {o['dtype']} {tuple(o['shape'])}{shown}; first values {o['first']}")
    given = result.get("texts") or result.get("files") or []  # what each prediction is of
    for i, top in enumerate(result.get("predictions", [])):
        shown = ", ".join(f"{t['label']} ({t['p']:.1%})" for t in top)
        if i < len(given):  # the text or the file after its classes
            item = given[i] if isinstance(given[i], str) else " | ".join(given[i])
            shown += f"  <- {item[:60]}{'...' if len(item) > 60 else ''}"
        print(f"{i}: {shown}")
    if result.get("truncated"):
        print(f"note: {result['truncated']} texts were cut to the model's max_length tokens")


def _print_verify(result: dict) -> None:
    print(f"{result['bundle']}: {result['files']} files match their sha256")
    for name, g in result["golden"].items():
        print(golden_line(name, g))
    for target, why in result["skipped"].items():
        print(f"{target}: {why}")
    print(f"bundle id (sha256 of manifest.json): {result['id']}")


def _planned_settings(pick: dict, args) -> dict:
    """Threads and CPUs for the run: the command line's, else those the plan's measurement of
    this device used (its p90 holds for them)."""
    settings = (pick.get("entry") or {}).get("settings") or {}
    threads = getattr(args, "threads", 0) or settings.get("threads") or 0
    cpus = getattr(args, "cpus", None) or settings.get("cpus")
    if cpus:
        try:
            cpus = pin(str(cpus))
        except ValueError as e:
            raise BundleError(f"--cpus: {e}") from None
    return {"threads": threads, "cpus": cpus}


def _plan_check(result: dict, pick: dict, batch) -> dict:
    """The planned variant's p90 measured now against the device's budget."""
    entry = pick["entry"]
    p90 = result["results"][pick["role"]]["latency"][str(batch)]["p90_ms"]
    return {
        "device": pick["device"],
        "variant": entry["variant"],
        "batch": batch,
        "budget_ms": entry["budget_ms"],
        "planned_p90_ms": entry["p90_ms"],
        "p90_ms": p90,
        "within_budget": p90 <= entry["budget_ms"],
    }


def _bench_out(root: Path, args, device: str, target, every: bool) -> Path:
    """Beside the bundle folder by default: a file inside it would fail the next verify. When
    every variant is measured, each compiled target's file takes the target's name."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in device)
    out = args.out or root.parent / f"{root.name}.bench-{safe}.json"
    return out.with_name(f"{out.stem}-{target}{out.suffix}") if every and target else out


def _print_bench(result: dict, out: Path, role: str) -> None:
    where = result["options"].get("target") or PORTABLE
    timed = "student" if "student" in result["results"] else "teacher"
    role = role if timed == "student" else timed
    for size, s in result["results"][timed]["latency"].items():
        extra = ""
        if "speedup" in result["results"]:
            t = result["results"]["teacher"]["latency"][size]["p50_ms"]
            extra = f", teacher p50 {t:.3f} ms, speed-up {result['results']['speedup'][size]:.1f}x"
        print(
            f"{where}, {point_label(size)}: {role} p50 {s['p50_ms']:.3f} ms, p90 {s['p90_ms']:.3f} ms{extra}"
        )
    check = result.get("plan")
    if check:
        verdict = "within" if check["within_budget"] else "OVER"
        print(
            f"planned {check['variant']}: p90 {check['p90_ms']:.3f} ms at {point_label(check['batch'])}, "
            f"{verdict} the budget of {check['budget_ms']:g} ms (planned p90 {check['planned_p90_ms']:.3f} ms)"
        )
    print(f"result: {out}")


def _print_serving(result: dict, out: Path) -> None:
    where = result["options"].get("target") or PORTABLE
    bound = result["options"]["p99_ms"]
    for role in ("teacher", "student"):
        f = result["serving"].get(role)
        if f is None:
            continue
        served = ""
        if "qps_at_p99" in f:
            served = f"{f['qps_at_p99']:,.0f} req/s with p99 <= {bound:g} ms, "
        print(
            f"{where}, {role}: {served}Offline {f['offline_sps']:,.0f} samples/s ({f['setting']})"
        )
    if result["serving"].get("capacity_ratio"):
        print(f"capacity ratio student / teacher: {result['serving']['capacity_ratio']:.2f}x")
    print(f"result: {out} (LoadGen's logs: {out.with_suffix('.loadgen')})")


def _bench_command(root: Path, args) -> dict:
    bundle = Bundle(root)
    if args.all_variants and (args.variant or args.target):
        raise BundleError("give --all-variants, --variant or --target, not two of them")
    if args.all_variants:
        pick = {"role": "student", "target": None, "every": True, "said": None}
    else:
        pick = choose(bundle, args.variant, args.target, args.device)
    every = bool(pick.get("every"))
    if pick["said"]:
        print(pick["said"] + ("; measuring every variant" if every else ""))
    opts = {**_planned_settings(pick, args), "batch_sizes": args.batch_sizes}
    opts["device"] = args.device or pick.get("device") or platform.node() or "device"
    for k in ("warmup_iters", "warmup_s", "min_iters", "min_time_s", "rounds"):
        opts[k] = getattr(args, k)
    if min(opts["rounds"], opts["min_iters"]) < 1 or min(opts["warmup_s"], opts["min_time_s"]) < 0:
        raise BundleError("--rounds and --min-iters must be >= 1, times >= 0")
    plan_batch = (bundle.manifest.get("plan") or {}).get("batch", 1)
    if pick.get("entry") and not opts["batch_sizes"]:
        opts["batch_sizes"] = [plan_batch]
    targets = [pick["target"]]
    if every:
        targets, skipped = runnable_targets(bundle)
        for target, why in skipped.items():
            print(f"{target}: not timed ({why})")
    if pick["role"] == "teacher" and "teacher" not in bundle.manifest["models"]:
        raise BundleError("this bundle has no teacher; package it with --with-teacher")
    role = "model" if bundle.manifest.get("source") == "onnx-file" else "student"
    if args.scenario != "latency":
        if args.p99_ms <= 0 or args.max_batch < 1 or args.duration_s <= 0:
            raise BundleError("--p99-ms and --duration-s must be above 0, --max-batch 1 or more")
        opts.update(scenario=args.scenario, p99_ms=args.p99_ms, max_batch=args.max_batch,
                    duration_s=args.duration_s, search_steps=6, batch_wait_ms=0.0, qps=0)  # fmt: skip
    results = []
    for target in targets:
        out = _bench_out(root, args, opts["device"], target, every)
        serving = args.scenario != "latency"
        if serving:
            result = serve_bench(root, {**opts, "target": target}, out.with_suffix(".loadgen"))
        else:
            result = bench(root, {**opts, "target": target})
        if pick.get("entry") and not serving and pick["entry"].get("budget_ms") is not None:
            result["plan"] = _plan_check(result, pick, plan_batch)
        try:
            write_json(out, result)
        except OSError as e:
            raise BundleError(f"cannot write {out} ({e.strerror}); pass --out PATH") from None
        if serving:
            _print_serving(result, out)
        else:
            _print_bench(result, out, role)
        results.append(result)
    return results[0] if len(results) == 1 else {"every_variant": True, "results": results}


def _run(root: Path, args) -> dict:
    if args.command == "verify":
        result = verify(root)
        if not args.json:
            _print_verify(result)
    elif args.command == "predict":
        bundle = Bundle(root)
        pick = choose(bundle, args.variant, args.target, args.device)
        if pick["said"]:
            # Standard error: --json keeps standard output one JSON document.
            print(
                pick["said"] + ("; running the portable student" if pick.get("every") else ""),
                file=sys.stderr,
            )
        pick["threads"] = _planned_settings(pick, args)["threads"]
        result = predict(root, args.input, max(args.top, 1), pick, args.text)
        if not args.json:
            _print_predictions(result)
    else:
        result = _bench_command(root, args)
    return result


def main(argv: list | None = None) -> int:
    """The command line: one line on stderr and exit status 1 for any expected failure."""
    args = _parser().parse_args(argv)
    try:
        result = _run(Path(__file__).resolve().parent, args)
    except (BundleError, OSError) as e:
        if args.debug:
            raise
        what = e if isinstance(e, BundleError) else f"{e.strerror or e}: {e.filename or ''}"
        print(f"error: {what}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    if args.json:
        print(json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
