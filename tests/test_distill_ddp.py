"""The same `kdexport distill` command under torchrun: two processes (gloo, CPU) on this machine,
each training a shard of every batch, reach the single-process accuracy within a small margin."""

import json
import os
import subprocess
import sys

from conftest import kdx, teacher_copies

SETS = [
    "teacher.model=zoo:digits-cnn-small",
    "teacher.epochs=2",
    "teacher.device='cpu'",
    "distill.student=zoo:mlp-tiny",
    "distill.epochs=8",
    "distill.device='cpu'",
]


def _student(run) -> dict:
    return json.loads((run / "student" / "manifest.json").read_text())


def test_two_processes_match_one(tmp_path):
    one, two = teacher_copies(tmp_path, SETS, "one", "two")
    kdx("distill", one)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    cmd = [*torchrun, "-m", "kdexport.cli", "distill", str(two)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("student: ") == 2  # both processes finished with the artifact
    single, double = _student(one), _student(two)
    assert single["parameters"] == double["parameters"]
    assert abs(single["checks"]["test_accuracy"] - double["checks"]["test_accuracy"]) <= 0.02
    assert double["checks"]["test_accuracy"] > 0.8
