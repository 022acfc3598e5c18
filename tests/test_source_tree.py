"""A checkout runs without installation: ``python -m kdexport.cli`` and tools/ from a copy of the
tree load that copy's code, recipes and target profiles, never an installed kdexport."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

from kdexport.onnxfile import make_model

ROOT = Path(__file__).resolve().parents[1]


def _copy_tree(dest: Path) -> Path:
    skip = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for name in ("kdexport", "tools"):
        shutil.copytree(ROOT / name, dest / name, ignore=skip)
    return dest


def _run(tree: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    done = subprocess.run(
        [sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done


def _relu_model(path: Path) -> Path:
    import onnx

    vi = [onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, ["N", 4]) for n in "xy"]
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Relu", ["x"], ["y"])], "g", [vi[0]], [vi[1]]
    )
    onnx.save(make_model(graph), str(path))
    return path


def test_cli_and_tools_run_from_a_copy_of_the_tree(tmp_path):
    tree = _copy_tree(tmp_path / "checkout")
    where = _run(tree, "-c", "import kdexport; print(kdexport.__file__)", cwd=tree).stdout
    assert Path(where.strip()).is_relative_to(tree)  # the copy, not the installed package
    assert "ort-cpu" in _run(tree, "-m", "kdexport.cli", "targets", cwd=tree).stdout
    code = "from kdexport.pipeline import load_recipe as load; print(json.dumps(load()['teacher']['model']))"
    out = _run(tree, "-c", f"import json; {code}", cwd=tree).stdout
    assert json.loads(out) == "zoo:digits-cnn-large"
    # benchmark runs its memory probe in a child process, which must find the copy too
    model = _relu_model(tmp_path / "relu.onnx")
    args = ["-m", "kdexport.cli", "benchmark", str(model), "--quick", "--batch-sizes", "2"]
    out = _run(tree, *args, "--set", "benchmark.memory=true", "--json", cwd=tree).stdout
    timed = json.loads(out.strip().splitlines()[-1])["targets"]["ort-cpu"]["model"]
    assert timed["memory"]["peak_rss_mb"] > 0
    # a tools/ script, started from another folder
    out = _run(tree, str(tree / "tools" / "gpu_check.py"), "--help", cwd=tmp_path).stdout
    assert "gpu_check" in out or "usage" in out
