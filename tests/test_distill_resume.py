"""Killed at any point (SIGKILL), `kdexport distill --resume` ends with the same weights as a run
that was never stopped; a checkpoint of another recipe is refused and kept."""

import os
import signal
import subprocess
import sys
import time

import torch
from conftest import fails, teacher_copies

SETS = [
    "teacher.model=zoo:mlp-tiny",
    "teacher.epochs=2",
    "distill.student=zoo:digits-cnn-small",
    "distill.epochs=12",
    "distill.device='cpu'",
]
# Every training run is a process of its own with the same thread count, so that the float
# reductions (and so the weights) can be compared bit for bit.
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _distill(run, *args) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "kdexport.cli", "distill", str(run), *args]
    return subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _kill_after(proc: subprocess.Popen, checkpoint, epoch: int) -> int:
    """SIGKILL ``proc`` as soon as ``checkpoint`` holds at least ``epoch`` epochs; return them."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if checkpoint.is_file():
            try:
                done = torch.load(checkpoint, weights_only=True)["epoch"]
            except Exception:  # caught between writes: try again
                done = 0
            if done >= epoch:
                proc.send_signal(signal.SIGKILL)
                assert proc.wait() == -signal.SIGKILL
                return done
        time.sleep(0.02)
    raise AssertionError(f"the run ended before it could be killed: {proc.communicate()}")


def _weights(run) -> dict:
    return torch.load(run / "student" / "model.pt", weights_only=True)


def test_resume_after_sigkill_gives_the_same_weights(tmp_path):
    whole, killed = teacher_copies(tmp_path, SETS, "whole", "killed")
    checkpoint = killed / "checkpoints" / "student.pt"

    first = _kill_after(_distill(killed), checkpoint, 1)
    assert not (killed / "student").exists()
    fails(
        "distill",
        killed,
        "--resume",
        "--set",
        "distill.lr=0.02",
        message="is a checkpoint of another recipe (lr: 0.01 there, 0.02 here)",
    )
    assert checkpoint.is_file()  # nothing lost
    again = _distill(killed, "--resume", "--set", "distill.lr=0.01")
    assert _kill_after(again, checkpoint, first + 2) > first  # killed a second time, later on
    resumed = _distill(killed, "--resume")
    uninterrupted = _distill(whole)
    assert resumed.wait() == 0, resumed.communicate()
    assert uninterrupted.wait() == 0, uninterrupted.communicate()

    a, b = _weights(whole), _weights(killed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not checkpoint.exists()  # a finished run leaves no checkpoint behind
