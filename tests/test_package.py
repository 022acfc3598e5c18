"""Edge bundles: package, verify, run on a device without kdexport or torch, import results.

The device side runs the bundle's run.py in a subprocess (``python -I``) whose imports of torch,
kdexport, onnx, scikit-learn, OpenVINO, click and rich fail, so the runner can need none of them.
The run in a fresh virtual environment with only onnxruntime and numpy is the ``slow`` test at the
end and ``tools/check_bundle.py``.
"""

from __future__ import annotations

import ast
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from conformance.corpus import cases
from conftest import fails, kdx

from kdexport import timing as bench
from kdexport.artifact import sha256
from kdexport.bundle import runner as bundle_runner
from kdexport.bundle.archive import MTIME, extract, verify
from kdexport.bundle.fleet import import_results
from kdexport.errors import KdxError
from kdexport.package import package

BLOCKED = "torch,kdexport,onnx,sklearn,openvino,click,rich"
# Runs run.py with the imports above failing, so that needing one of them fails the test.
DEVICE = """
import runpy, sys
blocked = set(sys.argv[1].split(","))
class Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in blocked:
            raise ImportError(f"{name} is not on the device")
sys.meta_path.insert(0, Blocker())
sys.argv = sys.argv[2:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""
FAST_BENCH = ["--batch-sizes", "1,4", "--warmup-iters", "1", "--warmup-s", "0"]
FAST_BENCH += ["--min-iters", "3", "--min-time-s", "0", "--rounds", "1"]
CORPUS = {c.name: c for c in cases()}


def device(root: Path, *args, code: int = 0, blocked: str = BLOCKED):
    """Run ``root/run.py`` as a device would; check its exit status."""
    cmd = [sys.executable, "-I", "-c", DEVICE, blocked, str(root / "run.py"), *map(str, args)]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=root.parent, timeout=120)
    assert r.returncode == code, (r.stdout, r.stderr)
    return r


def one_error(result_stderr: str, message: str) -> None:
    """Exactly one line on stderr, the error, and no traceback."""
    lines = result_stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result_stderr
    assert message in lines[0], lines[0]


@pytest.fixture(scope="module")
def archive(fast_cli_run, tmp_path_factory) -> Path:
    """The student of the fast run, packaged by the CLI."""
    out = tmp_path_factory.mktemp("bundle") / "student.kdx.tar.gz"
    result = kdx("package", fast_cli_run[0], "-o", out)
    assert "bundle: " in result.stdout and "bundle id" in result.stdout
    return out


@pytest.fixture
def unpacked(archive, tmp_path) -> Path:
    """A private unpacked copy of the bundle, as a device gets it with `tar xzf`."""
    with tarfile.open(archive) as tar:
        tar.extractall(tmp_path, filter="data")
    (root,) = tmp_path.iterdir()
    return root


def test_archive_is_small_sorted_and_has_no_machine_data(archive):
    assert archive.stat().st_size < 100_000
    with tarfile.open(archive) as tar:
        members = tar.getmembers()
    names = [m.name for m in members]
    top = names[0]
    assert top.startswith("student-") and names == sorted(names)
    assert {n.removeprefix(top + "/") for n in names[1:]} >= {
        "manifest.json",
        "run.py",
        "student.onnx",
        "golden/input.npy",
        "golden/student.npy",
    }
    for m in members:
        assert (m.mtime, m.uid, m.gid, m.uname, m.gname) == (MTIME, 0, 0, "", "")
        assert m.mode == (0o755 if m.isdir() or m.name.endswith("run.py") else 0o644)
    assert archive.read_bytes()[4:8] == b"\0\0\0\0"  # no time in the gzip header


def test_same_run_gives_identical_archives(fast_cli_run, archive, tmp_path):
    again = tmp_path / "another-name.tar.gz"
    package(fast_cli_run[0], again)
    assert again.read_bytes() == archive.read_bytes()


def test_manifest_describes_the_model_and_the_build(unpacked, fast_cli_run):
    m = json.loads((unpacked / "manifest.json").read_text())
    assert (m["kind"], m["format_version"], m["name"]) == ("kdx-bundle", 2, unpacked.name)
    assert m["source"] == "run"
    for name, entry in m["files"].items():
        assert entry == {
            "sha256": sha256(unpacked / name),
            "bytes": (unpacked / name).stat().st_size,
        }
    student = m["models"]["student"]
    assert student["opset"] >= 17 and student["ir_version"] >= 7
    assert student["inputs"] == [{"name": "input", "dtype": "float32", "shape": ["batch", 1, 8, 8]}]
    assert student["outputs"][0]["shape"] == ["batch", 10]
    assert m["labels"] == [str(i) for i in range(10)]
    assert m["preprocessing"]["layout"] == "NCHW" and m["preprocessing"]["resize"] == [8, 8]
    assert m["preprocessing"]["scale"] == 1 / 16
    figs = fast_cli_run[1]
    cpu = m["build"]["targets"]["ort-cpu"]["student"]
    assert cpu["accuracy"] == figs["targets"]["ort-cpu"]["student"]["accuracy"]
    assert cpu["max_abs_diff"] <= 1e-4 and cpu["p50_ms"] > 0
    assert m["build"]["environment"]["cpu"] == figs["environment"]["cpu"]
    assert m["teacher"]["model"] == "zoo:digits-cnn-large" and len(m["teacher"]["sha256"]) == 64
    assert m["teacher"]["figures"]["ort-cpu"]["accuracy"] > 0 and m["teacher"]["file"] is None
    assert m["recipe"]["teacher"]["epochs"] == 2
    assert m["golden"]["tolerance"] == 1e-4 and m["golden"]["samples"] == 8


@pytest.mark.backends
def test_device_verify_predict_bench_without_kdexport_or_torch(unpacked, tmp_path):
    out = device(unpacked, "verify").stdout
    assert "files match their sha256" in out and "student.onnx: golden output ok" in out
    golden = unpacked / "golden" / "input.npy"
    result = json.loads(device(unpacked, "predict", golden, "--json").stdout)
    expected = np.load(unpacked / "golden" / "student.npy").argmax(axis=1)
    assert [p[0]["class"] for p in result["predictions"]] == expected.tolist()
    one = tmp_path / "one.npy"
    np.save(one, np.load(golden)[0])  # one sample, no batch axis
    assert device(unpacked, "predict", one, "--top", "2").stdout.startswith("0: ")
    r = device(unpacked, "bench", "--json", "--device", "pi 5", *FAST_BENCH)
    written = unpacked.parent / f"{unpacked.name}.bench-pi_5.json"
    result = json.loads(written.read_text())
    assert json.loads(r.stdout.splitlines()[-1]) == result
    assert (result["kind"], result["device"]) == ("kdx-bench-result", "pi 5")
    assert set(result["results"]["student"]["latency"]) == {"1", "4"}
    assert result["results"]["student"]["latency"]["1"]["p50_ms"] > 0
    assert "teacher" not in result["results"] and "speedup" not in result["results"]
    assert result["environment"]["versions"]["onnxruntime"]


def test_device_serves_with_loadgen_and_plans_a_capacity_goal(fast_cli_run, unpacked, tmp_path):
    """``run.py bench --scenario server``: kdexport serve-bench's engine on the device (LoadGen
    driving ONNX Runtime); its result plans a capacity goal for that device; fleet tables
    refuse it; without LoadGen, one line."""
    pytest.importorskip("mlperf_loadgen")
    args = ["bench", "--scenario", "server", "--p99-ms", "1000", "--duration-s", "0.05"]
    r = device(unpacked, *args, "--max-batch", "2", "--device", "srv", "--json")
    written = unpacked.parent / f"{unpacked.name}.bench-srv.json"
    result = json.loads(written.read_text())
    assert json.loads(r.stdout.splitlines()[-1]) == result
    f = result["serving"]["student"]
    assert f["valid"] and f["qps_at_p99"] > 0 and f["offline_sps"] > 0 and f["p99_ms"] < 1000
    assert len(f["settings"]) == 2 * len(bundle_runner.ort_callers(bundle_runner.available_cpus()))
    best = next(s for s in f["settings"] if s["setting"] == f["setting"])
    assert (
        "Result is : VALID"
        in (Path(best["logs"]) / "server" / "mlperf_log_summary.txt").read_text()
    )
    assert "req/s with p99 <= 1000 ms" in r.stdout
    with pytest.raises(KdxError, match="a `run.py bench --scenario` result"):
        import_results([written])
    budgets = tmp_path / "budgets.toml"
    budgets.write_text(
        f"[srv]\nqps = {f['qps_at_p99'] / 2}\np99_ms = 1000\n[local]\nbudget_ms = 1e3\n"
    )
    out = tmp_path / "plan" / "plan.md"
    planned = kdx("plan", fast_cli_run[0], written, "--budgets", budgets, "-o", out, "--json")
    choice = json.loads(planned.stdout.splitlines()[-1])["devices"]["srv"]["choice"]
    assert (choice["variant"], choice["servers"]) == ("student@portable", 1)
    assert choice["qps_at_p99"] == f["qps_at_p99"] and "--scenario server" in choice["source"]
    r = device(unpacked, *args, code=1, blocked=BLOCKED + ",mlperf_loadgen")
    one_error(r.stderr, "needs MLCommons' LoadGen: pip install mlcommons-loadgen")


def test_image_input_needs_pillow_and_matches_the_array(unpacked, tmp_path):
    from PIL import Image

    x = np.load(unpacked / "golden" / "input.npy")[0, 0]  # digits are in [0, 1]
    png = tmp_path / "digit.png"
    Image.fromarray(np.round(x * 255).astype(np.uint8), mode="L").save(png)
    r = device(unpacked, "predict", png, code=1, blocked=BLOCKED + ",PIL")
    one_error(r.stderr, "reading images needs Pillow (pip install pillow)")
    top = json.loads(device(unpacked, "predict", png, "--json").stdout)["predictions"][0][0]
    assert top["class"] == int(np.load(unpacked / "golden" / "student.npy")[0].argmax())


@pytest.mark.parametrize(
    ("array", "name", "message"),
    [
        (np.zeros((2, 1, 8, 8)), "x.npy", "dtype float64, the model takes float32"),
        (np.zeros((2, 3, 8, 8), np.float32), "x.npy", "shape (2, 3, 8, 8), the model takes (N, 1, 8, 8)"),
        (np.zeros((8, 8), np.float32), "x.npy", "shape (8, 8), the model takes (N, 1, 8, 8)"),
        (b"not numpy", "x.npy", "not a readable .npy array"),
        (b"text", "x.txt", "give a .npy array or an image"),
        (b"not a png", "x.png", "not a readable image"),
    ],
)  # fmt: skip
def test_predict_bad_input(unpacked, tmp_path, array, name, message):
    path = tmp_path / name
    path.write_bytes(array) if isinstance(array, bytes) else np.save(path, array)
    one_error(device(unpacked, "predict", path, code=1).stderr, message)


def _set_manifest(root: Path, **changes) -> None:
    path = root / "manifest.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("tamper", "message"),
    [
        (lambda r: _flip_byte(r / "student.onnx"), "student.onnx: checksum mismatch"),
        (lambda r: (r / "golden" / "input.npy").unlink(), "golden/input.npy: missing from the bundle"),
        (lambda r: (r / "notes.txt").write_text("x"), "notes.txt: not part of the bundle (extra file)"),
        (lambda r: _set_manifest(r, format_version=3), "bundle format 3 is newer than this reader"),
        (lambda r: (r / "manifest.json").write_text("{"), "manifest.json: unreadable"),
        (lambda r: _set_manifest(r, files={"../x": {"sha256": "0", "bytes": 1}}), "outside the bundle"),
    ],
)  # fmt: skip
def test_tampered_bundle_fails_verification(unpacked, tamper, message):
    tamper(unpacked)
    one_error(device(unpacked, "verify", code=1).stderr, message)
    result = kdx("verify", unpacked, code=1)
    assert message in result.stderr and "Traceback" not in result.stderr


def test_golden_mismatch_is_reported(unpacked):
    golden = unpacked / "golden" / "student.npy"
    np.save(golden, np.load(golden) + 1.0)  # as if the model gave other answers
    m = json.loads((unpacked / "manifest.json").read_text())
    m["files"]["golden/student.npy"]["sha256"] = sha256(golden)
    (unpacked / "manifest.json").write_text(json.dumps(m))
    one_error(device(unpacked, "verify", code=1).stderr, "student.onnx: golden output differs")


def test_kdexport_verify_archive_and_folder(archive, unpacked):
    result = json.loads(kdx("verify", archive, "--json").stdout.splitlines()[-1])
    assert result["golden"]["student.onnx"]["top1_agreement"] == 1.0
    assert result["id"] == sha256(unpacked / "manifest.json")
    assert "student.onnx: golden output ok" in kdx("verify", unpacked).stdout


@pytest.mark.backends
def test_folder_bundle_with_teacher_and_compiled_forms(fast_cli_run, tmp_path):
    out = tmp_path / "b"
    kdx("package", fast_cli_run[0], "--dir", out, "--with-teacher", "--target", "ort-cpu",
        "--target", "openvino-cpu")  # fmt: skip
    m = json.loads((out / "manifest.json").read_text())
    assert m["teacher"]["file"] == "teacher.onnx"
    assert set(m["compiled"]) == {"ort-cpu", "openvino-cpu"}
    assert {"compiled/openvino-cpu/student.xml", "compiled/ort-cpu/teacher.onnx"} <= set(m["files"])
    report = verify(out)
    assert {"student.onnx", "teacher.onnx", "ort-cpu/student.onnx"} <= set(report["golden"])
    assert "openvino-cpu/student" in report["skipped"]
    opts = {"device": "a", "target": "ort-cpu", "threads": 1, "batch_sizes": [1]}
    opts.update(warmup_iters=1, warmup_s=0.0, min_iters=3, min_time_s=0.0, rounds=1)
    result = bundle_runner.bench(out, opts)
    assert result["results"]["teacher"]["file"] == "teacher.onnx"  # compiled for ort-cpu
    assert result["results"]["speedup"]["1"] > 0
    kdx("package", fast_cli_run[0], "--dir", out)  # replaces an earlier bundle
    assert "teacher.onnx" not in json.loads((out / "manifest.json").read_text())["files"]


def test_package_bad_input(fast_cli_run, run_copy, tmp_path):
    run = fast_cli_run[0]
    r = kdx("package", run, "-o", tmp_path / "a.tar.gz", "--target", "nope", code=1)
    assert "no compiled student for target 'nope'" in r.stderr
    assert "exactly one of" in kdx("package", run, code=2).stderr
    r = kdx("package", run, "-o", tmp_path / "no" / "b.tar.gz", code=1)
    assert "no such folder; create it first" in r.stderr
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "mine.txt").write_text("x")
    r = kdx("package", run, "--dir", tmp_path / "taken", code=1)
    assert "exists and is not a bundle" in r.stderr
    (run_copy / "manifest.json").unlink()
    r = kdx("package", run_copy, "-o", tmp_path / "b.tar.gz", code=1)
    assert "run `kdexport report" in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run", "taken"]  # no partial output


def test_a_format_1_bundle_still_verifies(unpacked):
    _set_manifest(unpacked, format_version=1)  # the manifest is not in its own file table
    assert "student.onnx: golden output ok" in device(unpacked, "verify").stdout


@pytest.fixture(scope="module")
def text_archive(tmp_path_factory) -> Path:
    """The corpus's model of three inputs (int64 ids, bool mask, float scale; symbolic batch
    and seq axes), packaged from the file by the CLI."""
    folder = tmp_path_factory.mktemp("text")
    model = CORPUS["text"].build(folder)
    out = folder / "text.kdx.tar.gz"
    r = kdx("package", model, "-o", out, "--shape", "input_ids=2,16")
    assert "(text-" in r.stdout and "bundle id" in r.stdout
    return out


def test_an_onnx_file_of_several_inputs_is_bundled_reproducibly(text_archive, tmp_path):
    again = tmp_path / "again.tar.gz"
    package(text_archive.parent / "text.onnx", again, shapes=["input_ids=2,16"])
    assert again.read_bytes() == text_archive.read_bytes()
    with tarfile.open(text_archive) as tar:
        tar.extractall(tmp_path, filter="data")
    (root,) = (p for p in tmp_path.iterdir() if p.is_dir())
    m = json.loads((root / "manifest.json").read_text())
    assert (m["format_version"], m["source"], m["teacher"], m["labels"]) == (
        2,
        "onnx-file",
        None,
        [],
    )
    assert m["models"]["student"]["inputs"] == [
        {"name": "input_ids", "dtype": "int64", "shape": ["batch", "seq"]},
        {"name": "mask", "dtype": "bool", "shape": ["batch", "seq"]},
        {"name": "scale", "dtype": "float32", "shape": ["batch", 1]},
    ]
    g = m["golden"]
    assert (g["input"], g["outputs"], g["batch"], g["top1"]) == (
        "golden/input.npz",
        {"student": "golden/student.npy"},
        2,
        False,
    )
    assert (g["tolerance"], g["rtol"]) == (1e-4, 1e-3)
    with np.load(root / "golden" / "input.npz") as f:  # as kdexport benchmark makes them
        assert {k: (f[k].dtype.name, f[k].shape) for k in f.files} == {
            "input_ids": ("int64", (2, 16)),
            "mask": ("bool", (2, 16)),
            "scale": ("float32", (2, 1)),
        }
    assert set(m["files"]) == {"text.onnx", "run.py", "golden/input.npz", "golden/student.npy"}


def test_device_runs_an_onnx_file_bundle_of_several_inputs(text_archive, tmp_path):
    root = extract(text_archive, tmp_path / "b")
    out = device(root, "verify").stdout
    assert "text.onnx: golden output ok" in out and "0.0001 + 0.001 x |golden|" in out
    feed = tmp_path / "x.npz"
    np.savez(feed, input_ids=np.ones((3, 5), np.int64), mask=np.ones((3, 5), bool),
             scale=np.ones((3, 1), np.float32))  # fmt: skip
    out = device(root, "predict", feed).stdout
    assert out.startswith("y: float32 (3, 8); top class index per sample: 7, 7, 7; first values")
    result = json.loads(device(root, "predict", feed, "--json").stdout)
    assert result["shapes"]["mask"] == [3, 5] and result["outputs"][0]["shape"] == [3, 8]
    r = device(root, "bench", "--json", "--out", tmp_path / "r.json", *FAST_BENCH)
    assert "batch 4: model p50" in r.stdout
    assert set(json.loads(r.stdout.splitlines()[-1])["results"]["student"]["latency"]) == {"1", "4"}


@pytest.mark.parametrize(
    ("arrays", "name", "message"),
    [
        ({"x": np.zeros((1, 5), np.int64)}, "x.npy", "the model takes 3 inputs (input_ids, mask, scale); give a .npz"),
        ({"input_ids": np.zeros((1, 5), np.int64)}, "x.npz", "holds input_ids, the model takes input_ids, mask, scale"),
        ({"input_ids": np.zeros((1, 5)), "mask": np.ones((1, 5), bool), "scale": np.ones((1, 1), np.float32)},
         "x.npz", "x.npz[input_ids]: dtype float64, the model takes int64"),
        ({"input_ids": np.zeros((1, 5), np.int64), "mask": np.ones((1, 4), bool), "scale": np.ones((1, 1), np.float32)},
         "x.npz", "ONNX Runtime cannot run it on these inputs"),
    ],
)  # fmt: skip
def test_predict_bad_input_for_several_inputs(text_archive, tmp_path, arrays, name, message):
    root = extract(text_archive, tmp_path / "b")
    path = tmp_path / name
    np.save(path, arrays["x"]) if name.endswith(".npy") else np.savez(path, **arrays)
    one_error(device(root, "predict", path, code=1).stderr, message)


def test_onnx_file_golden_mismatch_and_fixed_batch(text_archive, tmp_path):
    root = extract(text_archive, tmp_path / "b")
    golden = root / "golden" / "student.npy"
    np.save(golden, np.load(golden) * 1.01)  # beyond 1e-4 + 1e-3 x |golden|
    m = json.loads((root / "manifest.json").read_text())
    m["files"]["golden/student.npy"]["sha256"] = sha256(golden)
    (root / "manifest.json").write_text(json.dumps(m))
    one_error(device(root, "verify", code=1).stderr, "text.onnx: golden output differs")
    fixed = CORPUS["fixed-batch-4"].build(tmp_path)
    package(fixed, directory=tmp_path / "fixed")
    r = device(tmp_path / "fixed", "bench", "--batch-sizes", "1", *FAST_BENCH[2:], code=1)
    one_error(r.stderr, "this model's batch is fixed at 4 (or it has none); drop --batch-sizes")


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("swish-openvino-only", "ONNX Runtime's CPU reference run, which gives a bundle its golden outputs, fails"),
        ("text-no-shape", "axis 1 ('seq') is symbolic"),
        ("opset-too-new", "newer than this onnx"),
    ],
)  # fmt: skip
def test_onnx_files_that_cannot_be_bundled_are_refused_in_one_line(tmp_path, name, message):
    path = CORPUS[name].build(tmp_path)
    before = sorted(tmp_path.rglob("*"))
    fails("package", path, "-o", tmp_path / "b.kdx.tar.gz", message=message)
    assert sorted(tmp_path.rglob("*")) == before


def _evil_archive(path: Path, *members: tarfile.TarInfo) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for m in members:
            data = b"x" * m.size if m.isfile() else None
            tar.addfile(m, io.BytesIO(data) if data is not None else None)
    return path


def _info(
    name: str, kind: bytes = tarfile.REGTYPE, size: int = 1, link: str = ""
) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.size, info.linkname = kind, size if kind == tarfile.REGTYPE else 0, link
    return info


@pytest.mark.parametrize(
    ("member", "message"),
    [
        (_info("b/../../evil"), "has a path that leaves the folder"),
        (_info("/tmp/evil"), "has an absolute path"),
        (_info("b/link", tarfile.SYMTYPE, link="/etc/passwd"), "is a link (to '/etc/passwd')"),
        (_info("b/hard", tarfile.LNKTYPE, link="../../evil"), "is a link"),
        (_info("b/dev", tarfile.CHRTYPE), "is a device, pipe or other special file"),
        (_info("b/big", size=2048), "is 2,048 bytes, over the 1,024-byte limit"),
        (_info("other/file"), "a bundle holds one top folder, this has 2"),
    ],
)
def test_malicious_archives_are_refused(tmp_path, member, message):
    bad = _evil_archive(tmp_path / "bad.tar.gz", _info("b", tarfile.DIRTYPE), _info("b/ok"), member)
    with pytest.raises(KdxError, match="refusing the archive|not a bundle") as e:
        extract(bad, tmp_path / "dest", max_member_bytes=1024)
    assert message in str(e.value)
    assert [p.name for p in tmp_path.iterdir()] == ["bad.tar.gz"]  # nothing written anywhere
    assert not (tmp_path.parent / "evil").exists()
    if "limit" not in message:  # the CLI applies the default limits
        assert message in kdx("verify", bad, code=1).stderr


def test_truncated_and_foreign_archives(archive, tmp_path):
    cut = tmp_path / "cut.kdx.tar.gz"
    cut.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    assert "truncated or corrupt archive" in kdx("verify", cut, code=1).stderr
    junk = tmp_path / "junk.kdx.tar.gz"
    junk.write_bytes(b"not an archive at all")
    assert "not a readable .tar.gz bundle" in kdx("verify", junk, code=1).stderr
    assert "no such bundle" in kdx("verify", tmp_path / "missing.tar.gz", code=1).stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cut.kdx.tar.gz", "junk.kdx.tar.gz"]


def _result(root: Path, device_name: str) -> dict:
    opts = {"device": device_name, "target": None, "threads": 0, "batch_sizes": [1, 2]}
    opts.update(warmup_iters=1, warmup_s=0.0, min_iters=3, min_time_s=0.0, rounds=1)
    return bundle_runner.bench(root, opts)


def test_import_results_makes_a_fleet_table(fast_cli_run, unpacked, tmp_path):
    with_teacher = tmp_path / "with-teacher"
    package(fast_cli_run[0], directory=with_teacher, with_teacher=True)
    files = []
    for i, (root, name) in enumerate(
        [(unpacked, "box-a"), (with_teacher, "box-b"), (unpacked, "box-a")]
    ):
        files.append(tmp_path / f"r{i}.json")
        bundle_runner.write_json(files[-1], _result(root, name))
    fleet_md = tmp_path / "fleet.md"
    r = kdx("import-results", *files, "-o", fleet_md, "--json")
    fleet = json.loads(r.stdout.splitlines()[-1])
    assert (fleet["devices"], fleet["results"], len(fleet["rows"])) == (2, 3, 4)  # box-a: newest
    a, b = fleet["rows"][0], fleet["rows"][2]
    assert (a["device"], a["batch"], a["speedup"], a["teacher_p50_ms"]) == ("box-a", 1, None, None)
    assert b["speedup"] == b["teacher_p50_ms"] / b["student_p50_ms"] and b["device"] == "box-b"
    assert "| box-b |" in fleet_md.read_text() and "box-b" in r.stdout
    with pytest.raises(KdxError, match="not a result of `python run.py bench`"):
        import_results([unpacked / "manifest.json"])


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{", "unreadable result"),
        ('{"kind": "kdx-bench-result", "format_version": 9}', "written by a newer run.py"),
        ('{"kind": "kdx-bench-result", "format_version": 1}', "malformed result, no 'device'"),
    ],
)
def test_import_results_bad_input(tmp_path, content, message):
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    assert message in kdx("import-results", bad, code=1).stderr


def test_runner_is_python_39_and_measures_as_kdexport_benchmark():
    source = Path(bundle_runner.__file__).read_text()
    ast.parse(source, feature_version=(3, 9))  # run.py promises Python 3.9+
    imported = {
        (n.module if isinstance(n, ast.ImportFrom) else a.name).split(".")[0]
        for n in ast.walk(ast.parse(source))
        if isinstance(n, ast.Import | ast.ImportFrom)
        for a in n.names
    }
    # each imported only to read its kind of input, or (LoadGen) for bench --scenario server
    optional = {"PIL", "tokenizers", "soundfile", "mlperf_loadgen"}
    assert imported - set(sys.stdlib_module_names) == {"numpy", "onnxruntime", *optional}
    assert bundle_runner.METHOD.startswith(bench.METHOD.split(" (")[0])


def test_device_and_workstation_hash_alike(tmp_path):
    """run.py keeps its own sha256 (it is standalone); the manifests' must be the same digest."""
    path = tmp_path / "blob"
    path.write_bytes(bytes(range(256)) * 9000)  # over one 1 MiB block
    assert sha256(path) == bundle_runner.sha256(path)


@pytest.mark.slow
def test_fresh_environment_with_only_onnxruntime_and_numpy(archive, tmp_path):
    """A new virtual environment, `pip install onnxruntime numpy`, the three commands."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", venv], check=True)
    py = venv / "bin" / "python"
    subprocess.run([py, "-m", "pip", "install", "-q", "onnxruntime", "numpy"], check=True)
    listed = subprocess.run([py, "-m", "pip", "list"], capture_output=True, text=True).stdout
    assert "torch" not in listed and "kdexport" not in listed and "onnx " not in listed
    with tarfile.open(archive) as tar:
        tar.extractall(tmp_path, filter="data")
    (root,) = (p for p in tmp_path.iterdir() if p.name.startswith("student-"))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    for args in (["verify"], ["predict", root / "golden" / "input.npy"], ["bench", *FAST_BENCH]):
        r = subprocess.run([py, root / "run.py", *args], capture_output=True, text=True, env=env)
        assert r.returncode == 0, r.stderr
    assert (tmp_path / f"{root.name}.bench-{os.uname().nodename}.json").is_file()
    shutil.rmtree(venv)
