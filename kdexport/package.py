"""Edge bundles: the student and everything a device needs to verify, run and time it.

A bundle is one folder, ``student-<sha256 of the model, 12 digits>/``, or a reproducible
``.tar.gz`` of it: the portable ONNX model (and its external data), optionally the teacher and
the compiled forms of named targets, a golden input with the outputs it must give,
``manifest.json`` (sha256 and size of every file, the model's inputs and outputs, labels,
preprocessing, the build machine's figures, the recipe) and ``run.py``, a copy of
``kdexport/bundle/runner.py``, which needs only Python 3.9+, numpy and onnxruntime.

Any ONNX file is packaged the same way (``<file stem>-<12 digits>/``, manifest source
"onnx-file"): its golden inputs are random, made as ``kdexport benchmark`` makes them
(``kdexport.feeds``), and its golden outputs are ONNX Runtime's CPU reference run; it has no
teacher, labels, preprocessing, recipe or compiled forms.

The archive format and its defensive reading are ``kdexport.bundle.archive``'s.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from kdexport import __version__, modalities
from kdexport.artifact import (
    Artifact,
    file_table,
    leftovers,
    replace_dir,
    sha256,
    write_json,
)
from kdexport.backends import backend, import_onnxruntime
from kdexport.bundle import runner as bundle_runner
from kdexport.bundle.archive import verify_folder, write_archive
from kdexport.bundle.placement import bundle_plan
from kdexport.errors import KdxError
from kdexport.feeds import BATCH, for_model, load_sample, parse_shapes, resolve
from kdexport.onnxfile import check_onnx_file, external_data_files, reference_outputs
from kdexport.rundir import student_bundle

if TYPE_CHECKING:  # the stages' checks, read from their manifests (export.py loads torch)
    from kdexport.compile import CompileChecks
    from kdexport.export import ExportChecks

BUNDLE_FORMAT = bundle_runner.BUNDLE_FORMAT
RUNNER = Path(__file__).with_name("bundle") / "runner.py"
# The golden outputs of an ONNX file come from ONNX Runtime without graph rewrites; a device runs
# it with all of them, maybe another build: |out - golden| <= atol + rtol * |golden|.
FILE_TOLERANCE = {"float16": (1e-2, 1e-2), "default": (1e-4, 1e-3)}
RESERVED = ("run.py", "manifest.json", "golden/", "compiled/")


def _open_run(run_dir: Path) -> tuple[dict, Artifact]:
    """The run's manifest and its export stage, every file checked against the manifests.

    The run manifest lists every stage's files, so its figures are those of the shipped bytes.
    """
    run = Artifact.open(run_dir, "run", f"kdexport report {run_dir}").manifest
    export = Artifact.open(run_dir / "export", "export", f"kdexport export {run_dir}")
    return run, export


def _model_facts(path: Path) -> dict:
    """Opset, IR version, inputs, outputs, metadata and external data files of an ONNX model."""
    import onnx

    facts = check_onnx_file(path)  # also refuses external data outside the model's folder
    model = onnx.load(str(path), load_external_data=False)
    folder = path.parent.resolve()
    return {
        **facts,
        "file": path.name,
        "producer": f"{model.producer_name} {model.producer_version}".strip(),
        "external_data": [p.relative_to(folder).as_posix() for p in external_data_files(path)],
        "metadata": {p.key: p.value for p in model.metadata_props},
    }


def _copy(src: Path, root: Path, name: str) -> None:
    dest = root / name
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dest)


def _add_model(root: Path, path: Path, facts: dict | None = None) -> dict:
    """Copy the model at ``path`` and its external data into the bundle; return its facts."""
    facts = facts or _model_facts(path)
    for name in [facts["file"], *facts["external_data"]]:
        _copy(path.parent / name, root, name)
    return facts


def _save_arrays(root: Path, stem: str, arrays: dict[str, np.ndarray]) -> str:
    """One array as golden/STEM.npy, several as golden/STEM.npz of named arrays; the name.

    The .npz is written here, not by numpy.savez, whose zip entries carry the clock.
    """
    if len(arrays) == 1:
        name = f"golden/{stem}.npy"
        np.save(root / name, np.ascontiguousarray(next(iter(arrays.values()))))
        return name
    name = f"golden/{stem}.npz"
    with zipfile.ZipFile(root / name, "w", zipfile.ZIP_STORED) as z:
        for key, array in arrays.items():
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            with z.open(info, "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.ascontiguousarray(array), allow_pickle=False)
    return name


def _add_golden(
    root: Path, export: Artifact, roles: list[str], samples: int, names: list[str]
) -> dict:
    """A few held-out inputs and PyTorch's outputs for them: what every device must reproduce.

    The inputs are the student's, by name: one array (golden/input.npy) for a one-input model,
    else golden/input.npz with each input's batch on axis 0.
    """
    sample, arrays = load_sample(export.file("io_sample.npz"))
    inputs = for_model(sample, names, samples)
    outputs = {r: arrays[r][:samples] for r in roles}
    (root / "golden").mkdir()
    golden: dict = {}
    if len(inputs) > 1:
        golden["input"] = _save_arrays(root, "input", inputs)
        golden["batch_axes"] = {name: [0] for name in inputs}
    else:
        np.save(root / "golden" / "input.npy", np.ascontiguousarray(next(iter(inputs.values()))))
        golden["input"] = "golden/input.npy"
    for role, array in outputs.items():
        np.save(root / "golden" / f"{role}.npy", np.ascontiguousarray(array))
    return {
        **golden,
        "outputs": {r: f"golden/{r}.npy" for r in roles},
        "tolerance": export.parameters["tolerance"],
        "samples": len(next(iter(outputs.values()))),
        "reference": "PyTorch outputs of the trained models, as in export/io_sample.npz",
    }


def _add_compiled(root: Path, run_dir: Path, targets: list[str], roles: list[str]) -> dict:
    """Each named target's compiled models, files by the compile stage's own table."""
    if not targets:
        return {}
    compiled = Artifact.open(run_dir / "compile", "compile", f"kdexport compile {run_dir}")
    checks: CompileChecks = compiled.checks
    out = {}
    for target in targets:
        entry = checks["targets"].get(target)
        shipped = [r for r in roles if entry and entry[r].get("shipped", True)]
        if not shipped:  # e.g. an INT8 student that failed its accuracy gate
            known = [
                t
                for t, e in checks["targets"].items()
                if any(e[r].get("shipped", True) for r in roles)
            ]
            raise KdxError(
                f"no compiled {' or '.join(roles)} for target '{target}' in {run_dir}; "
                f"compiled: {', '.join(known)}"
            )
        files = sorted(
            n for n in compiled.manifest["files"] for r in shipped if n.startswith(f"{target}/{r}.")
        )
        for name in files:
            _copy(compiled.path / name, root, f"compiled/{name}")
        profile = entry["profile"]
        out[target] = {
            "backend": profile["backend"],
            "device": profile["device"],
            "provider": profile.get("options", {}).get("provider"),
            "precision": profile["precision"],
            "tolerance": 1e-4,  # against this compiled form's own output on the build machine
            "models": {r: f"compiled/{target}/{entry[r]['file']}" for r in shipped},
            "files": [f"compiled/{n}" for n in files],
            "build": {
                r: {k: entry[r].get(k) for k in ("accuracy", "parity", "size_bytes")}
                for r in shipped
            },
        }
    return out


def _compiled_golden(root: Path, manifest: dict) -> None:
    """The build machine's output of each ONNX Runtime CPU compiled form, for devices to match."""
    names = [i["name"] for i in manifest["models"]["student"]["inputs"]]
    feed = bundle_runner.load_arrays(root / manifest["golden"]["input"], names)
    for target, entry in manifest["compiled"].items():
        if entry["backend"] != "onnxruntime" or entry["provider"] != "CPUExecutionProvider":
            continue
        (root / "golden" / "compiled" / target).mkdir(parents=True)
        for role, model in entry["models"].items():
            sess, _ = bundle_runner.session(root / model)
            name = f"golden/compiled/{target}/{role}.npy"
            outs = bundle_runner.run_model(sess, feed, model)
            np.save(root / name, next(iter(outs.values())))
            manifest["golden"]["outputs"][f"compiled/{target}/{role}"] = name


def _teacher(run: dict, student: dict, shipped: bool) -> dict:
    figures = run["figures"]
    per_target = {
        t: {k: e["teacher"].get(k) for k in ("accuracy", "p50_ms", "p90_ms", "params", "flops")}
        for t, e in figures["targets"].items()
        if "teacher" in e
    }
    return {
        **json.loads(student["metadata"].get("teacher", "{}")),
        "file": "teacher.onnx" if shipped else None,
        "torch_accuracy": figures.get("torch", {}).get("teacher", {}).get("accuracy"),
        "figures": per_target,
    }


def _head(name: str, source: str) -> dict:
    """What every bundle's manifest starts with; ``source``: "run" or "onnx-file"."""
    return {
        "kind": bundle_runner.KIND,
        "format_version": BUNDLE_FORMAT,
        "name": name,
        "kdexport_version": __version__,
        "source": source,
    }


def _manifest(
    name: str, run_dir: Path, run: dict, models: dict, golden: dict, compiled: dict, modality
) -> dict:
    student = models["student"]
    recorded = json.loads(student["metadata"].get("preprocessing", "{}"))
    return {
        **_head(name, "run"),
        "modality": modality.name,
        "models": models,
        "labels": json.loads(student["metadata"].get("labels", "[]")),
        "preprocessing": modality.bundle_preprocessing(recorded, student["inputs"][0]),
        "golden": golden,
        "compiled": compiled,
        "teacher": _teacher(run, student, "teacher" in models),
        "build": {k: v for k, v in run["figures"].items() if k != "run_dir"},
        "recipe": run["recipe"],
        "run": {"created": run["created"], "manifest_sha256": sha256(run_dir / "manifest.json")},
    }


def _from_run(run_dir: Path, root: Path, opts: dict) -> dict:
    """A run's student (and teacher): PyTorch's outputs on held-out inputs are the golden ones.
    With a placement plan, every variant it chose is added, and the plan with them."""
    if opts["shapes"]:
        raise KdxError("--shape is for an ONNX file; a run's bundle takes its inputs from the run")
    run, export = _open_run(run_dir)
    name = student_bundle(export)
    targets, with_teacher, placement = list(opts["targets"]), opts["with_teacher"], None
    if opts["plan"] is not None:
        placement = bundle_plan(Path(opts["plan"]), name)
        targets += [t for t in placement.pop("targets") if t not in targets]
        with_teacher = with_teacher or placement.pop("teacher")
    root.mkdir()
    roles = ["student", "teacher"] if with_teacher else ["student"]
    models = {r: _add_model(root, export.file(f"{r}.onnx")) for r in roles}
    names = [i["name"] for i in models["student"]["inputs"]]
    golden = _add_golden(root, export, roles, opts["samples"], names)
    compiled = _add_compiled(root, run_dir, targets, roles)
    exported: ExportChecks = export.checks
    modality = modalities.get(exported.get("modality", modalities.DEFAULT))
    manifest = _manifest(name, run_dir, run, models, golden, compiled, modality)
    # What the modality's bundle carries to read raw input: its section, named after it.
    section = modality.bundle_section(root, manifest["preprocessing"], models["student"], run)
    if section:
        manifest[modality.name] = section
    if placement is not None:
        manifest["plan"] = placement
    _compiled_golden(root, manifest)
    return manifest


def _check_file_names(facts: dict, file: str) -> None:
    """The model's files must not take the names of the bundle's own."""
    for name in [facts["file"], *facts["external_data"]]:
        if name.startswith(RESERVED) or any(p.startswith(".") for p in name.split("/")):
            raise KdxError(
                f"{file}: its file '{name}' would take a name the bundle uses (or a hidden "
                "one); rename it (and re-save the model's external data) first"
            )


def _check_outputs(facts: dict, file: str) -> tuple[float, float]:
    """Every output a numeric or bool tensor; the golden bound its dtypes call for."""
    for out in facts["outputs"]:
        try:
            ok = np.dtype(out["dtype"]).kind in "biuf"
        except TypeError:
            ok = False
        if not ok:
            raise KdxError(
                f"output '{out['name']}' of {file} is {out['dtype']}: golden outputs are numeric "
                "and bool tensors; package this model with its runtime's own tools"
            )
    half = any(o["dtype"] == "float16" for o in facts["outputs"])
    return FILE_TOLERANCE["float16" if half else "default"]


def _reference(path: Path, feed: dict, described: str) -> dict:
    """ONNX Runtime's CPU outputs for ``feed``, or one line saying why it cannot give them."""
    ort = backend("onnxruntime", "ort-cpu")
    try:
        return reference_outputs(path, feed)
    except ort.RUNTIME_ERRORS as e:
        raise KdxError(
            f"{path.name}: ONNX Runtime's CPU reference run, which gives a bundle its golden "
            f"outputs, fails on inputs {described}: {ort.explain(e)}"
        ) from None


def _from_file(path: Path, root: Path, opts: dict) -> dict:
    """Any ONNX file: random golden inputs made as ``kdexport benchmark`` makes them, at the
    batch it would pick, and ONNX Runtime's CPU reference outputs for them."""
    if opts["targets"] or opts["with_teacher"] or opts["plan"] is not None:
        raise KdxError(
            "--target, --with-teacher and --plan need a run directory; an ONNX file is bundled alone "
            "(time it per target with kdexport benchmark FILE --target T)"
        )
    facts = _model_facts(path)
    _check_file_names(facts, path.name)
    inputs = resolve(facts, parse_shapes(opts["shapes"]), path.name)
    atol, rtol = _check_outputs(facts, path.name)
    batch = inputs.batch if inputs.batch is not None else inputs.shape_batch or 1
    feed = inputs.feed(batch)
    outputs = _reference(path, feed, inputs.describe())
    root.mkdir()
    (root / "golden").mkdir()
    axes = {n: [i for i, d in enumerate(s) if d == BATCH] for n, s in inputs.shapes.items()}
    golden = {
        "input": _save_arrays(root, "input", feed),
        "outputs": {"student": _save_arrays(root, "student", outputs)},
        "tolerance": atol,
        "rtol": rtol,
        "top1": False,
        "samples": batch,
        "batch": batch,
        "batch_axes": {n: a for n, a in axes.items() if a} if inputs.batch is None else {},
        "reference": "ONNX Runtime's CPU provider without graph rewrites, on random inputs "
        "made as kdexport benchmark makes them (kdexport.feeds, seed 0)",
    }
    digest = sha256(path)
    stem = re.sub(r"[^A-Za-z0-9_.-]", "_", path.stem)[:40].strip(".") or "model"
    return {
        **_head(f"{stem}-{digest[:12]}", "onnx-file"),
        "note": "packaged from an ONNX file: no teacher, labels, preprocessing or recipe",
        "models": {"student": _add_model(root, path, facts)},
        "labels": [],
        "preprocessing": {},
        "golden": golden,
        "compiled": {},
        "teacher": None,
        "build": {
            "onnx_file": {"name": path.name, "sha256": digest},
            "shape_options": opts["shapes"],
            "onnxruntime": import_onnxruntime("packaging an ONNX file").__version__,
        },
        "recipe": None,
    }


def build(source: Path, root: Path, **opts) -> dict:
    """Write the bundle of a run directory or an ONNX file into the new folder ``root``; return
    its manifest. ``opts``: targets, with_teacher, plan, samples, shapes."""
    make = _from_file if source.is_file() or source.suffix == ".onnx" else _from_run
    manifest = make(source, root, opts)
    shutil.copyfile(RUNNER, root / "run.py")
    manifest["files"] = file_table(root)
    write_json(root / "manifest.json", manifest)
    return manifest


def _publish_dir(root: Path, dest: Path) -> None:
    """Move the finished bundle to ``dest``, replacing only an earlier bundle or an empty folder."""
    if dest.exists() and (dest.is_file() or any(dest.iterdir())):
        try:
            bundle_runner.read_manifest(dest)
        except bundle_runner.BundleError:
            raise KdxError(
                f"{dest} exists and is not a bundle; choose another --dir or remove it"
            ) from None
    replace_dir(root, dest)


def package(
    source: str | Path,
    out: str | Path | None = None,
    directory: str | Path | None = None,
    *,
    targets: Sequence[str] = (),
    with_teacher: bool = False,
    golden_samples: int = 8,
    shapes: Sequence[str] = (),
    plan: str | Path | None = None,
) -> dict:
    """Bundle a run's student, or any ONNX file, into ``out`` (.tar.gz) or the folder
    ``directory``; verify it first. ``shapes``: ``--shape`` values for an ONNX file's
    symbolic axes (``kdexport.feeds``); ``plan``: a ``kdexport plan`` result (plan.json) of
    this run, whose chosen variants and device assignments the bundle carries.

    Returns the verification report plus ``path``, ``bytes`` and ``name``.
    """
    if (out is None) == (directory is None):
        raise KdxError("give exactly one of an archive (-o BUNDLE.kdx.tar.gz) or --dir FOLDER")
    source, dest = Path(source), Path(out or directory)
    if golden_samples < 1:
        raise KdxError("golden_samples must be >= 1")
    if dest.parent.is_file():
        raise KdxError(
            f"{dest.parent} is a file, not a folder; choose another path for {dest.name}"
        )
    if not dest.parent.is_dir():
        raise KdxError(f"{dest.parent}: no such folder; create it first or choose another path")
    for stale in leftovers(dest):  # an earlier packaging was killed while writing
        shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
    staging = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp"))
    try:
        opts = {"targets": list(targets), "with_teacher": with_teacher, "shapes": list(shapes)}
        opts["plan"] = plan
        manifest = build(source, staging / "bundle", samples=golden_samples, **opts)
        root = staging / manifest["name"]
        os.replace(staging / "bundle", root)
        report = verify_folder(root, f"the new bundle of {source}")
        if directory is None:
            write_archive(root, dest)
        else:
            _publish_dir(root, dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return {**report, "path": str(dest), "bytes": _size(dest), "name": manifest["name"]}


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in [path, *path.rglob("*")] if p.is_file())
