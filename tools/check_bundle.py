"""Package a run's student and check the bundle's goals in a fresh virtual environment.

    .venv/bin/python tools/check_bundle.py [--run runs/digits] [--python python3.9] [--repeat 5]

Packages the student twice (the archives must be identical), makes a new virtual environment
with `--python` holding only onnxruntime and numpy (`pip install onnxruntime numpy`, from the
index pip is configured with), and there runs `run.py verify`, `run.py predict` and
`run.py bench`. Start to first prediction is the wall time of the whole
`python run.py predict golden/input.npy` process, interpreter start and exit included; the
first run and the median of `--repeat` runs are reported. Prints one line per goal and, last,
one JSON object with the figures. Exit status 1 if a goal is missed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout, installed or not

from kdexport.package import package


def _run(cmd: list, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)


def fresh_env(python: str, where: Path) -> tuple[Path, dict]:
    """A new virtual environment with only onnxruntime and numpy; its python and packages."""
    venv = where / "venv"
    subprocess.run([python, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    start = time.perf_counter()
    subprocess.run([py, "-m", "pip", "install", "-q", "onnxruntime", "numpy"], check=True)
    listed = json.loads(_run([py, "-m", "pip", "list", "--format", "json"]).stdout)
    packages = {p["name"].lower(): p["version"] for p in listed}
    packages["_install_s"] = round(time.perf_counter() - start, 1)
    return py, packages


def time_predict(py: Path, root: Path, repeat: int) -> list[float]:
    """Wall seconds of `python run.py predict` processes, start to exit."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        r = _run([py, root / "run.py", "predict", root / "golden" / "input.npy"])
        times.append(time.perf_counter() - t0)
        if r.returncode:
            raise SystemExit(f"predict failed: {r.stderr}")
    return times


def check(run: str, python: str, repeat: int, tmp: Path) -> tuple[dict, dict]:
    """Package, set up the fresh environment, run the three commands; (goals, figures)."""
    archive, again = tmp / "a.kdx.tar.gz", tmp / "b.kdx.tar.gz"
    package(run, archive)
    package(run, again)
    py, packages = fresh_env(python, tmp)
    with tarfile.open(archive) as tar:
        tar.extractall(tmp / "device", filter="data")
    (root,) = (tmp / "device").iterdir()
    steps = {
        cmd[0]: _run([py, root / "run.py", *cmd])
        for cmd in (["verify"], ["predict", root / "golden" / "input.npy"], ["bench"])
    }
    for name, r in steps.items():
        print(f"--- run.py {name} (exit {r.returncode})\n{r.stdout.strip()}\n{r.stderr.strip()}")
    times = time_predict(py, root, repeat)
    size, startup = archive.stat().st_size, statistics.median(times)
    identical = archive.read_bytes() == again.read_bytes()
    foreign = sorted({"torch", "kdexport", "onnx", "scikit-learn", "openvino"} & set(packages))
    goals = {
        "bundle < 100 KB": (size, size < 100_000),
        "byte-identical archives": (identical, identical),
        "fresh venv has no torch/kdexport/onnx": (foreign, not foreign),
        **{
            f"run.py {k} in the fresh venv": (r.returncode, not r.returncode)
            for k, r in steps.items()
        },
        "start to first prediction < 1 s (median)": (round(startup, 3), startup < 1.0),
    }
    bench = next((tmp / "device").glob("*.bench-*.json"), None)
    figures = {
        "bundle_bytes": size,
        "start_to_first_prediction_s": {"first": times[0], "median": startup, "all": times},
        "fresh_env": packages,
        "device": json.loads(bench.read_text())["environment"] if bench else None,
        "device_p50_ms": json.loads(bench.read_text())["results"]["student"]["latency"]
        if bench
        else None,
    }
    return goals, figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default="runs/digits", help="a complete run directory")
    parser.add_argument("--python", default=sys.executable, help="interpreter for the venv")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="kdx-check-bundle-") as tmp:
        goals, figures = check(args.run, args.python, max(args.repeat, 1), Path(tmp))
    for goal, (value, ok) in goals.items():
        print(f"{'PASS' if ok else 'FAIL'}  {goal}: {value}")
    figures["passed"] = all(ok for _, ok in goals.values())
    print(json.dumps(figures, sort_keys=True))
    return 0 if figures["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
