"""Shared fixtures: one tiny real run (few epochs, short benchmark) reused by many tests."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from kdexport.cli import cli

# A few epochs and a short benchmark: the tests check behaviour, not the figures' quality.
FAST = (
    "teacher.epochs=2",
    "distill.epochs=2",
    "benchmark.batch_sizes=[1, 8]",
    "benchmark.warmup_iters=2",
    "benchmark.warmup_s=0.0",
    "benchmark.min_iters=5",
    "benchmark.min_time_s=0.0",
    "benchmark.rounds=1",
    "benchmark.repeats=1",
    "benchmark.memory=false",
)
FAST_ARGS = [a for s in FAST for a in ("--set", s)]


def _cuda_available() -> bool:
    from kdexport.backends.profiles import load_target

    return load_target("ort-cuda").unavailable_reason() is None


def _vision_available() -> bool:
    """torchvision imports (it fails to, beside a torch it was not built for) and timm too."""
    try:
        import timm  # noqa: F401
        import torchvision  # noqa: F401
    except (ImportError, RuntimeError):
        return False
    return True


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs CUDAExecutionProvider (onnxruntime-gpu and a GPU)")
    skip_slow = pytest.mark.skip(reason="slow: set KDEXPORT_SLOW=1 to run")
    skip_vision = pytest.mark.skip(reason="needs torchvision and timm: tools/test-vision.sh")
    gpu = vision = None
    for item in items:
        if "gpu" in item.keywords:
            gpu = _cuda_available() if gpu is None else gpu
            if not gpu:
                item.add_marker(skip_gpu)
        if "vision" in item.keywords:
            vision = _vision_available() if vision is None else vision
            if not vision:
                item.add_marker(skip_vision)
        if "slow" in item.keywords and not os.environ.get("KDEXPORT_SLOW"):
            item.add_marker(skip_slow)


@pytest.fixture(autouse=True)
def _inside_tmp(tmp_path, monkeypatch):
    """Every test runs in its own temporary folder: default paths such as runs/digits land there."""
    monkeypatch.chdir(tmp_path)


# Benchmark overrides for tests that run a whole recipe: one short round, no memory probe
# (what is timed there is never asserted; tools/ measure speed).
QUICK_TIMING = [
    "benchmark.warmup_iters=1",
    "benchmark.warmup_s=0.0",
    "benchmark.min_time_s=0.0",
    "benchmark.rounds=1",
    "benchmark.memory=false",
]


def kdx(*args: str, code: int | None = 0):
    """Run the CLI in-process; check the exit code unless ``code`` is None."""
    result = CliRunner().invoke(cli, [str(a) for a in args])
    if code is not None:
        assert result.exit_code == code, (result.output, result.stderr, result.exception)
    return result


def fails(*args, message: str):
    """Run the CLI expecting exit 1 with one error line (last; progress may precede it) naming
    ``message``, and no traceback."""
    result = kdx(*args, code=1)
    lines = result.stderr.strip().splitlines()
    assert [ln for ln in lines if ln.startswith("error: ")] == lines[-1:], result.stderr
    assert message in lines[-1], lines[-1]
    assert "Traceback" not in result.output + result.stderr
    return result


def teacher_copies(tmp_path: Path, sets: list[str], *names: str) -> list[Path]:
    """Train one teacher with ``sets`` overrides, then copy that run directory once per name."""
    base = tmp_path / "base"
    kdx("train-teacher", base, *(a for s in sets for a in ("--set", s)))
    copies = [tmp_path / n for n in names]
    for copy in copies:
        shutil.copytree(base, copy)
    return copies


@pytest.fixture(scope="session")
def fast_cli_run(tmp_path_factory) -> tuple[Path, dict]:
    """The whole pipeline through the CLI, two epochs each: (run directory, --json figures)."""
    out = tmp_path_factory.mktemp("fast") / "run"
    result = kdx("distill-and-export", "--out", out, *FAST_ARGS, "--json")
    return out, json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture
def run_copy(fast_cli_run, tmp_path) -> Path:
    """A private copy of the fast run that a test may change."""
    dest = tmp_path / "run"
    shutil.copytree(fast_cli_run[0], dest)
    return dest


def predict_folder(bundle: Path, files: list[Path], folder: Path) -> list:
    """``run.py predict FOLDER --json`` on a folder holding copies of ``files``: the bundle's
    predictions, after checking that it read the files in their order."""
    folder.mkdir()
    for f in files:
        shutil.copy(f, folder / f.name)
    out = subprocess.run(
        [sys.executable, str(bundle / "run.py"), "predict", str(folder), "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    result = json.loads(out.stdout)
    assert result["files"] == [f.name for f in files]
    return result["predictions"]


def assert_top_class_matches(logits: np.ndarray, predictions: list) -> None:
    """Each prediction's top class and probability are those of the host's ``logits``."""
    z = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs = z / z.sum(axis=1, keepdims=True)
    for row, top in zip(probs, predictions, strict=True):
        assert top[0]["class"] == int(row.argmax())
        assert abs(top[0]["p"] - float(row.max())) <= 1e-5
