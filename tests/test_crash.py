"""Crash tests: SIGKILL a command at a random point; no final artifact is ever corrupt (the old
one or the new one, complete), `kdexport status` says what happened, and rerunning succeeds."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest

from kdexport.artifact import MANIFEST, Artifact, leftovers
from kdexport.status import run_status

QUICK = ["--set", "benchmark.min_time_s=0.5", "--set", "benchmark.repeats=2"]
COMMANDS = {  # command -> (arguments after RUN, artifact directory, kind)
    "train-teacher": (["--retrain"], "teacher", "teacher"),
    "export": ([], "export", "export"),
    "compile": ([], "compile", "compile"),
    "benchmark": (QUICK, "benchmark", "benchmark"),
}


def _kill_after(args, delay):
    proc = subprocess.Popen(
        [sys.executable, "-m", "kdexport.cli", *map(str, args)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    return proc.wait()


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_sigkill_leaves_old_or_new_artifact(run_copy, command):
    extra, folder, kind = COMMANDS[command]
    path = run_copy / folder
    before = (path / MANIFEST).read_bytes()
    delay = random.Random(f"{command}-{os.getpid()}").uniform(0.5, 3.0)
    _kill_after([command, run_copy, *extra], delay)
    art = Artifact.open(path, kind, "")  # complete: the old one, or the new one if it finished
    assert (path / MANIFEST).read_bytes() == before or art.manifest["created"]
    assert run_status(run_copy)[folder]["state"] == "complete"
    done = subprocess.run(
        [sys.executable, "-m", "kdexport.cli", command, str(run_copy), *extra],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    assert not leftovers(path)  # the rerun cleared what the killed run left
    Artifact.open(path, kind, "")


def test_sigkill_during_packaging(fast_cli_run, tmp_path):
    out = tmp_path / "student.kdx.tar.gz"
    _kill_after(["package", fast_cli_run[0], "-o", out], random.Random(1).uniform(0.3, 1.5))
    assert (
        not out.exists()
        or json.loads(
            subprocess.run(
                [sys.executable, "-m", "kdexport.cli", "verify", str(out), "--json"],
                capture_output=True,
                text=True,
            ).stdout.splitlines()[-1]
        )["files"]
    )
    done = subprocess.run(
        [sys.executable, "-m", "kdexport.cli", "package", str(fast_cli_run[0]), "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert [p.name for p in tmp_path.iterdir()] == [out.name]  # no temporary file left beside it
