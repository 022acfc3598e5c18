"""Every Python and shell example in the README and docs/ runs, in order, in one folder, so the
documentation cannot drift from the code. The built-in default recipe is swapped for a short
one (2 epochs, ort-cpu, a quick benchmark) for the examples' sake; nothing else is changed.

Shell lines run as a user would type them: ``kdexport …`` through the CLI, ``python …/run.py …``
and ``tar`` as processes. The few that cannot run here are listed in ``NOT_RUN`` with the reason
and the test that covers them instead; a new example is either run or listed.
"""

from __future__ import annotations

import glob
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
import tomli_w
from click.testing import CliRunner

from kdexport import recipe
from kdexport.cli import cli

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
NOT_RUN = {  # command (first word) -> why it is not run here, and what covers it
    "./run.sh": "sets up .venv, then runs `kdexport distill-and-export`, which the next example runs",
    "./test.sh": "runs this test suite (CI runs it as .ci/run)",
    "torchrun": "several processes: tests/test_distill_ddp.py runs distill under torchrun",
}
SHORT = {
    "teacher": {"epochs": 2},
    "distill": {"epochs": 2},
    "compile": {"targets": ["ort-cpu"]},
    "benchmark": {
        "batch_sizes": [1, 8],
        "warmup_iters": 2,
        "warmup_s": 0.0,
        "min_iters": 5,
        "min_time_s": 0.0,
        "rounds": 1,
        "repeats": 1,
        "memory": False,
    },
}


def examples() -> list[tuple[str, int, str, str]]:
    """(page, index, language, code) of every python and bash block, in reading order."""
    out = []
    for page in PAGES:
        blocks = re.findall(r"```(python|bash)\n(.*?)```", page.read_text(), re.S)
        out += [(page.name, i, lang, code) for i, (lang, code) in enumerate(blocks)]
    return out


def _lines(code: str) -> list[str]:
    """Shell lines: continuations joined, comments and blank lines dropped."""
    joined = code.replace("\\\n", " ")
    return [ln.split(" #")[0].strip() for ln in joined.splitlines() if ln.split("#")[0].strip()]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """One folder for every example, with the files the examples name as the user's own."""
    folder = tmp_path_factory.mktemp("docs")
    recipes = tmp_path_factory.mktemp("recipes")
    for path in recipe.BUILTIN_DIR.glob("*.toml"):
        raw = tomllib.loads(path.read_text())
        for section, values in SHORT.items():
            raw.setdefault(section, {}).update(values)
        (recipes / path.name).write_text(tomli_w.dumps(raw))
    (folder / "my-box.toml").write_text(
        (ROOT / "kdexport" / "targets" / "ort-cpu.toml").read_text()
    )
    return folder, recipes


def _shell(line: str, folder: Path) -> None:
    words = shlex.split(line)
    args = [m for w in words[1:] for m in (sorted(glob.glob(w, root_dir=folder)) or [w])]
    if words[0] == "kdexport":
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 0, (line, result.output, result.stderr)
    elif words[0] in ("python", "tar"):
        exe = [sys.executable] if words[0] == "python" else ["tar"]
        done = subprocess.run([*exe, *args], cwd=folder, capture_output=True, text=True)
        assert done.returncode == 0, (line, done.stdout[-2000:], done.stderr[-2000:])
    else:
        assert words[0] in NOT_RUN, f"{line!r}: run it here, or say in NOT_RUN why not"


@pytest.mark.parametrize(
    ("page", "index", "lang", "code"), examples(), ids=lambda v: v if isinstance(v, str) else None
)
def test_example_runs(workspace, monkeypatch, page, index, lang, code):
    folder, recipes = workspace
    monkeypatch.chdir(folder)
    monkeypatch.setattr(recipe, "BUILTIN_DIR", recipes)
    if "digit.npy" in code:  # the user's own digit image, as an array
        with np.load(next(folder.glob("runs/digits/export/io_sample.npz"))) as f:
            np.save(folder / "digit.npy", f["input:input"][0])
    if lang == "python":
        exec(compile(code, f"{page} example {index}", "exec"), {})
        return
    for line in _lines(code):
        _shell(line, folder)


def test_every_page_is_reached():
    assert {p.name for p in PAGES} >= {"README.md", "architecture.md", "bundles.md"}
    assert len(examples()) >= 6
